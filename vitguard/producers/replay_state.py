"""What a replay is asked to do, how far it got, and where that is kept between runs.

A replay's progress is a small JSON file per replay id (``<state dir>/<replay id>.json``), written
atomically (temp file, fsync, rename) after every checkpoint. It holds the *plan* as well as the
progress: the resolved start and end offset of every partition (the end being the partition's end when
the replay first started) and the request that produced them. A restarted replay therefore continues
exactly where the last checkpoint left it, up to the same end, even if the topic grew meanwhile or the
command line said ``-1h``. Consumer-group offsets were the alternative; they cannot hold the plan (the
end snapshot, the resolved start) and they need a group coordinator, so a file it is. The price: resume
on a machine that sees the same state directory.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from vitguard.errors import VitguardError

__all__ = [
    "REPLAY_ID_PATTERN",
    "PartitionProgress",
    "ReplaySpecError",
    "ReplayState",
    "ReplayStateError",
    "ReplayStateStore",
    "check_replay_id",
    "parse_offsets",
    "parse_timestamp",
]

REPLAY_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""Replay ids name a file and prefix event ids: letters, digits, ``._-``, at most 64 characters."""

_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
STATE_VERSION = 1


class ReplaySpecError(VitguardError):
    """A replay option is malformed (timestamp, offset, replay id) or contradicts another."""


class ReplayStateError(VitguardError):
    """A replay's state file is unreadable, or it belongs to a different request."""


def check_replay_id(replay_id: str) -> str:
    """Return ``replay_id`` if it is valid.

    Raises:
        ReplaySpecError: it is not (it names a file and prefixes event ids).
    """
    if not REPLAY_ID_PATTERN.match(replay_id):
        raise ReplaySpecError(
            f"bad replay id {replay_id!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return replay_id


_MAX_EPOCH_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: a larger number is a typo (and overflows a Kafka timestamp)."""


def parse_timestamp(text: str, now: datetime | None = None) -> int:
    """Milliseconds since the epoch from ISO 8601 with a timezone, epoch milliseconds, or ``-30m``/``-2h``/``-1d``.

    A timestamp without a timezone is refused rather than guessed: a replay from the wrong hour is a
    costly mistake.

    Raises:
        ReplaySpecError: the text is none of those.
    """
    value = text.strip()
    hint = "use ISO 8601 with a timezone (2026-01-01T00:00:00Z), epoch milliseconds, or -30m / -2h / -1d"
    if value.isdigit():
        if int(value) > _MAX_EPOCH_MS:
            raise ReplaySpecError(f"bad timestamp {text!r}: past the year 9999 in epoch milliseconds; {hint}")
        return int(value)
    if match := _RELATIVE.match(value):
        now = now or datetime.now(UTC)
        try:
            delta = timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
            return int((now - delta).timestamp() * 1000)
        except (OverflowError, ValueError):  # -999999999d: before year 1
            raise ReplaySpecError(f"bad timestamp {text!r}: too far back; {hint}") from None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ReplaySpecError(f"bad timestamp {text!r}: {hint}") from None
    if parsed.tzinfo is None:
        raise ReplaySpecError(f"bad timestamp {text!r}: no timezone; {hint}")
    return int(parsed.timestamp() * 1000)


def parse_offsets(values: tuple[str, ...] | list[str]) -> dict[int | None, int]:
    """``["100"]`` -> every partition at 100; ``["0:100", "2:7"]`` -> per partition. Key None = every other.

    Raises:
        ReplaySpecError: a value is not ``N`` or ``P:N`` with non-negative integers, or repeats a partition.
    """
    out: dict[int | None, int] = {}
    for value in values:
        part, sep, offset = value.strip().rpartition(":")
        key: int | None = None
        try:
            if sep:
                key = int(part)
            number = int(offset)
        except ValueError:
            raise ReplaySpecError(f"bad offset {value!r}: use N (every partition) or PARTITION:N") from None
        if number < 0 or (key is not None and key < 0):
            raise ReplaySpecError(f"bad offset {value!r}: offsets and partitions are >= 0")
        if key in out:
            raise ReplaySpecError(f"offset given twice for {'every partition' if key is None else f'partition {key}'}")
        out[key] = number
    return out


@dataclass
class PartitionProgress:
    """One partition of a replay: the range ``[start, end)`` and the next offset to read."""

    start: int
    end: int
    next: int
    read: int = 0
    sent: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    """Records read but not sent, by why (e.g. ``schema_violation``, ``filtered:fetch_failed``)."""

    @property
    def done(self) -> bool:
        return self.next >= self.end

    @property
    def total(self) -> int:
        return max(0, self.end - self.start)

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "next": self.next, "read": self.read, "sent": self.sent,
                "skipped": dict(self.skipped)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartitionProgress:
        return cls(int(data["start"]), int(data["end"]), int(data["next"]), int(data.get("read", 0)),
                   int(data.get("sent", 0)), Counter({str(k): int(v) for k, v in data.get("skipped", {}).items()}))


@dataclass
class ReplayState:
    """A replay's plan and progress: what :class:`ReplayStateStore` persists."""

    replay_id: str
    topic: str
    request: dict[str, Any]
    partitions: dict[int, PartitionProgress]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    updated_at: str = ""
    runs: int = 0

    @property
    def done(self) -> bool:
        return all(p.done for p in self.partitions.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "replay_id": self.replay_id,
            "topic": self.topic,
            "request": self.request,
            "partitions": {str(p): prog.to_json() for p, prog in sorted(self.partitions.items())},
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "runs": self.runs,
            "done": self.done,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReplayState:
        if data.get("version") != STATE_VERSION:
            raise ReplayStateError(f"replay state version {data.get('version')!r} is not {STATE_VERSION}")
        return cls(
            replay_id=str(data["replay_id"]),
            topic=str(data["topic"]),
            request=dict(data["request"]),
            partitions={int(p): PartitionProgress.from_json(v) for p, v in data["partitions"].items()},
            created_at=str(data.get("created_at", "")),
            updated_at=str(data.get("updated_at", "")),
            runs=int(data.get("runs", 0)),
        )


class ReplayStateStore:
    """Replay states as JSON files in ``directory`` (created on first save)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, replay_id: str) -> Path:
        return self.directory / f"{check_replay_id(replay_id)}.json"

    def load(self, replay_id: str) -> ReplayState | None:
        """The saved state, or None for a new replay id.

        Raises:
            ReplayStateError: the file exists but cannot be read or parsed.
        """
        path = self.path(replay_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ReplayStateError(f"cannot read replay state {path}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError(f"expected a JSON object, got {type(data).__name__}")
            return ReplayState.from_json(data)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise ReplayStateError(f"replay state {path} is corrupt: {exc}") from exc

    def save(self, state: ReplayState) -> None:
        """Write atomically: a crash leaves the previous checkpoint or this one, never half of one."""
        state.updated_at = datetime.now(UTC).isoformat()
        path = self.path(state.replay_id)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{state.replay_id}.", suffix=".tmp", dir=self.directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(state.to_json(), fh, indent=1, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise ReplayStateError(f"cannot write replay state {path}: {exc.strerror or exc}") from exc
