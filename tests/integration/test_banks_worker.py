"""Hash banks through a real `vitguard worker` (broker, Redis, Milvus Lite): the worker follows the banks
topic, so an entry added while it runs (here over HTTP, `POST /banks/{name}/entries`) applies to the next upload,
with no restart, and a removed one (`DELETE /banks/{name}/entries/{id}`) stops applying; the bank-match alert
reaches the alerts topic; bank changes over HTTP need an unbound API key."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_pipeline_worker import post
from vitguard.banks import Bank, KafkaBankStore, PdqSignal
from vitguard.demo.samples import photo_bytes
from vitguard.schemas.events import ImageEvent
from vitguard.testing import services
from vitguard.testing.worker import OutputReader, WorkerProcess, publish_raw

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

ADMIN = {"Authorization": "Bearer admin-key"}
ACME = {"X-API-Key": "acme-key"}


def get(settings: Any, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    return post(settings, path, None, "application/json", method="GET", headers=headers)


def test_entries_added_and_removed_while_the_worker_runs_apply_to_the_next_uploads(
    service_settings: Callable[..., Any], new_topic: Callable[..., str], tmp_path: Path,
    workers: list[WorkerProcess],
) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (name, data), (_, other) = photo_bytes(2)
    (root / "banked.png").write_bytes(data)
    (root / "other.png").write_bytes(other)
    settings = service_settings(
        topics={"images": new_topic(1, "img"), "verdicts": new_topic(1, "verdicts"),
                "alerts": new_topic(1, "alerts"), "dead_letters": new_topic(1, "dlq")},
        milvus={"uri": str(tmp_path / "milvus.db")},
        model={"spec": "opennsfw"},
        banks={"enabled": True, "topic": f"banks-{uuid.uuid4().hex[:10]}", "rebuild_interval_s": 0.2},
        fetch={"file_root": str(root)},
        batch={"max_size": 4, "max_wait_s": 0.05},
        web={"host": "127.0.0.1", "port": services.free_port(), "api_keys": ["admin-key"],
             "tenant_api_keys": ["acme=acme-key"]},
    )
    store = KafkaBankStore(settings.kafka, settings.banks, settings.topics)
    store.create_bank(Bank(name="known-bad", action="force_unsafe"))
    worker = WorkerProcess(settings).start()
    workers.append(worker)
    t = settings.topics

    def upload(n: int, image: str) -> None:
        event = ImageEvent(event_id=f"e{n}", content_id=f"c{n}", image_ref=(root / image).as_uri())
        publish_raw(settings.kafka, t.images, [(event.content_id.encode(), event.model_dump_json().encode())])

    with OutputReader(settings.kafka, verdicts=t.verdicts, alerts=t.alerts, dead_letters=t.dead_letters) as out:
        def verdict(n: int) -> Any:
            outputs = out.poll_until(lambda o: any(v.content_id == f"c{n}" for v in o.verdicts)
                                     or not worker.running, 120.0, 0.5)
            found = [v for v in outputs.verdicts if v.content_id == f"c{n}"]
            assert found, worker.log_tail()
            return found[0]

        upload(0, "banked.png")
        before = verdict(0)
        assert before.bank_matches == [] and before.label_source == "model" and before.pdq_hash is not None

        banked_hash = PdqSignal.hash_bytes(data).hex
        listed = f"# known bad\n{banked_hash} kb-1 report-7\nnot-a-hash\n".encode()
        changes = {  # the refusals first: none of them writes anything
            "no key": post(settings, "/banks/known-bad/entries", listed, "text/plain"),
            "tenant key": post(settings, "/banks/known-bad/entries", listed, "text/plain", headers=ACME),
            "strict": post(settings, "/banks/known-bad/entries?strict=true", listed, "text/plain", headers=ADMIN),
            "no bank": post(settings, "/banks/nobody/entries", listed, "text/plain", headers=ADMIN),
            "GET": post(settings, "/banks/known-bad/entries", None, "text/plain", method="GET", headers=ADMIN),
        }
        added = post(settings, "/banks/known-bad/entries?tag=http", listed, "text/plain", headers=ADMIN)
        assert {k: (status, body["reason"]) for k, (status, body) in changes.items()} == {
            "no key": (401, "unauthorized"), "tenant key": (403, "forbidden_tenant"),
            "strict": (400, "schema_violation"), "no bank": (404, "not_found"), "GET": (405, "method_not_allowed")}
        assert "line 3" in changes["strict"][1]["message"]
        assert added[0] == 200, added
        assert {k: added[1][k] for k in ("added", "read", "bad_lines")} == {"added": 1, "read": 1, "bad_lines": 1}
        assert added[1]["errors"][0].startswith("line 3: ")
        entry = store.read().entries[("known-bad", "kb-1")]
        assert (entry.signal, set(entry.tags)) == (banked_hash, {"report-7", "http"})
        time.sleep(3.0)  # the follower polls the topic and rebuilds within VITGUARD_BANKS_REBUILD_INTERVAL_S
        upload(1, "banked.png")  # the same bytes: a verdict-cache hit, matched against the banks of now
        upload(2, "other.png")
        banked, unrelated = verdict(1), verdict(2)
        listing = get(settings, "/banks", ADMIN)
        assert listing[0] == 200 and [(b["name"], b["entries"], b["action"]) for b in listing[1]["banks"]] == [
            ("known-bad", 1, "force_unsafe")]
        # issue 31: the banks over HTTP, side-effect free: by hash (exact, and 8 bits off), by image, by a
        # hash that is not one, and by an image matching nothing
        near = f"{int(banked_hash, 16) ^ 0xFF:064x}"
        lookups = {
            "hash": post(settings, "/banks/lookup", json.dumps({"hash": banked_hash}).encode(), "application/json",
                         headers=ADMIN),
            "near": post(settings, "/banks/lookup", json.dumps({"hash": near}).encode(), "application/json",
                         headers=ADMIN),
            "image": post(settings, "/banks/lookup", data, "image/png", headers=ADMIN),
            "other": post(settings, "/banks/lookup", other, "image/png", headers=ADMIN),
            "bad": post(settings, "/banks/lookup", b'{"hash": "xyz"}', "application/json", headers=ADMIN),
        }
        assert [(m["entry_id"], m["distance"]) for m in lookups["hash"][1]["matches"]] == [("kb-1", 0)]
        assert [(m["entry_id"], m["distance"]) for m in lookups["near"][1]["matches"]] == [("kb-1", 8)]
        assert lookups["image"][1]["hashes"][0]["hash"] == banked_hash and lookups["image"][1]["hashes"][0]["quality"]
        assert [m["entry_id"] for m in lookups["image"][1]["matches"]] == ["kb-1"]
        assert lookups["other"][0] == 200 and lookups["other"][1]["matches"] == []
        assert (lookups["bad"][0], lookups["bad"][1]["reason"]) == (400, "schema_violation")
        assert [(m.bank, m.entry_id) for m in banked.bank_matches] == [("known-bad", "kb-1")]
        assert (banked.label, banked.label_source) == ("unsafe", "bank")
        assert unrelated.bank_matches == []
        outputs = out.poll_until(lambda o: any(a.content_id == "c1" for a in o.bank_alerts), 30.0, 0.5)
        assert [a.action_taken for a in outputs.bank_alerts if a.content_id == "c1"] == ["force_unsafe"]

        removed = post(settings, "/banks/known-bad/entries/kb-1", None, "text/plain", method="DELETE", headers=ADMIN)
        again = post(settings, "/banks/known-bad/entries/kb-1", None, "text/plain", method="DELETE", headers=ADMIN)
        assert removed == (200, {**removed[1], "bank": "known-bad", "removed": ["kb-1"]})
        assert (again[0], again[1]["reason"]) == (404, "not_found")
        time.sleep(3.0)
        upload(3, "banked.png")
        after = verdict(3)
        assert after.bank_matches == [] and (after.label, after.label_source) == (before.label, "model")
        gone = post(settings, "/banks/lookup", json.dumps({"hash": banked_hash}).encode(), "application/json",
                    headers=ADMIN)
        assert gone == (200, {"hashes": [{"hash": banked_hash, "quality": None}], "matches": []})
    assert worker.terminate() == 0, worker.log_tail()
    assert name  # the banked photo is a real one (scikit-image's), not a drawn stand-in
