"""One error family for vitguard.

Every exception vitguard raises on purpose derives from :class:`VitguardError`. Errors caused by a bad
input event carry a stable, machine-readable ``reason`` code: it is what ends up in the dead-letter event,
so downstream tooling (dashboards, re-drive filters) can rely on it. Third-party errors are mapped to these
classes at the adapter that calls the third party, with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, get_args

__all__ = [
    "REASON_CODES",
    "ConfigError",
    "FatalError",
    "FetchError",
    "ImageDecodeError",
    "InputError",
    "ModelLoadError",
    "ReasonCode",
    "ServiceUnavailableError",
    "VitguardError",
    "cause_chain",
]

ReasonCode = Literal[
    # the event itself
    "invalid_json",
    "schema_violation",
    "unsupported_reference",
    # getting the bytes
    "fetch_failed",
    "fetch_timeout",
    "fetch_too_large",
    "fetch_blocked",
    "fetch_not_found",
    "too_many_redirects",
    "file_outside_root",
    "inline_too_large",
    "invalid_base64",
    # decoding the bytes
    "not_an_image",
    "unsupported_image",
    "decompression_bomb",
    "image_too_small",
    "decode_timeout",
    # animations and video (schema 1.2)
    "too_many_frames",
    "video_too_long",
    "unsupported_codec",
    "corrupt_video",
    "no_frames",
    # our side
    "inference_failed",
    "internal_error",
    # the outputs
    "output_too_large",
    "output_rejected",
]
"""Stable reason codes of dead-letter events. Never rename one: add a new code instead."""

REASON_CODES: tuple[str, ...] = get_args(ReasonCode)


class VitguardError(Exception):
    """Root of every error vitguard raises on purpose."""


def cause_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its ``__cause__`` chain, each once: an adapter's error and the third-party errors it was
    raised from (clients wrap their own too: pymilvus its gRPC and retry errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


class ConfigError(VitguardError):
    """Settings are missing or invalid; raised at start-up with one line that says which and why."""


class ModelLoadError(VitguardError):
    """A model spec could not be turned into a classifier (missing, corrupt or mismatched checkpoint)."""


class ServiceUnavailableError(VitguardError):
    """A backing service (Kafka, Redis, Milvus) did not answer in time."""


class FatalError(VitguardError):
    """A failure waiting will not fix (authorization refused, a store's schema does not fit the model).

    The worker stops with a non-zero exit code and one log line saying why; nothing in flight is
    committed, so a fixed deployment redelivers it.
    """


class InputError(VitguardError):
    """An input event cannot be processed; ``reason`` is the stable code for the dead-letter event."""

    def __init__(self, reason: ReasonCode, message: str) -> None:
        super().__init__(message)
        self.reason: ReasonCode = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class FetchError(InputError):
    """The image bytes could not be fetched, or fetching them was refused (SSRF guard, size limits)."""


class ImageDecodeError(InputError):
    """The fetched bytes are not an image vitguard can decode safely."""
