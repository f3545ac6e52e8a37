"""``vitguard banks create|import|export|list|add|remove|hash``: hash banks on the banks topic.

Every command reads or writes the compacted banks topic (``VITGUARD_BANKS_TOPIC``); running workers see a
change within about a second. Errors are one line and exit code 2; an import with bad lines exits 0 and lists
them (``--strict``: exit 1 and import nothing).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

from vitguard.cli._kafka_common import kafka_options, load_cli_settings
from vitguard.errors import VitguardError

if TYPE_CHECKING:
    from vitguard.banks.store import KafkaBankStore

__all__ = ["register"]

_SHOW_ERRORS = 20


def _store(bootstrap_servers: str | None, connect_timeout: float) -> KafkaBankStore:
    from vitguard.banks.store import KafkaBankStore

    settings = load_cli_settings(bootstrap_servers)
    kafka = settings.kafka.model_copy(update={"request_timeout_s": connect_timeout})
    return KafkaBankStore(kafka, settings.banks, settings.topics, timeout_s=max(connect_timeout, 30.0))


@click.group("banks")
def banks() -> None:
    """Hash banks: lists of known content matched by PDQ hash (positive: known bad; negative: allow-list)."""


@banks.command("create")
@click.argument("name")
@click.option("--kind", type=click.Choice(["positive", "negative"]), default="positive",
              help="positive: known bad content; negative: content confirmed safe (allow-list).")
@click.option("--action", type=click.Choice(["force_unsafe", "flag_only"]), default="flag_only",
              help="What a match against a positive bank does.")
@click.option("--distance", type=click.IntRange(0, 128), default=None,
              help="Match distance in bits (default VITGUARD_BANKS_DEFAULT_MATCH_DISTANCE, 31).")
@click.option("--disabled", is_flag=True, help="Create it disabled (it matches nothing until enabled).")
@click.option("--description", default="", help="What the bank is.")
@click.option("--update", is_flag=True, help="Change the settings of an existing bank instead of failing.")
@kafka_options
def create(name: str, kind: str, action: str, distance: int | None, disabled: bool, description: str, update: bool,
           bootstrap_servers: str | None, connect_timeout: float) -> None:
    """Create bank NAME (or change its settings with --update)."""
    from pydantic import ValidationError

    from vitguard.banks.models import Bank
    from vitguard.errors import ConfigError

    store = _store(bootstrap_servers, connect_timeout)
    try:
        bank = Bank(name=name, kind=kind, action=action, enabled=not disabled, description=description,  # type: ignore[arg-type]
                    match_distance=store.banks.default_match_distance if distance is None else distance)
    except ValidationError as exc:
        raise ConfigError(f"bad bank: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from exc
    store.create_bank(bank, update=update)
    click.echo(f"{'updated' if update else 'created'} bank {name} ({kind}, {action}, distance "
               f"{bank.match_distance}{', disabled' if disabled else ''})")


@banks.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per bank.")
@kafka_options
def list_banks(as_json: bool, bootstrap_servers: str | None, connect_timeout: float) -> None:
    """The banks, their settings and how many hashes each holds."""
    state = _store(bootstrap_servers, connect_timeout).read()
    counts = state.counts()
    if as_json:
        for name, bank in sorted(state.banks.items()):
            click.echo(json.dumps({**bank.model_dump(mode="json"), "entries": counts[name]}))
        return
    if not state.banks:
        click.echo("no banks yet: `vitguard banks create NAME`")
        return
    click.echo(f"{'bank':<28} {'kind':<9} {'action':<13} {'dist':>4} {'enabled':<7} {'entries':>9}")
    for name, b in sorted(state.banks.items()):
        click.echo(f"{name:<28} {b.kind:<9} {b.action:<13} {b.match_distance:>4} {str(b.enabled).lower():<7} "
                   f"{counts[name]:>9}")


@banks.command("import")
@click.argument("name")
@click.argument("source", type=click.File("r", encoding="utf-8-sig"))
@click.option("--format", "fmt", type=click.Choice(["auto", "text", "csv"]), default="auto",
              help="text: one hex hash per line with optional id and tags; csv: a header row (ThreatExchange, "
                   "HMA, vitguard export); auto: detected from the first line.")
@click.option("--tag", "tags", multiple=True, help="Add this tag to every imported entry.")
@click.option("--strict", is_flag=True, help="Import nothing and exit 1 when any line is bad.")
@click.option("--dry-run", is_flag=True, help="Read and report only.")
@kafka_options
def import_(name: str, source: TextIO, fmt: str, tags: tuple[str, ...], strict: bool, dry_run: bool,
            bootstrap_servers: str | None, connect_timeout: float) -> None:
    """Import the hashes of SOURCE (a file, or - for stdin) into bank NAME."""
    from tqdm import tqdm

    from vitguard.banks.formats import parse_hash_list

    try:
        report = parse_hash_list(source, fmt=fmt)  # type: ignore[arg-type]
    except UnicodeDecodeError as exc:  # one line and exit 2, as for any bad input (was a traceback)
        raise VitguardError(f"{source.name} is not UTF-8 text (byte {exc.start}: "
                            f"{exc.object[exc.start:exc.start + 1]!r}); export the list as UTF-8") from None
    for err in report.errors[:_SHOW_ERRORS]:
        click.echo(f"{source.name}: {err}", err=True)
    if len(report.errors) > _SHOW_ERRORS:
        click.echo(f"{source.name}: ... and {len(report.errors) - _SHOW_ERRORS} more bad line(s)", err=True)
    summary = (f"{len(report.hashes)} hash(es) read ({report.format}), {len(report.errors)} bad line(s), "
               f"{report.other_types} of other signal types skipped, {report.duplicates} duplicate(s)")
    if strict and report.errors:
        click.echo(f"{summary}; nothing imported (--strict)", err=True)
        sys.exit(1)
    if dry_run:
        click.echo(f"{summary}; nothing imported (--dry-run)")
        return
    entries = [h.entry(name, tags) for h in report.hashes]
    store = _store(bootstrap_servers, connect_timeout)
    with tqdm(total=len(entries), unit="hash", disable=len(entries) < 10_000 or not sys.stderr.isatty(),
              desc=f"importing into {name}") as bar:

        def advance(n: int) -> None:
            bar.update(n)

        written = store.add_entries(entries, progress=advance)
    click.echo(f"{summary}; {written} imported into {name}")


@banks.command("release")
@click.argument("name")
@click.argument("entry_id")
@kafka_options
def release(name: str, entry_id: str, bootstrap_servers: str | None, connect_timeout: float) -> None:
    """Release entry ENTRY_ID of bank NAME from the flood guard's quarantine, on every worker (each reads the
    banks topic within seconds). An entry that goes on matching unrelated images is quarantined again."""
    import time

    _store(bootstrap_servers, connect_timeout).release(name, entry_id, time.time())
    click.echo(f"released {name}/{entry_id}: every worker ends its quarantine within seconds")


@banks.command("export")
@click.argument("name")
@click.option("-o", "--output", type=click.File("w"), default="-", help="Where to write (default stdout).")
@click.option("--format", "fmt", type=click.Choice(["csv", "text"]), default="csv",
              help="csv: signal_type,signal_str,entry_id,tags,quality,note,added_at; text: hash and id per line.")
@kafka_options
def export(name: str, output: TextIO, fmt: str, bootstrap_servers: str | None, connect_timeout: float) -> None:
    """Write the hashes of bank NAME."""
    from vitguard.banks.formats import write_csv, write_text

    store = _store(bootstrap_servers, connect_timeout)
    state = store.read()
    store.require_bank(state, name)
    n = (write_csv if fmt == "csv" else write_text)(state.bank_entries(name), output)
    if output is not sys.stdout:
        click.echo(f"{n} hash(es) of {name} written to {output.name}", err=True)


@banks.command("add")
@click.argument("name")
@click.argument("items", nargs=-1, required=True)
@click.option("--id", "entry_id", default=None, help="Entry id (one item only; default derived from the hash).")
@click.option("--tag", "tags", multiple=True, help="Tag the new entries.")
@click.option("--note", default="", help="Free text kept with the entries.")
@kafka_options
def add(name: str, items: tuple[str, ...], entry_id: str | None, tags: tuple[str, ...], note: str,
        bootstrap_servers: str | None, connect_timeout: float) -> None:
    """Add ITEMS to bank NAME: hex PDQ hashes, or image files (hashed here; low quality refused)."""
    from pydantic import ValidationError

    from vitguard.banks.models import BankEntry
    from vitguard.banks.signal import PdqSignal
    from vitguard.errors import ConfigError

    if entry_id is not None and len(items) != 1:
        raise ConfigError("--id names one entry: give one item")
    store = _store(bootstrap_servers, connect_timeout)
    entries: list[BankEntry] = []
    for item in items:
        quality: int | None = None
        if Path(item).is_file():
            try:
                pdq = PdqSignal.hash_bytes(Path(item).read_bytes())
            except Exception as exc:
                raise ConfigError(f"{item}: not an image ({type(exc).__name__}: {exc})") from exc
            if pdq.quality < store.banks.quality_threshold:
                raise ConfigError(f"{item}: PDQ quality {pdq.quality} is below VITGUARD_BANKS_QUALITY_THRESHOLD "
                                  f"({store.banks.quality_threshold}); such a hash would never match")
            signal, quality, item_note = pdq.hex, pdq.quality, note or Path(item).name
        else:
            try:
                signal = PdqSignal.validate_signal_str(item)
            except ValueError as exc:
                raise ConfigError(f"{item[:80]}: neither an image file nor a PDQ hash ({exc})") from exc
            item_note = note
        try:
            entries.append(BankEntry(bank=name, entry_id=entry_id or BankEntry.default_id(signal), signal=signal,
                                     quality=quality, tags=tags, note=item_note))
        except ValidationError as exc:
            raise ConfigError(f"bad entry: {exc.errors()[0]['msg']}") from exc
    store.add_entries(entries)
    for e in entries:
        click.echo(f"added {e.entry_id} {e.signal} to {name}")


@banks.command("remove")
@click.argument("name")
@click.argument("entry_ids", nargs=-1)
@click.option("--bank", "whole_bank", is_flag=True, help="Delete the bank itself, with all its entries.")
@kafka_options
def remove(name: str, entry_ids: tuple[str, ...], whole_bank: bool, bootstrap_servers: str | None,
           connect_timeout: float) -> None:
    """Remove ENTRY_IDS (ids, or hashes added without an id) from bank NAME, or the whole bank with --bank."""
    from vitguard.banks.models import BankEntry
    from vitguard.errors import ConfigError

    store = _store(bootstrap_servers, connect_timeout)
    if whole_bank:
        if entry_ids:
            raise ConfigError("--bank deletes the whole bank: give no entry ids")
        n = store.delete_bank(name)
        click.echo(f"deleted bank {name} and its {n} entr{'y' if n == 1 else 'ies'}")
        return
    if not entry_ids:
        raise ConfigError("name the entries to remove (or --bank to delete the bank)")
    ids = [BankEntry.default_id(i.lower()) if len(i) == 64 and not i.startswith("pdq-") else i for i in entry_ids]
    missing = store.remove_entries(name, ids)
    click.echo(f"removed {len(ids) - len(missing)} entr{'y' if len(ids) - len(missing) == 1 else 'ies'} from {name}")
    if missing:
        raise ConfigError(f"not in {name}: {', '.join(missing[:10])}")


@banks.command("hash")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image.")
def hash_(images: tuple[Path, ...], as_json: bool) -> None:
    """Print the PDQ hash and quality of IMAGES (what `banks add` would store)."""
    from vitguard.banks.signal import PdqSignal
    from vitguard.errors import ConfigError

    for path in images:
        try:
            pdq = PdqSignal.hash_bytes(path.read_bytes())
        except Exception as exc:
            raise ConfigError(f"{path}: not an image ({type(exc).__name__}: {exc})") from exc
        row: dict[str, Any] = {"file": str(path), "pdq_hash": pdq.hex, "pdq_quality": pdq.quality}
        click.echo(json.dumps(row) if as_json else f"{pdq.hex}\t{pdq.quality}\t{path}")


def register(group: click.Group) -> None:
    group.add_command(banks)
