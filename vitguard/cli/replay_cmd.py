"""``vitguard replay``: re-read a topic range and re-publish, re-drive or back-test it, resumably."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from vitguard.cli._kafka_common import kafka_options, load_cli_settings
from vitguard.errors import REASON_CODES

if TYPE_CHECKING:
    from vitguard.producers.replay import RecordHandler, ReplayMode, ReplayReport
    from vitguard.producers.replay_state import ReplayState, ReplayStateStore
    from vitguard.settings import Settings

__all__ = ["register"]

_MAX_PARTITION_BARS = 16


@click.command("replay")
@click.option("--topic", default=None,
              help="Topic to read [default: VITGUARD_TOPIC_IMAGES; with --from-dead-letters: the DLQ topic].")
@click.option("--from-dead-letters", is_flag=True, help="Re-submit the original payloads of dead letters.")
@click.option("--reason", "reasons", multiple=True, type=click.Choice(REASON_CODES),
              help="With --from-dead-letters: only dead letters with this reason (repeatable).")
@click.option("--from-timestamp", metavar="TS", default=None,
              help="Start at the first record at or after TS (ISO 8601 with timezone, epoch ms, or -30m/-2h/-1d).")
@click.option("--from-offset", "from_offsets", multiple=True, metavar="[P:]N",
              help="Start at offset N (of partition P; repeatable). Default: the oldest record.")
@click.option("--to-timestamp", metavar="TS", default=None, help="Stop before the first record at or after TS.")
@click.option("--to-offset", "to_offsets", multiple=True, metavar="[P:]N",
              help="Stop before offset N (of partition P). Default: each partition's end when the replay started.")
@click.option("--partition", "partitions", multiple=True, type=click.IntRange(min=0),
              help="Replay only this partition (repeatable). Default: all.")
@click.option("--to-topic", default=None, help="Publish here instead of VITGUARD_TOPIC_IMAGES.")
@click.option("--model", "model_spec", default=None, metavar="SPEC",
              help="Moderate in-process with this model spec instead of re-publishing (needs --verdict-topic).")
@click.option("--verdict-topic", default=None, help="With --model: where the back-test verdicts go.")
@click.option("--alert-topic", default=None, help="With --model: publish alerts here (default: count, don't publish).")
@click.option("--dead-letter-topic", default=None,
              help="With --model: publish dead letters here (default: count, don't publish).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="With --model: events per forward pass [default: VITGUARD_BATCH_MAX_SIZE].")
@click.option("--replay-id", default=None, help="Name of this replay; give an earlier one to resume it. Default: new.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("~/.vitguard/replays"), help="Where replay progress is checkpointed.")
@click.option("--max-messages", type=click.IntRange(min=1), default=None,
              help="Stop after this many records in this run (resume later with the same --replay-id).")
@click.option("--progress/--no-progress", default=True, help="Progress bars on stderr.")
@kafka_options
def replay(
    topic: str | None,
    from_dead_letters: bool,
    reasons: tuple[str, ...],
    from_timestamp: str | None,
    from_offsets: tuple[str, ...],
    to_timestamp: str | None,
    to_offsets: tuple[str, ...],
    partitions: tuple[int, ...],
    to_topic: str | None,
    model_spec: str | None,
    verdict_topic: str | None,
    alert_topic: str | None,
    dead_letter_topic: str | None,
    batch_size: int | None,
    replay_id: str | None,
    state_dir: Path,
    max_messages: int | None,
    progress: bool,
    bootstrap_servers: str | None,
    connect_timeout: float,
) -> None:
    """Replay a range of the input topic (or the dead-letter topic).

    \b
    Three ways to use the records:
      default              re-publish the events with replay_id set (to the input topic or --to-topic)
      --from-dead-letters  re-submit dead letters' original bytes (filter with --reason)
      --model SPEC         moderate them here with another model; verdicts go to --verdict-topic only

    The range is [start, end) per partition. Progress is checkpointed under --replay-id in --state-dir;
    run the same command with the same --replay-id to continue an interrupted replay.
    """
    from vitguard.producers.replay import ReplayRequest, new_replay_id, open_replay
    from vitguard.producers.replay_state import ReplayStateStore, check_replay_id

    if reasons and not from_dead_letters:
        raise click.UsageError("--reason needs --from-dead-letters")
    backtest = _BacktestOptions(model_spec, verdict_topic, alert_topic, dead_letter_topic, batch_size)
    backtest.check(from_dead_letters=from_dead_letters, to_topic=to_topic)

    settings = load_cli_settings(bootstrap_servers)
    route = _route(settings, topic, to_topic, from_dead_letters=from_dead_letters, process=bool(model_spec))
    request = ReplayRequest(
        topic=route.source, mode=route.mode, from_timestamp=from_timestamp, from_offsets=from_offsets,
        to_timestamp=to_timestamp, to_offsets=to_offsets, partitions=tuple(sorted(set(partitions))),
        target_topic=route.target, reasons=tuple(sorted(set(reasons))), model_spec=model_spec,
        verdict_topic=verdict_topic,
    )
    rid = check_replay_id(replay_id) if replay_id else new_replay_id()
    if verdict_topic is not None:
        from vitguard.producers.replay_process import check_backtest_topics

        check_backtest_topics(settings, verdict_topic, alert_topic, dead_letter_topic)
    store = ReplayStateStore(state_dir.expanduser())
    _check_topics_exist(settings, (route.target, verdict_topic, alert_topic, dead_letter_topic), connect_timeout)
    state, resumed = open_replay(settings.kafka, request, rid, store, timeout_s=connect_timeout)
    remaining = sum(p.end - p.next for p in state.partitions.values())
    verb = "resuming" if resumed else "starting"
    click.echo(f"replay {rid}: {verb}, {remaining} record(s) left in {len(state.partitions)} partition(s) of "
               f"{route.source} (state: {store.path(rid)})", err=True)

    if route.mode == "process":
        destination = _backtest_destination(settings, rid, backtest)
    else:
        destination = _publish_destination(settings, rid, route, reasons)
    report = _run(settings, state, store, destination, rid, max_messages=max_messages, progress=progress)
    _print_report(report, destination, rid)


@dataclass(frozen=True)
class _BacktestOptions:
    """``--model`` and the options that only go with it."""

    model_spec: str | None
    verdict_topic: str | None
    alert_topic: str | None
    dead_letter_topic: str | None
    batch_size: int | None

    def check(self, *, from_dead_letters: bool, to_topic: str | None) -> None:
        """Raises click.UsageError where these options and the others do not go together."""
        if (self.model_spec is None) != (self.verdict_topic is None):
            raise click.UsageError("--model and --verdict-topic go together")
        if self.model_spec is not None and (from_dead_letters or to_topic):
            raise click.UsageError(
                "--model processes events here; it does not go with --from-dead-letters or --to-topic")
        if self.model_spec is None and (self.alert_topic or self.dead_letter_topic or self.batch_size):
            raise click.UsageError("--alert-topic, --dead-letter-topic and --batch-size need --model")


@dataclass(frozen=True)
class _Route:
    """Where a replay reads, and what it does with the records."""

    mode: ReplayMode
    source: str
    target: str | None
    """Where republished or re-driven records go; None when processing (verdicts go to --verdict-topic)."""


def _route(settings: Settings, topic: str | None, to_topic: str | None, *, from_dead_letters: bool,
           process: bool) -> _Route:
    """The mode and topics, defaults filled in from the settings."""
    mode: ReplayMode = "process" if process else "redrive" if from_dead_letters else "republish"
    source = topic or (settings.topics.dead_letters if from_dead_letters else settings.topics.images)
    target = None if process else (to_topic or settings.topics.images)
    return _Route(mode, source, target)


def _check_topics_exist(settings: Settings, topics: tuple[str | None, ...], timeout_s: float) -> None:
    """Fail on a missing output topic before the replay starts (and before a new replay's state is saved)."""
    from vitguard.kafka.offsets import topic_partitions

    for out in topics:
        if out is not None:
            topic_partitions(settings.kafka, out, timeout_s)


@dataclass(frozen=True)
class _Destination:
    """What takes the replayed records, how to release it once the run ends, and the counters it fills as it
    goes (added to the report)."""

    handler: RecordHandler
    close: Callable[[], None]
    counters: tuple[Mapping[str, int], ...] = ()


def _backtest_destination(settings: Settings, rid: str, options: _BacktestOptions) -> _Destination:
    """Moderate the records here with the --model; verdicts (and, where named, alerts and dead letters) go to
    the back-test topics, the rest is counted."""
    from vitguard.producers.replay_process import ProcessHandler, build_backtest_processor

    assert options.model_spec is not None and options.verdict_topic is not None  # noqa: S101 - checked above
    processor, sink = build_backtest_processor(
        settings, replay_id=rid, model_spec=options.model_spec, verdict_topic=options.verdict_topic,
        alert_topic=options.alert_topic, dead_letter_topic=options.dead_letter_topic,
    )
    handler = ProcessHandler(processor, rid, options.batch_size or settings.batch.max_size)

    def close() -> None:
        try:
            handler.close()
        finally:
            sink.inner.shutdown()  # the processor leaves its sink to the caller

    return _Destination(handler, close, (handler.counts, sink.dropped))


def _publish_destination(settings: Settings, rid: str, route: _Route, reasons: tuple[str, ...]) -> _Destination:
    """Re-publish the events, or re-drive the dead letters, to the route's target topic."""
    from vitguard.producers.publisher import UploadEventPublisher
    from vitguard.producers.replay import RedriveHandler, RepublishHandler

    assert route.target is not None  # noqa: S101 - set for these modes
    publisher = UploadEventPublisher(settings.kafka, route.target)
    handler: RecordHandler
    if route.mode == "redrive":
        handler = RedriveHandler(publisher, rid, reasons)
    else:
        handler = RepublishHandler(publisher, rid)
    return _Destination(handler, publisher.close)


def _run(settings: Settings, state: ReplayState, store: ReplayStateStore, destination: _Destination, rid: str, *,
         max_messages: int | None, progress: bool) -> ReplayReport:
    """Run the replay with progress bars, then release the destination. Ctrl-C or SIGTERM stops it with its
    progress saved: a one-line hint on how to resume and exit code 130."""
    from vitguard.producers.replay import run_replay

    bars = _Bars(state, enabled=progress)
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM checkpoints like Ctrl-C
    try:
        return run_replay(settings.kafka, state, store, destination.handler, max_messages=max_messages,
                          on_progress=bars.update)
    except KeyboardInterrupt:
        bars.close()
        click.echo(f"replay {rid}: interrupted; progress saved, resume with --replay-id {rid}", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        bars.close()
        destination.close()


def _print_report(report: ReplayReport, destination: _Destination, rid: str) -> None:
    """The per-partition table on stdout (with the destination's counters), and a resume hint if it stopped early."""
    for counter in destination.counters:
        report.extra.update(dict(counter))
    for line in report.lines():
        click.echo(line)
    if not report.complete:
        click.echo(f"replay {rid}: stopped early; run again with --replay-id {rid} to continue", err=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class _Bars:
    """One tqdm bar per partition (or one for all when there are many), fed by ``run_replay``."""

    def __init__(self, state: Any, *, enabled: bool) -> None:
        from tqdm import tqdm

        self._bars: dict[int, Any] = {}
        self._total: Any = None
        parts = sorted(state.partitions.items())
        if not enabled:
            return
        if len(parts) <= _MAX_PARTITION_BARS:
            for i, (p, prog) in enumerate(parts):
                self._bars[p] = tqdm(total=prog.total, initial=prog.next - prog.start, desc=f"partition {p}",
                                     unit="rec", position=i, file=sys.stderr, dynamic_ncols=True, leave=True)
        else:
            self._total = tqdm(total=sum(p.total for _, p in parts), initial=sum(p.next - p.start for _, p in parts),
                               desc=f"{len(parts)} partitions", unit="rec", file=sys.stderr, dynamic_ncols=True)

    def update(self, partition: int, progress: Any) -> None:
        if partition in self._bars:
            self._bars[partition].update(1)
        elif self._total is not None:
            self._total.update(1)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        if self._total is not None:
            self._total.close()
        self._bars, self._total = {}, None


def register(group: click.Group) -> None:
    group.add_command(replay)
