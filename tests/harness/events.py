"""Events of every kind a fault test publishes (good images, each kind of bad input, fault markers), each with the
answer it must get.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tests.harness.controls import ImageServer
from vitguard.schemas.events import ImageEvent

if TYPE_CHECKING:
    pass


__all__ = ["ChaosEvent", "EventFactory"]


@dataclass(frozen=True)
class ChaosEvent:
    """One message to publish and what it must end as."""

    key: bytes | None
    value: bytes
    kind: str
    """good | http | slow | stall | trickle | crash | pill_binary | pill_corrupt_inline | pill_inline_too_large |
    malformed"""
    expect: str
    """``verdict`` or the dead letter's reason code."""
    event_id: str | None = None


_EXPECT = {
    "good": "verdict", "http": "verdict", "slow": "verdict", "crash": "verdict",
    "stall": "fetch_timeout", "trickle": "fetch_timeout",
    "pill_binary": "invalid_json", "pill_corrupt_inline": "unsupported_image",
    "pill_inline_too_large": "inline_too_large", "malformed": "invalid_json",
}


class EventFactory:
    """Makes :class:`ChaosEvent` s; every good image has bytes of its own (no verdict-cache hits).

    Args:
        root: the worker's file root (``VITGUARD_FETCH_FILE_ROOT``); good images are written there.
        server: serves the ``http``/``slow`` images and the hostile URLs.
        max_inline_bytes: the worker's inline limit (``VITGUARD_FETCH_MAX_INLINE_BYTES``).
        crash_marker: the string the fault worker looks for in a payload.
        seed: for the image variations.
    """

    def __init__(self, root: Path, server: ImageServer | None = None, *, max_inline_bytes: int | None = None,
                 crash_marker: str = "vitguard-fault-crash", seed: int = 0) -> None:
        from PIL import Image

        from vitguard.demo.samples import photo_bytes
        from vitguard.settings import FetchSettings

        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.server = server
        self.max_inline_bytes = max_inline_bytes or FetchSettings().max_inline_bytes  # the workers' default
        self.crash_marker = crash_marker
        self._rng = random.Random(seed)  # noqa: S311 - test data, not security
        self._bases = []
        for _, data in photo_bytes(4):
            import io

            image = Image.open(io.BytesIO(data)).convert("RGB")
            image.thumbnail((256, 256))
            self._bases.append(image)
        self._count = 0

    def _jpeg(self, comment: str = "") -> bytes:
        import io

        base = self._bases[self._count % len(self._bases)]
        self._count += 1
        w, h = base.size
        dx, dy = self._rng.randrange(1, w // 10), self._rng.randrange(1, h // 10)
        copy = base.crop((dx, dy, w - self._rng.randrange(1, w // 10), h - self._rng.randrange(1, h // 10)))
        out = io.BytesIO()
        copy.save(out, "JPEG", quality=self._rng.randrange(60, 95), **({"comment": comment} if comment else {}))
        return out.getvalue()

    def _event(self, kind: str, ref: str, x_padding: str = "", **metadata: str) -> ChaosEvent:
        n = self._count
        mark = f"{metadata['fault']}-" if "fault" in metadata else ""  # in the verdict and the Milvus record too
        extra = {"x_padding": x_padding} if x_padding else {}
        event = ImageEvent(content_id=f"{mark}{kind}-{n}-{self._rng.randrange(10**9)}", image_ref=ref,
                           metadata={"kind": kind, **metadata}, **extra)
        return ChaosEvent(event.content_id.encode(), event.model_dump_json().encode(), kind, _EXPECT[kind],
                          event.event_id)

    def make(self, kind: str, *, seam: str = "agent") -> ChaosEvent:
        """One event of ``kind`` (see :attr:`ChaosEvent.kind`); a ``crash`` event fires the fault worker's
        ``seam`` (``tests/faults/fault_worker.py``): its mark ``<crash_marker>/<seam>`` is in the event's
        metadata and content id, and in the image itself (a JPEG comment) for the decode seam."""
        if kind in ("good", "crash"):
            mark = f"{self.crash_marker}/{seam}" if kind == "crash" else ""
            data = self._jpeg(comment=mark)
            path = self.root / f"{self._count}-{self._rng.randrange(10**9)}.jpg"
            path.write_bytes(data)
            extra = {"fault": mark} if kind == "crash" else {}
            return self._event(kind, path.as_uri(), **extra)
        if kind in ("http", "slow", "stall", "trickle"):
            if self.server is None:
                raise ValueError(f"{kind} events need an ImageServer")
            name = f"{self._count}-{self._rng.randrange(10**9)}.jpg"
            if kind in ("http", "slow"):
                self.server.images[name] = self._jpeg()
            return self._event(kind, self.server.url("img" if kind == "http" else kind, name))
        if kind == "pill_binary":  # ~1 MiB that is not JSON (and not UTF-8: the dead letter base64-encodes it)
            value = bytes([0xFF, 0xFE]) + self._rng.randbytes(1024 * 1024)
            return ChaosEvent(b"pill-binary", value, kind, _EXPECT[kind])
        if kind == "pill_corrupt_inline":  # a JPEG header and noise up to the inline limit; a message over 1 MiB
            data = b"\xff\xd8\xff\xe0" + self._rng.randbytes(min(800 * 1024, self.max_inline_bytes - 1024))
            ref = f"data:image/jpeg;base64,{base64.b64encode(data).decode()}"
            # an unknown field (accepted and ignored) takes the message past 1 MiB whatever the inline limit
            return self._event(kind, ref, x_padding="p" * max(0, 1_100_000 - len(ref)))
        if kind == "pill_inline_too_large":
            data = b"\xff\xd8\xff\xe0" + self._rng.randbytes(self.max_inline_bytes + 64 * 1024)
            return self._event(kind, f"data:image/jpeg;base64,{base64.b64encode(data).decode()}")
        if kind == "malformed":
            return ChaosEvent(b"malformed", b'{"content_id": "x", "image_ref": ', kind, _EXPECT[kind])
        raise ValueError(f"unknown event kind {kind!r}")

    def stream(self, count: int, weights: Mapping[str, float], seed: int) -> list[ChaosEvent]:
        """``count`` events, kinds drawn with ``weights`` (the rest good), in a seeded order."""
        rng = random.Random(seed)  # noqa: S311 - test data
        kinds = list(weights)
        chosen = rng.choices(kinds, [weights[k] for k in kinds], k=count)
        return [self.make(k) for k in chosen]
