"""What the worker knows about its own health, and the pure rules that turn it into /livez and /readyz.

The failure policies (:mod:`vitguard.pipeline.runtime.failure`) and the runner write into one :class:`HealthState`;
the web views read it. Liveness answers "should the orchestrator restart me": the agent is dead, the worker
hit a fatal error, or it is wedged: stream events are waiting and none has been answered for
``stall_timeout_s``, or ``POST /classify`` requests are waiting and none has been answered for that long.
The two have separate clocks, so requests answered during a wedged stream do not hide it. A stream held on
purpose (a dependency down, its failure policy retrying it) is not wedged: restarting would only add a model
load and a rebalance to the outage; it stays live while the policy's attempts go on, and is wedged once
they stop for ``stall_timeout_s`` too. Readiness answers "can I do my job right now": the model is loaded, the
agent runs, the broker and Milvus answer, and outputs are being published. Redis never gates readiness (it
is an optimisation) but is reported.

A fatal error has one owner, :meth:`HealthState.declare_fatal`: the first one is recorded (the probes read it),
counted, logged once, and handed to every fatal hook (the worker process's hook asks it to exit with code 1);
a later one is logged and changes nothing, so a second fatal can never cancel the first one's exit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vitguard import metrics

__all__ = ["FatalHook", "HealthState", "Probe", "liveness", "readiness"]

_log = logging.getLogger(__name__)

FatalHook = Callable[[BaseException], None]
"""Called once with the worker's first fatal error."""


@dataclass
class HealthState:
    """Mutable, single-threaded (event loop) record of the worker's condition. Times are monotonic seconds."""

    model_loaded: bool = False
    agent_running: bool = False
    started_at: float = field(default_factory=time.monotonic)
    joined_at: float | None = None
    """When the consumer first got its partitions (an empty assignment counts: the group has settled)."""
    fatal: str | None = None
    in_flight: int = 0
    """Stream events taken and not yet answered."""
    last_progress: float = field(default_factory=time.monotonic)
    """When a stream event was last answered (a verdict or a dead letter), or arrived at an idle worker."""
    requests_in_flight: int = 0
    """``POST /classify`` requests decoded and not yet answered."""
    last_request_progress: float = field(default_factory=time.monotonic)
    last_retry: float | None = None
    """When a failure policy last attempted a failing dependency (Milvus, publishing) again."""
    milvus_failing_since: float | None = None
    milvus_error: str | None = None
    publish_failing_since: float | None = None
    publish_error: str | None = None
    redis_degraded: bool = False
    """The last Redis call failed (or Redis did not answer at start-up); cleared only by a call that succeeds."""
    redis_error: str | None = None
    agent_restarts: int = 0
    fatal_error: BaseException | None = field(default=None, repr=False)
    """The first fatal error itself (``fatal`` is its text)."""
    _fatal_hooks: list[FatalHook] = field(default_factory=list, repr=False)

    def declare_fatal(self, exc: BaseException) -> bool:
        """The worker cannot go on. The first call records ``exc``, logs it and calls every fatal hook once
        (the worker process exits non-zero); later calls are logged and change nothing. True for the first."""
        if exc is self.fatal_error:  # the same error coming back (a future failed with it): already declared
            return False
        if self.fatal_error is not None:
            _log.warning("another fatal error while stopping (the first one stands): %s: %s",
                         type(exc).__name__, exc)
            return False
        self.fatal_error = exc
        self.fatal = f"{type(exc).__name__}: {exc}"[:500]
        metrics.FATAL_ERRORS.labels(type(exc).__name__).inc()
        _log.critical("worker stopping after a fatal error: %s", self.fatal)
        for hook in list(self._fatal_hooks):
            self._call(hook, exc)
        return True

    def add_fatal_hook(self, hook: FatalHook) -> None:
        """Call ``hook`` with the first fatal error: when it happens, or now if it happened already."""
        self._fatal_hooks.append(hook)
        if self.fatal_error is not None:
            self._call(hook, self.fatal_error)

    @staticmethod
    def _call(hook: FatalHook, exc: BaseException) -> None:
        try:
            hook(exc)
        except Exception:  # one broken hook must not keep the others (the exit) from running
            _log.exception("a fatal-error hook failed")

    def progressed(self, *, request: bool = False) -> None:
        """A stream event (or, with ``request``, a /classify request) was answered."""
        if request:
            self.last_request_progress = time.monotonic()
        else:
            self.last_progress = time.monotonic()

    def waiting(self, stream: int, requests: int) -> None:
        """Set the counts in flight. A clock starts again when work arrives at an idle worker: an event
        taken after an hour without traffic has not been waiting for an hour."""
        now = time.monotonic()
        if stream and not self.in_flight:
            self.last_progress = now
        if requests and not self.requests_in_flight:
            self.last_request_progress = now
        self.in_flight, self.requests_in_flight = stream, requests

    def retried(self) -> None:
        """A failure policy attempted its failing dependency again: the stream is held, not wedged."""
        self.last_retry = time.monotonic()

    def holding(self) -> str | None:
        """The dependency the stream is held for, if any."""
        if self.milvus_failing_since is not None:
            return f"milvus: {self.milvus_error}"
        if self.publish_failing_since is not None:
            return f"publishing: {self.publish_error}"
        return None


