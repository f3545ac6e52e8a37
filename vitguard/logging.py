"""Structured logs: human-readable lines by default, one JSON object per line with ``json_format``.

Fields passed as ``extra={...}`` to a log call (e.g. ``batch_size``, ``reason``) become JSON keys, so a
log pipeline can filter on them without parsing messages. :func:`logging_config` returns a
``logging.config.dictConfig`` dict because Faust's worker installs logging from such a dict; the CLI
commands that do not run Faust call :func:`configure_logging`.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

from vitguard.settings import LogSettings

__all__ = ["JsonFormatter", "configure_logging", "logging_config"]

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged as a field.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys() | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, the ``extra`` fields, and exc when present."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def logging_config(settings: LogSettings) -> dict[str, Any]:
    """A ``dictConfig`` that logs to stderr at ``settings.level``, as JSON when ``settings.json_format``."""
    formatter: dict[str, Any] = (
        {"()": JsonFormatter} if settings.json_format else {"format": _TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"vitguard": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "vitguard", "stream": "ext://sys.stderr"}
        },
        "root": {"level": settings.level, "handlers": ["stderr"]},
        "loggers": {
            # chatty third-party loggers stay at WARNING unless vitguard itself is debugging
            name: {"level": "WARNING" if settings.level != "DEBUG" else "DEBUG"}
            for name in ("aiokafka", "kafka", "faust", "mode", "aiohttp.access", "pymilvus", "faiss", "milvus_lite")
        }
        | {
            # Milvus Lite's embedded gRPC server logs every unimplemented RPC pymilvus probes as an ERROR
            "grpc._server": {"level": "CRITICAL"},
        },
    }


def configure_logging(settings: LogSettings) -> None:
    """Install :func:`logging_config` on the root logger (replacing earlier handlers)."""
    logging.config.dictConfig(logging_config(settings))
