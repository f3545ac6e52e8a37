"""Structured logging: JSON lines carry the message and the ``extra`` fields."""

from __future__ import annotations

import json
import logging

import pytest

from vitguard.logging import configure_logging, logging_config
from vitguard.settings import LogSettings


def test_json_lines_carry_extra_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(LogSettings(level="INFO", json_format=True))
    try:
        logging.getLogger("vitguard.test").warning("batch held: %s", "milvus down", extra={"store": "milvus"})
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("vitguard.test").exception("failed")
    finally:
        configure_logging(LogSettings())
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert lines[0]["msg"] == "batch held: milvus down" and lines[0]["store"] == "milvus"
    assert lines[0]["level"] == "WARNING" and lines[0]["logger"] == "vitguard.test"
    assert "ValueError: boom" in lines[1]["exc"]


def test_text_format_and_quiet_third_party_loggers() -> None:
    config = logging_config(LogSettings(level="INFO"))
    assert "format" in config["formatters"]["vitguard"]
    assert config["loggers"]["aiokafka"]["level"] == "WARNING"
    assert logging_config(LogSettings(level="DEBUG"))["loggers"]["aiokafka"]["level"] == "DEBUG"
