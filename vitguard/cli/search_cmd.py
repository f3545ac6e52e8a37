"""``vitguard search``: stored items similar to a stored item or to an image.

Two ways to reach the store: ``--worker URL`` asks a running worker (``POST /search``: the way to search a
Milvus Lite file while its worker runs, since Lite serves one process); otherwise the command opens
``VITGUARD_MILVUS_URI`` itself (a Milvus server, or a Lite file no worker holds), loading the model for a
search by image and to name the collection unless ``--collection`` says it.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from vitguard.cli._worker_http import NotFoundOnWorkerError, call_worker

__all__ = ["register"]

_EXIT_NOT_FOUND = 1


@click.command("search")
@click.argument("image", required=False, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--content-id", default=None, help="Search from this stored item instead of an image.")
@click.option("-k", "k", default=10, type=click.IntRange(1, 100), help="How many items to answer at most.")
@click.option("--min-similarity", default=0.0, type=click.FloatRange(-1.0, 1.0), help="Cosine similarity floor.")
@click.option("--label", multiple=True, type=click.Choice(["safe", "unsafe"]), help="Only items so labelled.")
@click.option("--tenant", multiple=True, help="Only items of this tenant (repeat for several).")
@click.option("--cluster", multiple=True, help="Only items on this cluster (repeat for several).")
@click.option("--since", default=None, help="Only items uploaded at or after (ISO 8601 with offset).")
@click.option("--until", default=None, help="Only items uploaded before (ISO 8601 with offset).")
@click.option("--worker", default=None, help="Ask this worker (http://HOST:PORT) instead of opening Milvus.")
@click.option("--api-key", envvar="VITGUARD_API_KEY", default=None, help="The worker's API key, if it asks for one.")
@click.option("--collection", default=None, help="The Milvus collection (default: the configured model's).")
@click.option("--json", "as_json", is_flag=True, help="The whole answer as JSON instead of a table.")
def search(image: Path | None, content_id: str | None, k: int, min_similarity: float, label: tuple[str, ...],
           tenant: tuple[str, ...], cluster: tuple[str, ...], since: str | None, until: str | None,
           worker: str | None, api_key: str | None, collection: str | None, as_json: bool) -> None:
    """Stored items similar to IMAGE (a file) or to --content-id, most similar first."""
    from vitguard.search import NotStoredError, SearchRequest

    if (image is None) == (content_id is None):
        raise click.UsageError("give an IMAGE file or --content-id (one of them)")
    filters: dict[str, Any] = {"k": k, "min_similarity": min_similarity, "label": list(label),
                               "tenant": list(tenant), "cluster": list(cluster), "since": since, "until": until}
    request = SearchRequest.parse({"content_id": content_id, **filters})
    try:
        if worker is not None:
            answer = _ask_worker(worker, api_key, image, request)
        else:
            answer = _search_store(image, request, collection)
    except (NotStoredError, NotFoundOnWorkerError) as exc:
        click.echo(f"vitguard: error: {exc}", err=True)
        sys.exit(_EXIT_NOT_FOUND)
    _print(answer, as_json)


def _search_store(image: Path | None, request: Any, collection: str | None) -> dict[str, Any]:
    """Search ``VITGUARD_MILVUS_URI`` from this process."""
    from vitguard.cli._store import opened_store
    from vitguard.search import SearchAnswer, search_by_content_id, search_by_vector
    from vitguard.settings import load_settings

    settings = load_settings()
    classifier = None
    if image is not None:
        from vitguard.model import load_classifier

        classifier = load_classifier(settings.model)
    with opened_store(settings, collection, classifier) as (index, name):
        if classifier is None or image is None:
            return search_by_content_id(index, name, request).model_dump(mode="json")
        prediction = classifier.predict(classifier.prepare(image.read_bytes())[None])[0]
        results = search_by_vector(index, name, prediction.embedding, request)
        return SearchAnswer(collection=name, results=results).model_dump(mode="json")


def _ask_worker(url: str, api_key: str | None, image: Path | None, request: Any) -> dict[str, Any]:
    """``POST /search`` on a running worker."""
    import urllib.parse

    fields = request.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    if image is None:
        return call_worker(url, "/search", api_key, json.dumps(fields).encode(), "application/json")
    query = urllib.parse.urlencode(fields, doseq=True)
    return call_worker(url, f"/search?{query}", api_key, image.read_bytes(), "application/octet-stream")


def _print(answer: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    verdict = answer.get("verdict")
    if verdict:
        click.echo(f"# query image: {verdict['label']} ({verdict['unsafe_score']:.3f})")
    click.echo(f"# {len(answer['results'])} item(s) in {answer['collection']}")
    click.echo(f"{'similarity':>10} {'label':<7} {'unsafe':>6} {'tenant':<12} {'cluster':<20} {'uploaded':<20} "
               "content id")
    for r in answer["results"]:
        uploaded = datetime.fromisoformat(r["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{r['similarity']:>10.4f} {r['label']:<7} {r['unsafe_score']:>6.3f} {r['tenant']:<12.12} "
                   f"{r['cluster_id'] or '-':<20.20} {uploaded:<20} {r['content_id']}")


def register(group: click.Group) -> None:
    group.add_command(search)
