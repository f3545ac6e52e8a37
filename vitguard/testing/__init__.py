"""Helpers for tests of vitguard and of the systems around it: real local services, tiny models, workers.

Documented for users' own integration tests (see the README's Development section). Nothing in the
worker's runtime path imports this package.
"""
