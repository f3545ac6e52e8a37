"""Running the Faust app as a worker process: model first, topics, then Faust's worker with signals.

Faust's worker installs SIGTERM/SIGINT handlers that stop the app: the agent is cancelled, the in-flight
batch is abandoned without being committed (see :func:`vitguard.consumers.app.abandon`) and offsets of
finished batches are committed on the way out.
"""

from __future__ import annotations

import logging

from vitguard.logging import logging_config
from vitguard.settings import Settings

__all__ = ["run_worker"]

_log = logging.getLogger(__name__)


def run_worker(settings: Settings, *, create_topics: bool = True) -> None:
    """Load the model, make sure the topics exist, and run the worker until a signal stops it.

    Raises:
        ModelLoadError: the model cannot be loaded (before anything connects to Kafka).
        ConfigError: the policy does not fit the model's classes.
        ServiceUnavailableError: the brokers do not answer when topics are checked.
    """
    from faust.worker import Worker

    from vitguard.consumers.app import create_app
    from vitguard.consumers.topics import ensure_topics
    from vitguard.logging import configure_logging
    from vitguard.model import load_classifier

    configure_logging(settings.log)
    classifier = load_classifier(settings.model)
    if create_topics:
        ensure_topics(settings.kafka, settings.topics)
    app = create_app(settings, classifier=classifier)
    _log.info(
        "worker starting: group %s, input %s, batches of %d within %.2fs, web %s",
        settings.kafka.consumer_group, settings.topics.images, settings.batch.max_size, settings.batch.max_wait_s,
        f"{settings.web.host}:{settings.web.port}" if settings.web.enabled else "off",
    )
    worker = Worker(
        app,
        loglevel=settings.log.level,
        logging_config=logging_config(settings.log),
        redirect_stdouts=False,
        quiet=True,
    )
    worker.execute_from_commandline()
