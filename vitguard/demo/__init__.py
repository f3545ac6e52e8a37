"""The end-to-end demo: sample images, a worker run against embedded services, a printed report."""

from __future__ import annotations
