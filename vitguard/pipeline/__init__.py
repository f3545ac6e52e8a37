"""The streaming pipeline: pure batch logic (clustering, moderation) and the Faust agent around it."""

from __future__ import annotations
