"""Similarity search and clusters on a real worker (Milvus Lite, which only the worker's process may open):
``POST /search`` from a stored item and from an image, ``GET /clusters``, their refusals, the commands through
the worker (``--worker``), and, once the worker has stopped, the commands opening the same Lite file
themselves. The policy calls every image unsafe, so the sample photos and their copies form clusters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_pipeline_worker import ALL_UNSAFE, pipeline_settings, post, publish, reader, wait_answered
from vitguard.demo.samples import make_sample_set
from vitguard.testing.worker import WorkerProcess, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

__all__ = ["pipeline_settings"]  # the fixture, shared with the worker tests


def cli(settings: Any, *args: str, command: str = "search", sub: str | None = None) -> subprocess.CompletedProcess[str]:
    words = [command, *([sub] if sub else [])]
    return subprocess.run([sys.executable, "-m", "vitguard", *words, *args], capture_output=True, text=True,
                          env={**os.environ, **settings_env(settings)}, timeout=120, check=False)


def get(web: str, target: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET from the worker's web server: (status, JSON body)."""
    try:
        call = urllib.request.Request(web + target, headers=headers or {})  # noqa: S310 - our own worker
        with urllib.request.urlopen(call, timeout=30) as reply:  # noqa: S310 - our own worker
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_search_and_clusters_while_the_worker_runs_and_after(
    pipeline_settings: Callable[..., Any], tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    settings = pipeline_settings(policy=ALL_UNSAFE)
    samples = make_sample_set(tmp_path / "images", photos=4, copies=3, burst=0, bad=False)
    publish(settings, samples.events)
    by_kind = {kind: [e.content_id for e in samples.events if e.kind == kind]
               for kind in ("photo", "near-duplicate", "exact-reupload")}
    family = set(by_kind["near-duplicate"])  # copies of photo-0
    worker = WorkerProcess(settings).start()
    workers.append(worker)
    with reader(settings) as out:
        wait_answered(out, samples.distinct_events, worker)
        by_id = post(settings, "/search", json.dumps({"content_id": "photo-0", "k": 3}).encode(), "application/json")
        by_image = post(settings, "/search?k=3&tenant=demo", samples.flagged_files[-1].read_bytes(), "image/jpeg")
        other_tenant = post(settings, "/search", b'{"content_id": "photo-0", "tenant": "nobody"}', "application/json")
        safe_only = post(settings, "/search", b'{"content_id": "photo-0", "label": "safe"}', "application/json")
        reupload = post(settings, "/search", json.dumps({"content_id": by_kind["exact-reupload"][0]}).encode(),
                        "application/json")
        refusals = {
            "not stored": post(settings, "/search", b'{"content_id": "never-uploaded"}', "application/json"),
            "bad filter": post(settings, "/search", b'{"content_id": "photo-0", "k": 0}', "application/json"),
            "injection": post(settings, "/search", b'{"content_id": "photo-0", "tenant": "a\\" or tenant != \\""}',
                              "application/json"),
            "not an image": post(settings, "/search", b"plain text", "application/octet-stream"),
            "other body": post(settings, "/search", b"hello", "text/plain"),
            "GET": post(settings, "/search", None, "application/json", method="GET"),
        }
        via_cli = cli(settings, "--content-id", "photo-0", "-k", "3", "--json",
                      "--worker", f"http://127.0.0.1:{settings.web.port}")
        missing_cli = cli(settings, "--content-id", "never-uploaded",
                          "--worker", f"http://127.0.0.1:{settings.web.port}")
        web = f"http://127.0.0.1:{settings.web.port}"
        listing = get(web, "/clusters")
        scanned = get(web, "/clusters?source=store")
        of_tenant = get(web, "/clusters?tenant=demo")
        family_id = next(c["cluster_id"] for c in listing[1]["clusters"] if c["representatives"][0] == "photo-0")
        page = get(web, f"/clusters/{family_id}?limit=2")
        cluster_refusals = {"unknown": get(web, "/clusters/c-0000000000000000"), "bad id": get(web, "/clusters/a%20b"),
                            "bad limit": get(web, "/clusters?limit=0"),
                            "POST": post(settings, "/clusters", b"{}", "application/json")}
        clusters_cli = cli(settings, "--json", "--worker", web, command="clusters", sub="list")
    assert worker.terminate() == 0

    status, answer = by_id
    assert status == 200, answer
    ids = [r["content_id"] for r in answer["results"]]
    assert "photo-0" not in ids and set(ids) == family, ids  # its own copies are the nearest, itself left out
    sims = [r["similarity"] for r in answer["results"]]
    assert sims == sorted(sims, reverse=True) and sims[-1] > 0.8
    assert all(r["tenant"] == "demo" and r["label"] == "unsafe" and r["created_at"] for r in answer["results"]), answer

    status, image_answer = by_image
    assert status == 200, image_answer
    assert image_answer["verdict"]["label"] == "unsafe" and image_answer["content_id"] is None
    # the query image is itself stored (it was uploaded as a copy): it comes first, its family after
    assert {r["content_id"] for r in image_answer["results"]} <= family | {"photo-0"}
    assert image_answer["results"][0]["similarity"] == pytest.approx(1.0, abs=1e-3)

    assert other_tenant[0] == 200 and other_tenant[1]["results"] == []
    assert safe_only[0] == 200 and safe_only[1]["results"] == []  # every image here is unsafe
    assert reupload[0] == 200, reupload  # an exact re-upload (a verdict cache hit) is findable by its own id
    assert {r["content_id"] for r in reupload[1]["results"]} >= {"photo-1"}
    assert {name: (s, body["reason"]) for name, (s, body) in refusals.items()} == {
        "not stored": (404, "not_found"), "bad filter": (400, "schema_violation"),
        "injection": (400, "schema_violation"), "not an image": (400, "not_an_image"),
        "other body": (415, "unsupported_media_type"), "GET": (405, "method_not_allowed"),
    }

    # clusters: photo-0 and its three copies on one, photo-1 and its exact re-upload (a cache hit) on another
    status, clusters = listing
    assert status == 200 and not clusters["truncated"] and clusters["source"] == "rows", clusters
    sizes = sorted(c["size"] for c in clusters["clusters"])
    assert sizes == [1, 1, 2, 4], sizes
    family = next(c for c in clusters["clusters"] if c["cluster_id"] == family_id)
    assert family["growth"] == 4 and family["tenants"] == ["demo"] and len(family["representatives"]) == 3
    # issue 31: the clusters' own rows (Redis, kept by the alert stage) say what a scan of the store says
    assert scanned[0] == 200 and scanned[1]["source"] == "store", scanned

    def facts(listed: dict[str, Any]) -> set[tuple[Any, ...]]:
        return {(c["cluster_id"], c["size"], c["growth"], tuple(c["tenants"]), c["tenant_count"], c["first_seen"],
                 c["last_seen"], c["representatives"][0]) for c in listed["clusters"]}

    assert facts(clusters) == facts(scanned[1])
    assert of_tenant[0] == 200 and of_tenant[1]["source"] == "store"  # a row counts every tenant: never for one
    stored_family = next(c for c in scanned[1]["clusters"] if c["cluster_id"] == family_id)
    assert page[0] == 200 and page[1]["cluster"] == stored_family and page[1]["next_offset"] == 2
    assert [i["content_id"] for i in page[1]["items"]] == ["photo-0", by_kind["near-duplicate"][0]]
    assert {name: (s, body["reason"]) for name, (s, body) in cluster_refusals.items()} == {
        "unknown": (404, "not_found"), "bad id": (400, "schema_violation"), "bad limit": (400, "schema_violation"),
        "POST": (405, "method_not_allowed")}
    assert clusters_cli.returncode == 0, clusters_cli.stderr
    assert [(c["cluster_id"], c["size"]) for c in json.loads(clusters_cli.stdout)["clusters"]] == [
        (c["cluster_id"], c["size"]) for c in clusters["clusters"]]

    assert via_cli.returncode == 0, via_cli.stderr
    assert json.loads(via_cli.stdout)["results"] == answer["results"]
    assert missing_cli.returncode == 1 and missing_cli.stderr.count("\n") == 1
    assert "never-uploaded" in missing_cli.stderr

    # the worker has stopped: the command opens the Lite file itself (the model names the collection)
    direct = cli(settings, "--content-id", "photo-0", "-k", "3", "--json")
    assert direct.returncode == 0, direct.stderr
    assert [r["content_id"] for r in json.loads(direct.stdout)["results"]] == ids
    table = cli(settings, str(samples.flagged_files[0]), "-k", "2")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("# 2 item(s) in ") and "photo-0" in lines[2]

    shown = cli(settings, family_id, "--limit", "2", command="clusters", sub="show")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["items"] == page[1]["items"]


ALL = {"Authorization": "Bearer k-all"}


def test_a_confirmed_review_decision_hunts_the_safe_copies_through_the_worker(
    pipeline_settings: Callable[..., Any], tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    """The retro-hunt loop on a real worker: every photo is judged safe; a reviewer then confirms photo-0
    unsafe; the applier's audit record starts a hunt (``vitguard retro-hunt --follow --worker``), which finds the
    copies of photo-0 that were judged safe, through the worker's search (the worker holds the Lite file). The
    worker asks for API keys, some bound to a tenant: a bound key sees its tenant's items only."""
    import uuid

    from tests.review.review_values import decision
    from vitguard.review.topics import ensure_review_topics
    from vitguard.testing.worker import publish_raw

    tag = uuid.uuid4().hex[:8]
    settings = pipeline_settings(
        topics={"review_requests": f"rr-{tag}", "review_decisions": f"rd-{tag}", "review_audit": f"ra-{tag}",
                "verdict_corrections": f"vc-{tag}"},
        retro={"threshold": 0.8, "hunts_per_s": 50, "max_poll_interval_s": 6.0, "group_id": f"retro-{tag}"},
        web={"api_keys": ["k-all"], "tenant_api_keys": ["demo=k-demo", "other=k-other"]},
    )
    ensure_review_topics(settings.kafka, settings.topics, timeout_s=15)
    samples = make_sample_set(tmp_path / "images", photos=3, copies=3, burst=0, bad=False)
    publish(settings, samples.events)
    copies = {e.content_id for e in samples.events if e.kind == "near-duplicate"}
    worker = WorkerProcess(settings).start()
    workers.append(worker)
    web = f"http://127.0.0.1:{settings.web.port}"
    with reader(settings) as out:
        outputs = wait_answered(out, samples.distinct_events, worker)
        assert {v.label for v in outputs.verdicts} == {"safe"}
        collection = outputs.verdicts[0].collection
        near_query = json.dumps({"content_id": "photo-0", "label": "safe", "min_similarity": 0.8}).encode()
        status, near = post(settings, "/search", near_query, "application/json", headers=ALL)
        assert status == 200, near
        # keys bound to a tenant: the demo key sees the same; another tenant's key can neither search from a demo
        # item (not told apart from a missing one) nor name the demo tenant; no key at all is 401
        bound = {
            "demo": post(settings, "/search", near_query, "application/json", headers={"X-API-Key": "k-demo"}),
            "other": post(settings, "/search", near_query, "application/json", headers={"X-API-Key": "k-other"}),
            "other naming demo": post(settings, "/search", b'{"content_id": "photo-1", "tenant": "demo"}',
                                      "application/json", headers={"X-API-Key": "k-other"}),
            "clusters naming demo": get(web, "/clusters?tenant=demo", {"X-API-Key": "k-other"}),
            "no key": post(settings, "/search", near_query, "application/json"),
        }
        expected = {r["content_id"] for r in near["results"]}
        assert expected and expected <= copies, expected  # what the hunt must find: photo-0's close copies

        confirm = decision("photo-0", "confirm_unsafe", collection=collection, tenant="demo")
        publish_raw(settings.kafka, settings.topics.review_decisions,
                    [(confirm.decision_id.encode(), confirm.model_dump_json().encode())])
        applied = cli(settings, "apply", "--once", "--no-milvus", command="review")  # Lite: the worker holds it
        assert applied.returncode == 0, applied.stderr
        hunted = cli(settings, "--follow", "--worker", web, "--api-key", "k-all", "--timeout", "15",
                     command="retro-hunt")
        assert hunted.returncode == 0, hunted.stderr
        found = out.poll_until(lambda o: len(o.retro_matches) >= len(expected), 30).retro_matches
    assert worker.terminate() == 0

    assert bound["demo"] == (200, near)
    assert {name: (status, body["reason"]) for name, (status, body) in bound.items() if name != "demo"} == {
        "other": (404, "not_found"), "other naming demo": (403, "forbidden_tenant"),
        "clusters naming demo": (403, "forbidden_tenant"), "no key": (401, "unauthorized")}
    assert {m.content_id for m in found} == expected, found
    assert all(m.trigger.kind == "review_confirmed" and m.trigger.trigger_id == confirm.decision_id
               and m.trigger.content_id == "photo-0" and m.collection == collection and m.similarity >= 0.8
               for m in found), found
    assert f"{len(expected)} retro match(es) published" in hunted.stderr, hunted.stderr
