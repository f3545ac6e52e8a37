"""What the worker knows about its own health, and the pure rules that turn it into /livez and /readyz.

The failure policies (:mod:`vitguard.pipeline.failure`) and the runner write into one :class:`HealthState`;
the web views read it. Liveness answers "should the orchestrator restart me": the agent is dead, the worker
hit a fatal error, or work is waiting and nothing has been answered for ``stall_timeout_s`` (wedged).
Readiness answers "can I do my job right now": the model is loaded, the agent runs, the broker and Milvus
answer, and outputs are being published. Redis never gates readiness (it is an optimisation) but is reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HealthState", "Probe", "liveness", "readiness"]


@dataclass
class HealthState:
    """Mutable, single-threaded (event loop) record of the worker's condition. Times are monotonic seconds."""

    model_loaded: bool = False
    agent_running: bool = False
    fatal: str | None = None
    in_flight: int = 0
    last_progress: float = field(default_factory=time.monotonic)
    milvus_failing_since: float | None = None
    milvus_error: str | None = None
    publish_failing_since: float | None = None
    publish_error: str | None = None
    redis_degraded_until: float = 0.0
    redis_error: str | None = None
    agent_restarts: int = 0

    def progressed(self) -> None:
        self.last_progress = time.monotonic()


@dataclass(frozen=True)
class Probe:
    ok: bool
    reasons: tuple[str, ...]
    detail: dict[str, Any]


def liveness(state: HealthState, now: float, stall_timeout_s: float) -> Probe:
    """False when the process should be restarted: fatal error, agent dead, or wedged."""
    reasons: list[str] = []
    if state.fatal:
        reasons.append(f"fatal: {state.fatal}")
    if state.model_loaded and not state.agent_running and state.agent_restarts > 0:
        reasons.append("agent is not running")
    idle_s = now - state.last_progress
    if state.in_flight > 0 and idle_s > stall_timeout_s:
        reasons.append(f"wedged: {state.in_flight} event(s) waiting, none answered for {idle_s:.0f}s")
    return Probe(
        not reasons,
        tuple(reasons),
        {
            "in_flight": state.in_flight,
            "seconds_since_progress": round(idle_s, 1),
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
    if not broker_reachable:
        reasons.append("broker unreachable")
    if state.milvus_failing_since is not None:
        reasons.append(f"milvus failing for {now - state.milvus_failing_since:.0f}s: {state.milvus_error}")
    elif not milvus_reachable:
        reasons.append("milvus unreachable")
    if state.publish_failing_since is not None and now - state.publish_failing_since >= publish_stuck_s:
        reasons.append(f"publishing stuck for {now - state.publish_failing_since:.0f}s: {state.publish_error}")
    redis_degraded = now < state.redis_degraded_until
    return Probe(
        not reasons,
        tuple(reasons),
        {
            "broker_reachable": broker_reachable,
            "milvus_reachable": milvus_reachable and state.milvus_failing_since is None,
            "redis": "degraded" if redis_degraded else "ok",
            "redis_error": state.redis_error if redis_degraded else None,
            "in_flight": state.in_flight,
        },
    )
