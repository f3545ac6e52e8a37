"""A bank lookup, as HMA serves one: the hash(es) of what was asked about and every bank entry they match, in
one answer, with no side effects (the flood guard's counts are only read). ``POST /banks/lookup`` on the worker
(:mod:`vitguard.consumers.search_view`) asks with a PDQ hash (:func:`lookup_hash`) or an image (through the
worker's ``/classify`` path: :meth:`BankLookupAnswer.of_verdict`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from vitguard.banks.matcher import BankMatcher
from vitguard.banks.signal import PdqSignal
from vitguard.errors import InputError
from vitguard.schemas.events import BankMatch, Verdict

__all__ = ["BankLookupAnswer", "BanksDisabledError", "LookedUpHash", "lookup_hash", "parse_hash"]

CALLER_QUALITY = 100
"""The quality a hash given by a caller is matched at: its quality is the caller's business, not the
matcher's (an image's own hash keeps its computed quality)."""


class BanksDisabledError(LookupError):
    """The worker runs without hash banks (``VITGUARD_BANKS_ENABLED`` is off): a lookup has nothing to ask."""

    reason = "banks_disabled"


class LookedUpHash(BaseModel):
    """A hash that was looked up."""

    hash: str = Field(pattern=r"^[0-9a-f]{64}$", description="The PDQ hash, 64 hex digits.")
    quality: int | None = Field(None, ge=0, le=100, description="PDQ's quality score, for a hash computed here.")


class BankLookupAnswer(BaseModel):
    """The hash(es) looked up and the bank entries they match, closest first."""

    hashes: list[LookedUpHash]
    matches: list[BankMatch]

    @classmethod
    def of_verdict(cls, verdict: Verdict) -> BankLookupAnswer:
        """An image's lookup from its ``/classify`` verdict: its PDQ hash (for an animation or a video, the hash
        of the frame behind its closest match, else of its best frame) and its bank matches (each frame's)."""
        hashes = [LookedUpHash(hash=verdict.pdq_hash, quality=verdict.pdq_quality)] if verdict.pdq_hash else []
        return cls(hashes=hashes, matches=list(verdict.bank_matches))


def parse_hash(text: str) -> str:
    """A caller's PDQ hash in canonical form.

    Raises:
        InputError: ``schema_violation``: not a PDQ hash (the message says why).
    """
    try:
        return PdqSignal.validate_signal_str(text)
    except ValueError as exc:
        raise InputError("schema_violation", f"hash: {exc}") from exc


def lookup_hash(matcher: BankMatcher | None, pdq_hex: str) -> BankLookupAnswer:
    """The entries a canonical PDQ hash matches in the banks as they are now; counts nothing.

    Raises:
        BanksDisabledError: the worker has no banks.
    """
    if matcher is None:
        raise BanksDisabledError("this worker runs without hash banks (VITGUARD_BANKS_ENABLED=false)")
    (matches,) = matcher.match_batch([pdq_hex], [CALLER_QUALITY], counts=[False])
    return BankLookupAnswer(hashes=[LookedUpHash(hash=pdq_hex)], matches=matches)
