"""Import formats: plain hash lists, key=value lines, ThreatExchange/HMA CSV, vitguard's export; bad lines."""

from __future__ import annotations

import io
import random

from tests.banks.conftest import random_pdq
from vitguard.banks.formats import read_text, write_csv, write_text
from vitguard.banks.models import BankEntry


def test_plain_list_with_optional_fields_comments_and_bad_lines(rng: random.Random) -> None:
    a, b, c = (random_pdq(rng) for _ in range(3))
    text = "\n".join([
        "# exported 2026-01-01",
        a,
        f"{b}\tncmec-123\tcsam verified",
        f"{c.upper()},id-3,tagged",
        "not-a-hash",
        "0" * 64,
        f"{a} bad|id",
        "",
    ])
    report = read_text(text)
    assert report.format == "text"
    assert [(h.signal, h.entry_id, h.tags) for h in report.hashes] == [
        (a, None, ()), (b, "ncmec-123", ("csam", "verified")), (c, "id-3", ("tagged",))]
    assert [(e.line, e.reason.split(" (")[0]) for e in report.errors] == [
        (5, "not a PDQ hash"), (6, "degenerate PDQ hash"), (7, "bad entry id 'bad|id'")]
    assert str(report.errors[0]).startswith("line 5: not a PDQ hash")


def test_pdq_photo_hasher_key_value_lines(rng: random.Random) -> None:
    a = random_pdq(rng)
    report = read_text(f"hash={a},norm=128,delta=0,quality=97,timehash=0.01,filename=pics/x.jpg\n")
    (h,) = report.hashes
    assert (h.signal, h.quality, h.note) == (a, 97, "pics/x.jpg")


def test_threatexchange_dataset_csv_skips_other_signal_types(rng: random.Random) -> None:
    a, b = random_pdq(rng), random_pdq(rng)
    text = (
        "signal_type,signal_str,collab,category,tags\n"
        f"pdq,{a},Sample Signals,INVESTIGATION_SEED,media_type_photo\n"
        "url,https://example.com/,Sample Signals,INVESTIGATION_SEED,\n"
        f"pdq,{b[:-1]},Sample Signals,INVESTIGATION_SEED,\n"
        f"HASH_PDQ,{b},x,y,\"t1 t2\"\n"
    )
    report = read_text(text)
    assert report.format == "csv"
    assert [(h.signal, h.tags) for h in report.hashes] == [(a, ("media_type_photo",)), (b, ("t1", "t2"))]
    assert report.other_types == 1
    assert [e.line for e in report.errors] == [4]


def test_threatexchange_descriptor_dump_ids(rng: random.Random) -> None:
    a = random_pdq(rng)
    text = f"id,indicator,type,tags\n2880742865368386,{a},HASH_PDQ,tag1;tag2\n"
    (h,) = read_text(text).hashes
    assert (h.entry_id, h.tags) == ("2880742865368386", ("tag1", "tag2"))


def test_csv_without_hash_column_is_one_error() -> None:
    report = read_text("name,value2\nx,y\n", fmt="csv")
    assert len(report.errors) == 1 and "no hash column" in report.errors[0].reason


def test_duplicates_are_counted_not_repeated(rng: random.Random) -> None:
    a = random_pdq(rng)
    report = read_text(f"{a}\n{a}\n")
    assert len(report.hashes) == 1 and report.duplicates == 1


def test_export_round_trips(rng: random.Random) -> None:
    entries = [BankEntry(bank="b", entry_id=f"e{i}", signal=random_pdq(rng), tags=("x", "y"), quality=90, note="n")
               for i in range(3)]
    out = io.StringIO()
    assert write_csv(entries, out) == 3
    back = read_text(out.getvalue())
    assert [(h.signal, h.entry_id, h.tags, h.quality, h.note) for h in back.hashes] == [
        (e.signal, e.entry_id, e.tags, e.quality, e.note) for e in entries]
    text = io.StringIO()
    write_text(entries, text)
    assert [(h.signal, h.entry_id) for h in read_text(text.getvalue()).hashes] == [
        (e.signal, e.entry_id) for e in entries]
