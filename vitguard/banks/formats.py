"""Reading and writing hash lists: the exchange formats ``vitguard banks import|export`` understand.

Import (detected per file, or forced with ``fmt``):

- **text**: one hex PDQ hash per line, optionally followed by fields separated by a tab, a comma or spaces:
  ``<hash> [<entry id> [<tags>...]]``. ``key=value`` fields are read by name, which covers the reference
  ``pdq-photo-hasher`` output (``hash=...,quality=...,filename=...``). ``#`` starts a comment.
- **csv**: a header line naming the columns, as python-threatexchange writes
  (``threatexchange dataset -P --csv``: ``signal_type,signal_str,collab,category,tags``), HMA's bank
  exports, ThreatExchange descriptor dumps (``id,indicator,type,...``) and vitguard's own export. The hash
  is the first column called ``signal_str``/``signal``/``hash``/``pdq``/``hash_value``/``indicator``; a
  type column (``signal_type``/``type``/``hash_type``/``indicator_type``) makes rows of other signal types
  (md5, url, ...) skipped, not errors; ids come from ``entry_id``/``id``/``indicator_id``/``content_id``;
  tags from ``tags`` (space, ``;`` or ``,`` separated).

A bad line is reported with its line number and reason (:class:`LineError`) and the rest is still read;
whether that aborts the import is the caller's choice (``--strict``).

Export writes vitguard's CSV (``signal_type,signal_str,entry_id,tags,quality,note,added_at``), which
this module reads back, and which threatexchange-style readers take by its first two columns.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, TextIO

from pydantic import TypeAdapter, ValidationError

from vitguard.banks.models import BankEntry
from vitguard.banks.signal import PdqSignal
from vitguard.schemas.events import Identifier

__all__ = [
    "ImportFormat",
    "ImportReport",
    "LineError",
    "ParsedHash",
    "parse_hash_list",
    "read_text",
    "write_csv",
    "write_text",
]

ImportFormat = Literal["auto", "text", "csv"]

_HASH_COLUMNS = ("signal_str", "signal", "hash", "pdq", "pdq_hash", "hash_value", "indicator", "value")
_TYPE_COLUMNS = ("signal_type", "type", "hash_type", "indicator_type")
_ID_COLUMNS = ("entry_id", "id", "indicator_id", "content_id", "hash_id")
_TAG_COLUMNS = ("tags", "tag")
_QUALITY_COLUMNS = ("quality", "pdq_quality")
_NOTE_COLUMNS = ("note", "filename", "file", "description")
_ID_ADAPTER: TypeAdapter[str] = TypeAdapter(Identifier)
_SPLIT_TAGS = re.compile(r"[\s;,]+")
_HEX64 = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class ParsedHash:
    """One good line: a canonical hash and what the list said about it."""

    line: int
    signal: str
    entry_id: str | None = None
    tags: tuple[str, ...] = ()
    quality: int | None = None
    note: str = ""

    def entry(self, bank: str, extra_tags: Iterable[str] = ()) -> BankEntry:
        tags = tuple(dict.fromkeys((*self.tags, *extra_tags)))
        return BankEntry(bank=bank, entry_id=self.entry_id or BankEntry.default_id(self.signal), signal=self.signal,
                         quality=self.quality, tags=tags, note=self.note)


@dataclass(frozen=True)
class LineError:
    line: int
    reason: str
    text: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ImportReport:
    """What a file held: good hashes, bad lines, rows of other signal types, repeats of an entry id."""

    format: Literal["text", "csv"]
    hashes: list[ParsedHash] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    other_types: int = 0
    duplicates: int = 0


def _entry_id(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    try:
        return _ID_ADAPTER.validate_python(raw.strip())
    except ValidationError as exc:
        raise ValueError(f"bad entry id {raw.strip()[:60]!r} (letters, digits and ._:@/- only, "
                         f"at most 128 characters)") from exc


def _quality(raw: str | None) -> int | None:
    if raw is None or not raw.strip():
        return None
    try:
        q = int(raw.strip())
    except ValueError:
        raise ValueError(f"bad quality {raw.strip()[:20]!r} (an integer 0-100)") from None
    if not 0 <= q <= 100:
        raise ValueError(f"bad quality {q} (0-100)")
    return q


def _tags(raw: str | None) -> tuple[str, ...]:
    return tuple(t for t in _SPLIT_TAGS.split(raw or "") if t)


def _detect(first: str) -> Literal["text", "csv"]:
    head = [c.strip().lower() for c in next(csv.reader([first]), [])]
    return "csv" if any(c in _HASH_COLUMNS for c in head) and not _HEX64.match(head[0] if head else "") else "text"


def _pick(row: dict[str, str], columns: tuple[str, ...]) -> str | None:
    for c in columns:
        if c in row and row[c] is not None:
            return row[c]
    return None


def parse_hash_list(stream: TextIO | Iterable[str], *, fmt: ImportFormat = "auto") -> ImportReport:
    """Read a hash list (see the module docstring); never raises for a bad line."""
    lines: Iterator[str] = iter(stream)
    buffered: list[tuple[int, str]] = []
    for n, line in enumerate(lines, start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            buffered.append((n, line))
            break
    if not buffered:
        return ImportReport(format="text" if fmt == "auto" else fmt)
    kind = _detect(buffered[0][1]) if fmt == "auto" else fmt
    start = buffered[0][0]
    rest = ((n, line) for n, line in enumerate(lines, start=start + 1))
    report = ImportReport(format=kind)
    seen: set[str] = set()

    def keep(parsed: ParsedHash) -> None:
        key = parsed.entry_id or parsed.signal
        if key in seen:
            report.duplicates += 1
            return
        seen.add(key)
        report.hashes.append(parsed)

    if kind == "csv":
        _parse_csv(buffered[0], rest, report, keep)
    else:
        for n, line in [buffered[0], *rest]:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                keep(_parse_text_line(n, text))
            except ValueError as exc:
                report.errors.append(LineError(n, str(exc), text[:200]))
    return report


def _parse_text_line(n: int, text: str) -> ParsedHash:
    """One line of a text list (see the module docstring); ValueError says what is wrong with a bad one."""
    fields = _TextFields.split(text)
    signal = PdqSignal.validate_signal_str(fields.raw_hash)
    entry_id = _entry_id(_first_value(fields.named, "id", "entry_id") or (fields.rest[0] if fields.rest else None))
    tags = _tags(fields.named.get("tags")) + tuple(t for f in fields.rest[1:] for t in _tags(f))
    return ParsedHash(n, signal, entry_id, tags, _quality(fields.named.get("quality")),
                      (_first_value(fields.named, "filename", "note") or "")[:1000])


@dataclass(frozen=True)
class _TextFields:
    """A text line's fields: ``<hash> [<entry id> [<tags>...]]``, where ``key=value`` fields are read by name
    (and a named hash leaves every unnamed field to the entry id and tags)."""

    raw_hash: str
    """The hash as written (not yet validated); empty when the line has none."""
    named: dict[str, str]
    """The ``key=value`` fields, keys in lower case."""
    rest: list[str]
    """The unnamed fields after the hash."""

    @classmethod
    def split(cls, text: str) -> _TextFields:
        sep = "\t" if "\t" in text else ("," if "," in text else None)
        fields = [f.strip() for f in (text.split(sep) if sep else text.split())]
        named = {k.strip().lower(): v for k, _, v in (f.partition("=") for f in fields if "=" in f)}
        positional = [f for f in fields if "=" not in f]
        named_hash = _first_value(named, "hash", "pdq")
        if named_hash:
            return cls(named_hash, named, positional)
        return cls(positional[0] if positional else "", named, positional[1:])


def _first_value(named: dict[str, str], *keys: str) -> str | None:
    """The first non-empty value of the fields named ``keys`` (an empty ``hash=`` gives way to ``pdq=``)."""
    for key in keys:
        if value := named.get(key):
            return value
    return None


def _parse_csv(
    header_line: tuple[int, str], rest: Iterator[tuple[int, str]], report: ImportReport,
    keep: Callable[[ParsedHash], None],
) -> None:
    header = [c.strip().lower() for c in next(csv.reader([header_line[1]]))]
    hash_col = next((c for c in _HASH_COLUMNS if c in header), None)
    if hash_col is None:
        report.errors.append(LineError(header_line[0], f"no hash column in the header (one of "
                                                       f"{', '.join(_HASH_COLUMNS)})", header_line[1][:200]))
        return
    for n, line in rest:  # one record per line (hash lists never quote a newline): exact line numbers
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        values = next(csv.reader([line.rstrip("\r\n")]), [])
        if len(values) > len(header):
            report.errors.append(LineError(n, f"{len(values)} fields, the header has {len(header)}", line[:200]))
            continue
        row = dict(zip(header, values, strict=False))
        signal_type = (_pick(row, _TYPE_COLUMNS) or "pdq").strip().lower()
        if signal_type and signal_type not in PdqSignal.aliases:
            report.other_types += 1
            continue
        try:
            signal = PdqSignal.validate_signal_str(row.get(hash_col) or "")
            parsed = ParsedHash(n, signal, _entry_id(_pick(row, _ID_COLUMNS)), _tags(_pick(row, _TAG_COLUMNS)),
                                _quality(_pick(row, _QUALITY_COLUMNS)), (_pick(row, _NOTE_COLUMNS) or "")[:1000])
        except ValueError as exc:
            report.errors.append(LineError(n, str(exc), line.strip()[:200]))
            continue
        keep(parsed)


def write_csv(entries: Iterable[BankEntry], out: TextIO) -> int:
    """vitguard's export CSV; returns the number of rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["signal_type", "signal_str", "entry_id", "tags", "quality", "note", "added_at"])
    n = 0
    for e in entries:
        writer.writerow([e.signal_type, e.signal, e.entry_id, " ".join(e.tags),
                         "" if e.quality is None else e.quality, e.note, e.added_at.isoformat()])
        n += 1
    return n


def write_text(entries: Iterable[BankEntry], out: TextIO) -> int:
    """One ``<hash>\\t<entry id>`` per line; returns the number of lines."""
    n = 0
    for e in entries:
        out.write(f"{e.signal}\t{e.entry_id}\n")
        n += 1
    return n


def read_text(text: str, *, fmt: ImportFormat = "auto") -> ImportReport:
    """:func:`parse_hash_list` of a string (tests, small lists)."""
    return parse_hash_list(io.StringIO(text), fmt=fmt)
