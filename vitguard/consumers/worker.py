"""Running the Faust app as a worker process: model first, topics, then Faust's worker, with a bounded stop.

Exit codes: 0 after a clean stop (SIGTERM/SIGINT; at once while the model loads, within
:data:`JOINING_STOP_S` when the stop comes before the group join, with nothing taken); 1 after a fatal error
(the reason is the last critical log line); 143 when a stop did not finish within
``VITGUARD_WORKER_SHUTDOWN_TIMEOUT_S`` and the watchdog ended the process. In every case, events that were not
answered stay uncommitted and are redelivered.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from vitguard.logging import logging_config
from vitguard.settings import Settings

__all__ = ["EXIT_FATAL", "EXIT_FORCED", "run_worker"]

_log = logging.getLogger(__name__)

EXIT_FATAL = 1
EXIT_FORCED = 143
JOINING_STOP_S = 3.0
"""How long a stop may take before the worker has joined its group: nothing has been taken, so nothing can be
lost, and aiokafka's stop would otherwise wait for the join to finish (the group's rebalance timeout)."""


def _worker_class() -> type:
    from faust.worker import Worker

    class VitguardWorker(Worker):  # type: ignore[misc]
        """Faust's worker with a shutdown deadline and a fatal-error exit code."""

        def __init__(self, *args: Any, shutdown_timeout_s: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.shutdown_timeout_s = shutdown_timeout_s
            self.exit_code = 0
            self._watchdog: threading.Timer | None = None
            self.on_stopping: Callable[[], None] | None = None
            """Called once when the stop begins, before Faust stops its services (the runner refuses
            ``POST /classify`` from then on: the web server's stop waits for its handlers)."""
            self.joined: Callable[[], bool] = lambda: True
            """Whether the consumer has had its partitions: a stop before that has nothing to finish."""

        def arm_watchdog(self, why: str) -> None:
            """From now on the process ends within the shutdown timeout, whatever is stuck."""
            if self._watchdog is not None:
                return
            if self.on_stopping is not None:  # on the loop, ahead of the shutdown it schedules
                self.loop.call_soon_threadsafe(self.on_stopping)
            deadline = self.shutdown_timeout_s
            joining = not self.exit_code and not self.joined()
            if joining:
                deadline = min(deadline, JOINING_STOP_S)

            def expire() -> None:
                if joining:
                    _log.warning("stopped (%s) while joining the consumer group; nothing was taken", why)
                    logging.shutdown()
                    os._exit(0)
                _log.critical("shutdown (%s) did not finish within %.0fs; exiting now, in-flight work uncommitted",
                              why, deadline)
                logging.shutdown()
                os._exit(self.exit_code or EXIT_FORCED)

            self._watchdog = threading.Timer(deadline, expire)
            self._watchdog.daemon = True
            self._watchdog.start()

        def _on_sigterm(self) -> None:
            self.arm_watchdog("SIGTERM")
            super()._on_sigterm()

        def _on_sigint(self) -> None:
            self.arm_watchdog("SIGINT")
            super()._on_sigint()

        def fatal(self, exc: BaseException) -> None:
            self.exit_code = EXIT_FATAL
            self.arm_watchdog("fatal error")
            self.loop.call_soon_threadsafe(self._schedule_shutdown, signal.SIGTERM)

        def execute_from_commandline(self) -> NoReturn:
            try:
                super().execute_from_commandline()
            except SystemExit:
                if self.exit_code:
                    sys.exit(self.exit_code)
                raise
            sys.exit(self.exit_code)  # pragma: no cover - the parent always raises SystemExit

    return VitguardWorker


def _stopped_while_starting(signum: int, frame: Any) -> NoReturn:
    """SIGTERM or SIGINT before Faust's worker has installed its own handlers (loading the model, checking the
    topics): nothing has been taken, so the stop is clean, not a death by signal (exit code -15 / 143).

    Exits at once rather than raising SystemExit: raised from wherever the signal lands, it could be caught and
    dropped by the code running then (the topics check's client, the app build), and the worker went on starting.
    """
    _log.warning("stopped (%s) while starting; nothing was taken", signal.Signals(signum).name)
    logging.shutdown()  # flush the log handlers: os._exit runs no clean-up
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_worker(settings: Settings, *, create_topics: bool = True) -> None:
    """Load the model, make sure the topics exist, and run the worker until a signal or a fatal error.

    Raises:
        ModelLoadError: the model cannot be loaded (before anything connects to Kafka).
        ConfigError: the policy does not fit the model's classes.
        ServiceUnavailableError: the brokers do not answer when topics are checked.
    """
    from vitguard.consumers.app import create_app
    from vitguard.consumers.topics import ensure_topics
    from vitguard.logging import configure_logging
    from vitguard.model import load_classifier

    for stop in (signal.SIGTERM, signal.SIGINT):  # until Faust's worker installs its own (it replaces these)
        signal.signal(stop, _stopped_while_starting)
    configure_logging(settings.log)
    classifier = load_classifier(settings.model)
    if create_topics:
        extra = [settings.topics.review_requests] if settings.review.enabled else []
        ensure_topics(settings.kafka, settings.topics, extra=extra + [t for t in [settings.policy.shadow_topic] if t])
    app = create_app(settings, classifier=classifier)
    _log.info(
        "worker starting: group %s, input %s, batches up to %d, %d in flight at most, web %s",
        settings.kafka.consumer_group, settings.topics.images, settings.batch.max_size,
        settings.worker.max_in_flight, f"{settings.web.host}:{settings.web.port}" if settings.web.enabled else "off",
    )
    worker = _worker_class()(
        app,
        loglevel=settings.log.level,
        logging_config=logging_config(settings.log),
        redirect_stdouts=False,
        quiet=True,
        shutdown_timeout_s=settings.worker.shutdown_timeout_s,
    )
    app.vitguard.health.add_fatal_hook(worker.fatal)
    worker.on_stopping = app.vitguard.runner.refuse_requests
    worker.joined = lambda: app.vitguard.health.joined_at is not None
    worker.execute_from_commandline()
