"""``python -m vitguard`` is the ``vitguard`` command."""

from vitguard.cli import main

main()
