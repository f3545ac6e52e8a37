"""Settings: defaults, env vars, secrets, and one clear line for bad values."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from vitguard.errors import ConfigError
from vitguard.kafka.config import librdkafka_config
from vitguard.settings import KafkaSettings, Settings, load_settings


def test_defaults_load_without_environment() -> None:
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.topics.all() == ("image-events", "image-verdicts", "near-duplicate-alerts", "image-events-dlq")
    assert settings.model.spec == "auto"
    assert settings.policy.unsafe_labels == ("NSFW",)


def test_env_vars_use_one_prefix_per_concern(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITGUARD_KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("VITGUARD_BATCH_MAX_SIZE", "32")
    monkeypatch.setenv("VITGUARD_POLICY_UNSAFE_LABELS", '["NSFW", "gore"]')
    monkeypatch.setenv("VITGUARD_FETCH_ALLOWED_NETWORKS", '["10.1.0.0/16"]')
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.batch.max_size == 32
    assert settings.policy.unsafe_labels == ("NSFW", "gore")
    assert settings.fetch.allowed_networks == ("10.1.0.0/16",)


def test_overrides_beat_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITGUARD_BATCH_MAX_SIZE", "32")
    assert load_settings(batch={"max_size": 4}).batch.max_size == 4


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is an implementation detail
        settings.batch.max_size = 3  # type: ignore[misc]


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITGUARD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("VITGUARD_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("VITGUARD_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("VITGUARD_KAFKA_SASL_PASSWORD", "hunter2")
    kafka = load_settings().kafka
    assert isinstance(kafka.sasl_password, SecretStr)
    assert "hunter2" not in repr(kafka) and "hunter2" not in str(kafka.model_dump())
    assert librdkafka_config(kafka)["sasl.password"] == "hunter2"


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("VITGUARD_BATCH_MAX_SIZE", "0", "VITGUARD_BATCH_MAX_SIZE"),
        ("VITGUARD_BATCH_MAX_SIZE", "lots", "VITGUARD_BATCH_MAX_SIZE"),
        ("VITGUARD_POLICY_UNSAFE_THRESHOLD", "1.5", "VITGUARD_POLICY_UNSAFE_THRESHOLD"),
        ("VITGUARD_REDIS_URL", "http://localhost", "VITGUARD_REDIS_URL"),
        ("VITGUARD_FETCH_ALLOWED_NETWORKS", '["not-a-net"]', "VITGUARD_FETCH_ALLOWED_NETWORKS"),
        ("VITGUARD_MODEL_DEVICE", "tpu", "VITGUARD_MODEL_DEVICE"),
        ("VITGUARD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL", "SASL"),
    ],
)
def test_bad_settings_fail_with_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_override_section_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown settings section"):
        load_settings(kafak={"bootstrap_servers": "x"})


def test_kafka_config_without_sasl_has_no_credentials() -> None:
    conf = librdkafka_config(KafkaSettings(bootstrap_servers="b:9092"))
    assert conf["bootstrap.servers"] == "b:9092"
    assert "sasl.password" not in conf
