"""Policies as data through a real `vitguard worker` (broker, Redis, Milvus Lite, open_nsfw): two tenants judged
differently in one batch; a shadow policy counted without effect; a document published while the worker runs
taking effect without a restart; a bad document refused under load with the last good one kept; and a
back-test (`vitguard policy test`) over the verdicts written, whose counts are checked against the verdicts.

The thresholds make the outcome independent of what the model says about the photos: a tier at 0.0 is reached
by every score, one at 1.0 by none the model gives a photo."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.integration.test_pipeline_worker import metric, post
from vitguard.cli import main
from vitguard.demo.samples import photo_bytes
from vitguard.kafka.reader import read_to_end
from vitguard.schemas.events import ImageEvent, Verdict
from vitguard.testing import services
from vitguard.testing.worker import OutputReader, WorkerProcess, publish_raw

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _document(version: str, default: str, *, shadow: bool = True) -> str:
    return f"""
version: {version}
default_policy: {default}
policies:
  lenient: {{rules: {{sexual: [{{threshold: 1.0, action: block}}]}}}}
  strict: {{rules: {{sexual: [{{threshold: 0.0, action: block}}]}}}}
  watch: {{rules: {{sexual: [{{threshold: 0.0, action: review}}]}}}}
tenants:
  kids: strict
  dating: {{surfaces: {{profile: strict}}}}
{"shadow: {lenient: watch}" if shadow else ""}
"""


def _publish_document(settings: Any, path: Path, text: str) -> None:
    path.write_text(text)
    result = CliRunner().invoke(main, ["policy", "publish", str(path), "--topic", settings.policy.topic,
                                       "--bootstrap-servers", settings.kafka.bootstrap_servers])
    assert result.exit_code == 0, result.output


def test_tenants_judged_by_their_policies_changed_live_refused_whole_shadowed_and_back_tested(
    service_settings: Callable[..., Any], new_topic: Callable[..., str], tmp_path: Path,
    workers: list[WorkerProcess],
) -> None:
    root = tmp_path / "images"
    root.mkdir()
    photos = photo_bytes(3)
    for i, (_, data) in enumerate(photos):
        (root / f"p{i}.png").write_bytes(data)
    settings = service_settings(
        topics={"images": new_topic(1, "img"), "verdicts": new_topic(1, "verdicts"),
                "alerts": new_topic(1, "alerts"), "dead_letters": new_topic(1, "dlq")},
        milvus={"uri": str(tmp_path / "milvus.db")},
        model={"spec": "opennsfw"},
        policy={"topic": f"policies-{uuid.uuid4().hex[:10]}", "shadow_topic": new_topic(1, "shadow")},
        fetch={"file_root": str(root)},
        batch={"max_size": 8, "max_wait_s": 0.3},
        web={"host": "127.0.0.1", "port": services.free_port()},
    )
    doc = tmp_path / "policies.yaml"
    _publish_document(settings, doc, _document("v1", "lenient"))
    worker = WorkerProcess(settings).start()
    workers.append(worker)
    t = settings.topics
    sent: list[str] = []

    def upload(n: int, photo: int, tenant: str, surface: str | None = None) -> tuple[bytes, bytes]:
        event = ImageEvent(event_id=f"e{n}", content_id=f"c{n}", tenant=tenant, surface=surface,
                           image_ref=(root / f"p{photo}.png").as_uri())
        sent.append(event.content_id)
        return event.content_id.encode(), event.model_dump_json().encode()

    with OutputReader(settings.kafka, verdicts=t.verdicts, alerts=t.alerts, dead_letters=t.dead_letters) as out:
        def verdicts(*ns: int) -> list[Any]:
            ids = [f"c{n}" for n in ns]
            outputs = out.poll_until(lambda o: {v.content_id for v in o.verdicts} >= set(ids)
                                     or not worker.running, 120.0, 0.5)
            found = {v.content_id: v for v in outputs.verdicts}
            assert set(ids) <= set(found), worker.log_tail()
            return [found[i] for i in ids]

        # published together (one batch, as a rule): three policies decide
        publish_raw(settings.kafka, t.images, [upload(0, 0, "acme"), upload(1, 1, "kids"),
                                               upload(2, 2, "dating", "profile"), upload(3, 2, "dating", "chat")])
        acme, kids, profile, chat = verdicts(0, 1, 2, 3)
        assert [(v.policy, v.action, v.label, v.policy_version) for v in (acme, kids, profile, chat)] == [
            ("lenient", "block" if acme.categories["sexual"] >= 1.0 else "allow", acme.label, "v1"),
            ("strict", "block", "unsafe", "v1"), ("strict", "block", "unsafe", "v1"),
            ("lenient", "allow", "safe", "v1")]
        assert acme.label == "safe" and set(acme.categories) == {"sexual"}
        assert (profile.surface, chat.surface) == ("profile", "chat")
        # the shadow judged the lenient verdicts as 'review' and changed nothing but its counts and its topic
        assert metric(settings, "vitguard_policy_shadow_decisions_total", policy="lenient", shadow="watch",
                      action="allow", shadow_action="review") >= 2
        shadows = [Verdict.model_validate_json(r.value or b"")
                   for r in read_to_end(settings.kafka, settings.policy.shadow_topic)]
        assert sorted((v.content_id, v.policy, v.action, v.label) for v in shadows) == [
            ("c0", "watch", "review", "unsafe"), ("c3", "watch", "review", "unsafe")]
        assert {v.scores == w.scores for v in shadows for w in (acme, chat) if v.content_id == w.content_id} == {True}
        # the same bytes for a strict tenant: a verdict-cache hit, judged again under the tenant's policy
        publish_raw(settings.kafka, t.images, [upload(4, 0, "kids")])
        [again] = verdicts(4)
        assert (again.from_cache, again.policy, again.action, again.label) == (True, "strict", "block", "unsafe")

        # a new document while the worker runs: the default becomes strict
        _publish_document(settings, doc, _document("v2", "strict", shadow=False))
        deadline = time.monotonic() + 30
        while metric(settings, "vitguard_policy_version", version="v2") != 1 and time.monotonic() < deadline:
            time.sleep(0.25)
        publish_raw(settings.kafka, t.images, [upload(5, 1, "acme")])
        [changed] = verdicts(5)
        assert (changed.policy, changed.policy_version, changed.action) == ("strict", "v2", "block")

        # a bad document in the middle of a stream of uploads: refused whole, v2 stays, nothing is lost
        stream = [upload(n, n % 3, "acme") for n in range(6, 26)]
        publish_raw(settings.kafka, t.images, stream[:10])
        bad = doc.with_name("bad.yaml")
        bad.write_text(_document("v3", "nobody"))  # the CLI refuses it: write it to the topic as a hostile
        refused = CliRunner().invoke(main, ["policy", "publish", str(bad), "--topic", settings.policy.topic,
                                            "--bootstrap-servers", settings.kafka.bootstrap_servers])
        assert refused.exit_code == 2 and "default_policy names policy 'nobody'" in refused.output
        publish_raw(settings.kafka, settings.policy.topic, [(b"document", bad.read_bytes()),
                                                           (b"document", b"\xff\xfe not yaml"),
                                                           (b"stray-key", b"{}")])
        publish_raw(settings.kafka, t.images, stream[10:])
        late = verdicts(*range(6, 26))
        assert {(v.policy, v.policy_version, v.action) for v in late} == {("strict", "v2", "block")}
        deadline = time.monotonic() + 15
        while (metric(settings, "vitguard_policy_documents_total", outcome="refused") < 2
               and time.monotonic() < deadline):
            time.sleep(0.25)
        assert metric(settings, "vitguard_policy_documents_total", outcome="refused") == 2
        assert metric(settings, "vitguard_policy_version", version="v2") == 1 and worker.running
        status, body = post(settings, "/classify?policy=lenient", (root / "p1.png").read_bytes(), "image/png")
        assert status == 200 and (body["policy"], body["action"]) == ("lenient", "allow"), body
        status, body = post(settings, "/classify?policy=nobody", (root / "p1.png").read_bytes(), "image/png")
        assert (status, body["reason"]) == (400, "schema_violation") and "no such policy" in body["message"]
        status, body = post(settings, "/classify?tenant=a%20b", (root / "p1.png").read_bytes(), "image/png")
        assert (status, body["reason"]) == (400, "schema_violation")
        written = out.outputs.verdicts
    assert worker.terminate() == 0, worker.log_tail()

    # the back-test: v1-lenient-for-everyone against what was decided
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text("version: cand\ndefault_policy: lenient\n"
                         "policies: {lenient: {rules: {sexual: [{threshold: 1.0, action: block}]}}}\n")
    result = CliRunner().invoke(main, ["policy", "test", str(candidate), "--topic", t.verdicts, "--json",
                                       "--bootstrap-servers", settings.kafka.bootstrap_servers])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    blocked = [v for v in written if v.action == "block"]
    assert report["read"] == len(written) == len(sent)
    assert report["changed"] == len(blocked) > 20
    assert report["actions"] == {"block->allow": len(blocked)}
    assert report["by_tenant"] == {tenant: sum(1 for v in blocked if v.tenant == tenant)
                                   for tenant in {v.tenant for v in blocked}}
    assert len(report["examples"]["block->allow"]) == 5
