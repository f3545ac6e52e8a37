"""Retro-hunts: when something becomes known unsafe, find what was judged safe before and is close to it.

:mod:`vitguard.retro.hunt` is one hunt (pure, over a searcher); :mod:`vitguard.retro.hunter` follows the
trigger topics and publishes :class:`~vitguard.schemas.retro.RetroMatch` es. ``vitguard retro-hunt`` runs
either. See ``docs/search.md``.
"""
