"""vitguard inside other libraries: :mod:`vitguard.integrations.diffusers` (a safety checker for image
generators). Each needs its optional extra (``pip install vitguard[diffusers]``)."""
