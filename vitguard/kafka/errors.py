"""Reading Kafka client errors by code, and mapping them to vitguard's errors and failure policy."""

from __future__ import annotations

from typing import Literal

from confluent_kafka import KafkaError, KafkaException

from vitguard.errors import ServiceUnavailableError
from vitguard.kafka.config import KAFKA_LOGGER

__all__ = [
    "FATAL_PUBLISH_CODES",
    "MISSING_TOPIC_CODES",
    "REJECTED_PUBLISH_CODES",
    "PublishFailure",
    "classify_publish_error",
    "kafka_error",
    "kafka_reason",
    "raise_if_fatal",
]

PublishFailure = Literal["transient", "rejected", "fatal"]
"""What a failed publish of one message means: retry it, replace it (it can never be accepted), or stop."""

MISSING_TOPIC_CODES = (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)
"""Error codes that mean "this topic (or partition) does not exist"."""


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The :class:`KafkaError` a confluent-kafka exception carries, if any."""
    arg = exc.args[0] if exc.args else None
    return arg if isinstance(arg, KafkaError) else None


def kafka_reason(exc: BaseException) -> str:
    """``NAME: text`` of the carried :class:`KafkaError`, else the exception's text."""
    err = kafka_error(exc)
    return f"{err.name()}: {err.str()}" if err is not None else str(exc) or type(exc).__name__


def raise_if_fatal(err: KafkaError, topic: str) -> None:
    """For an error a consumer's ``poll`` returned: raise when reading cannot go on, log and go on otherwise.

    Raises:
        ServiceUnavailableError: a fatal error, or the topic/partition does not exist.
    """
    if err.fatal() or err.code() in MISSING_TOPIC_CODES:
        raise ServiceUnavailableError(f"reading {topic!r} failed: {err.str()}")
    KAFKA_LOGGER.warning("reading %s: %s (retrying)", topic, err.str())


REJECTED_PUBLISH_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_TIMESTAMP,
    }
)
"""The broker (or the client, before sending) will never accept *this message*: retrying cannot help."""

FATAL_PUBLISH_CODES = frozenset(
    {
        *MISSING_TOPIC_CODES,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.UNSUPPORTED_SASL_MECHANISM,
        KafkaError.ILLEGAL_SASL_STATE,
        KafkaError._AUTHENTICATION,
        KafkaError._INVALID_ARG,
        KafkaError._FATAL,
    }
)
"""No message to this topic can be published with this configuration (missing topic, no permission)."""


def classify_publish_error(exc: BaseException) -> PublishFailure:
    """Classify one message's failed publish, from either client, by Kafka error code.

    confluent-kafka reports a :class:`KafkaException` carrying a :class:`KafkaError` (broker codes are
    Kafka's protocol codes, local ones negative); aiokafka raises ``aiokafka.errors.KafkaError``
    subclasses with the protocol code as ``errno`` and a ``retriable`` flag. Codes in
    :data:`REJECTED_PUBLISH_CODES` are ``"rejected"``, codes in :data:`FATAL_PUBLISH_CODES` (and
    librdkafka's fatal errors) ``"fatal"``; every other Kafka error, timeouts included, is
    ``"transient"``. An exception from neither client is classified by its ``__cause__`` (Faust raises
    ``ProducerSendError`` from aiokafka's error, a local ``MessageSizeTooLargeError`` included); with none,
    it is a bug: ``"fatal"``.
    """
    if isinstance(exc, KafkaException):
        err = kafka_error(exc)
        if err is None:
            return "fatal"
        return _by_code(err.code(), fatal=err.fatal())
    errno = getattr(exc, "errno", None)
    if type(exc).__module__.startswith("aiokafka"):
        if isinstance(errno, int) and errno > 0:
            return _by_code(errno, fatal=False)
        return "transient"  # local aiokafka errors: connection, timeout, not ready
    if isinstance(exc, TimeoutError | BufferError):
        return "transient"
    cause = exc.__cause__
    if cause is not None and cause is not exc:  # Faust wraps the client's error (ProducerSendError ... from exc)
        return classify_publish_error(cause)
    return "fatal"


def _by_code(code: int, *, fatal: bool) -> PublishFailure:
    if code in REJECTED_PUBLISH_CODES:
        return "rejected"
    if fatal or code in FATAL_PUBLISH_CODES:
        return "fatal"
    return "transient"
