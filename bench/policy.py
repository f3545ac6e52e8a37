"""What policies as data cost per event: parsing and compiling a document of N tenants (once per version), and
resolving an event's policy plus deciding on its scores (once per image, on the hot path). JSON on stdout.

Per size (tenants; every tenth with a surface route): parse+check+compile seconds, and per event the median and
p99 nanoseconds of ``book.resolve(tenant, surface).decide(scores)`` over events spread across the tenants (a
tenant with a route, one with a surface route, an unknown tenant), beside the built-in policy's ``decide`` and
the pre-policy ``vitguard.policy.decide`` on the same scores, so the added cost per image reads directly.

Run: ``.venv/bin/python bench/policy.py [--tenants 1000 100000] [--events 200000] [--out F]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness

from vitguard.policies.compiled import builtin_book, compile_document
from vitguard.policies.document import parse_document
from vitguard.policy import decide

LABELS = ("NSFW", "SFW")


def document(tenants: int) -> str:
    lines = ["version: bench", "categories: {sexual: [NSFW]}", "default_policy: standard", "policies:",
             "  standard: {rules: {sexual: [{threshold: 0.5, action: block}]}, review: {low: 0.35, high: 0.65}}",
             "  kids: {rules: {sexual: [{threshold: 0.3, action: block}, {threshold: 0.1, action: review}]}}",
             "  adult: {rules: {sexual: [{threshold: 0.8, action: age_gate}]}}", "tenants:"]
    names = ("standard", "kids", "adult")
    for i in range(tenants):
        if i % 10 == 0:
            lines.append(f"  t{i}: {{policy: {names[i % 3]}, surfaces: {{profile: kids}}}}")
        else:
            lines.append(f"  t{i}: {names[i % 3]}")
    return "\n".join(lines) + "\n"


def timed_ns(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Per call, in chunks of 1,000 calls (a single call is below the clock's resolution)."""
    out = []
    for _ in range(max(1, repeats // 1000)):
        started = time.perf_counter_ns()
        for _ in range(1000):
            fn()
        out.append((time.perf_counter_ns() - started) / 1000)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"p50_ns": round(statistics.median(samples)), "p99_ns": round(samples[int(0.99 * (len(samples) - 1))])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--write-document", type=Path, metavar="PATH",
                        help="only write the document of the first --tenants size here (for pipeline_throughput.py)")
    args = parser.parse_args()
    if args.write_document:
        args.write_document.write_text(document(args.tenants[0]))
        return 0
    rng = random.Random(7)
    scores = [{"NSFW": s, "SFW": 1 - s} for s in (rng.random() for _ in range(1024))]
    builtin = builtin_book(LABELS, ["NSFW"], 0.5).default
    it = iter(range(10**12))

    def old() -> Any:
        return decide(scores[next(it) & 1023], ("NSFW",), 0.5)

    def new_builtin() -> Any:
        return builtin.decide(scores[next(it) & 1023])

    result: dict[str, Any] = {
        "events": args.events,
        "decide_before_policies": summary(timed_ns(old, args.events)),
        "builtin_policy": summary(timed_ns(new_builtin, args.events)),
        "documents": [],
    }
    for n in args.tenants:
        text = document(n)
        started = time.perf_counter()
        book = compile_document(parse_document(text), LABELS, ["NSFW"])
        compile_s = time.perf_counter() - started
        events = [(f"t{rng.randrange(n)}", "profile" if i % 4 == 0 else None) for i in range(4096)]
        events += [("unknown-tenant", None)] * 512

        def per_event(book: Any = book, events: list[tuple[str, str | None]] = events) -> Any:
            i = next(it)
            tenant, surface = events[i % len(events)]
            return book.resolve(tenant, surface).decide(scores[i & 1023])

        result["documents"].append({"tenants": n, "document_bytes": len(text), "compile_s": round(compile_s, 3),
                                    "resolve_and_decide": summary(timed_ns(per_event, args.events))})
    harness.report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
