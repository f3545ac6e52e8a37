"""One Kafka connection config, for both client libraries vitguard uses.

librdkafka (confluent-kafka: admin, publisher, subscribers, replay, the pipeline's sink) and aiokafka
(Faust: the worker's consumer and producer) spell the same connection differently. Both spellings are
derived here from one :class:`~vitguard.settings.KafkaSettings`, so bootstrap servers, security protocol,
SASL credentials, CA bundle and client id can never disagree between the worker and the tools.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitguard.settings import KafkaSettings

__all__ = [
    "KAFKA_LOGGER",
    "faust_broker_kwargs",
    "faust_broker_url",
    "faust_credentials",
    "librdkafka_config",
]

KAFKA_LOGGER = logging.getLogger("vitguard.kafka")
"""librdkafka's own log lines go here instead of raw to stderr, so CLI errors stay one line."""
KAFKA_LOGGER.addHandler(logging.NullHandler())


def librdkafka_config(kafka: KafkaSettings, **extra: Any) -> dict[str, Any]:
    """librdkafka properties for any confluent-kafka client: connection, security, client id, our logger.

    Args:
        kafka: connection settings.
        extra: client-specific properties (``group.id``, ``acks`` ...); they win over the defaults.
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": kafka.client_id,
        "security.protocol": kafka.security_protocol,
        "logger": KAFKA_LOGGER,
    }
    if kafka.sasl_mechanism:
        conf["sasl.mechanism"] = kafka.sasl_mechanism
        conf["sasl.username"] = kafka.sasl_username
        conf["sasl.password"] = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
    if kafka.ssl_cafile:
        conf["ssl.ca.location"] = str(kafka.ssl_cafile)
    conf.update(extra)
    return conf


def faust_broker_url(bootstrap_servers: str, scheme: str = "kafka") -> str:
    """Faust's broker URL (``kafka://h1:9092;kafka://h2:9092``) from a comma-separated bootstrap list."""
    hosts = [h.strip() for h in bootstrap_servers.split(",") if h.strip()]
    if not hosts:
        raise ValueError("bootstrap_servers is empty: set VITGUARD_KAFKA_BOOTSTRAP_SERVERS to host:port[,host:port]")
    return ";".join(f"{scheme}://{h}" for h in hosts)


def faust_credentials(kafka: KafkaSettings) -> Any:
    """``faust.SASLCredentials`` / ``faust.SSLCredentials`` for the settings' protocol; None for PLAINTEXT.

    The SSL context trusts ``ssl_cafile`` when set, the system CAs otherwise (as librdkafka does).
    """
    if kafka.security_protocol == "PLAINTEXT":
        return None
    import ssl

    import faust

    ca = str(kafka.ssl_cafile) if kafka.ssl_cafile else None
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(ssl.create_default_context(cafile=ca))
    password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else ""
    ssl_context = ssl.create_default_context(cafile=ca) if kafka.security_protocol == "SASL_SSL" else None
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=password,
        ssl_context=ssl_context,
        mechanism=kafka.sasl_mechanism or "PLAIN",
    )


def faust_broker_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """The connection part of ``faust.App(...)``'s keyword arguments.

    ``broker`` (used by the producer), ``broker_consumer`` (the consumer, through
    :mod:`vitguard.kafka.faust.consumer` so that ``fetch_max_wait_ms`` is ours), client id and credentials.
    """
    from vitguard.kafka.faust.consumer import consumer_broker_url

    return {
        "broker": faust_broker_url(kafka.bootstrap_servers),
        "broker_consumer": consumer_broker_url(kafka.bootstrap_servers, kafka.fetch_max_wait_ms),
        "broker_client_id": kafka.client_id,
        "broker_credentials": faust_credentials(kafka),
    }