@dataclass(frozen=True)
class Probe:
    ok: bool
    reasons: tuple[str, ...]
    detail: dict[str, Any]


def liveness(state: HealthState, now: float, stall_timeout_s: float) -> Probe:
    """False when the process should be restarted: fatal error, agent dead, or wedged (see the module)."""
    reasons: list[str] = []
    if state.fatal:
        reasons.append(f"fatal: {state.fatal}")
    if state.model_loaded and not state.agent_running and state.agent_restarts > 0:
        reasons.append("agent is not running")
    idle_s = now - state.last_progress
    holding = state.holding()
    retrying = holding is not None and state.last_retry is not None and now - state.last_retry <= stall_timeout_s
    if state.in_flight > 0 and idle_s > stall_timeout_s and not retrying:
        why = f" (held for {holding}, no attempt for {now - (state.last_retry or 0):.0f}s)" if holding else ""
        reasons.append(f"wedged: {state.in_flight} event(s) waiting, none answered for {idle_s:.0f}s{why}")
    request_idle_s = now - state.last_request_progress
    if state.requests_in_flight > 0 and request_idle_s > stall_timeout_s:
        reasons.append(f"wedged: {state.requests_in_flight} /classify request(s) waiting, none answered for "
                       f"{request_idle_s:.0f}s")
    return Probe(
        not reasons,
        tuple(reasons),
        {
            "in_flight": state.in_flight,
            "seconds_since_progress": round(idle_s, 1),
            "requests_in_flight": state.requests_in_flight,
            "holding": holding if state.in_flight > 0 else None,
            "agent_running": state.agent_running,
        },
    )


def readiness(
    state: HealthState,
    now: float,
    *,
    broker_reachable: bool,
    milvus_reachable: bool,
    publish_stuck_s: float,
) -> Probe:
    """False while the worker cannot moderate: the reasons say which dependency or part is missing."""
    reasons: list[str] = []
    if state.fatal:
        reasons.append(f"fatal: {state.fatal}")
    if not state.model_loaded:
        reasons.append("model not loaded")
    if not state.agent_running:
        reasons.append("agent not running")
    if state.joined_at is None:
        reasons.append(f"joining the consumer group for {max(0.0, now - state.started_at):.0f}s")
    if not broker_reachable:
        reasons.append("broker unreachable")
    if state.milvus_failing_since is not None:
        reasons.append(f"milvus failing for {now - state.milvus_failing_since:.0f}s: {state.milvus_error}")
    elif not milvus_reachable:
        reasons.append("milvus unreachable")
    if state.publish_failing_since is not None and now - state.publish_failing_since >= publish_stuck_s:
        reasons.append(f"publishing stuck for {now - state.publish_failing_since:.0f}s: {state.publish_error}")
    redis_degraded = state.redis_degraded
    return Probe(
        not reasons,
        tuple(reasons),
        {
            "broker_reachable": broker_reachable,
            "milvus_reachable": milvus_reachable and state.milvus_failing_since is None,
            "joined": state.joined_at is not None,
            "redis": "degraded" if redis_degraded else "ok",
            "redis_error": state.redis_error if redis_degraded else None,
            "in_flight": state.in_flight,
        },
    )
