"""Fixtures of the tests that run a real worker process against the failure model (failure model, broker faults)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vitguard.testing import services


@pytest.fixture
def worker_settings(request: pytest.FixtureRequest, service_settings: Callable[..., Any],
                    new_topic: Callable[..., str], tmp_path: Path) -> Callable[..., Any]:
    """Settings for one worker run: fresh topics and consumer group, a private Milvus Lite file, open_nsfw;
    ``make(section={...})`` overrides fields of a section. The shutdown timeout is the test module's
    ``SHUTDOWN_TIMEOUT_S`` (its assertions on stopping times use the same number)."""
    shutdown_timeout_s = request.module.SHUTDOWN_TIMEOUT_S

    def make(**overrides: dict[str, Any]) -> Any:
        sections: dict[str, dict[str, Any]] = {
            "topics": {"images": new_topic(1, "img"), "verdicts": new_topic(1, "verdicts"),
                       "alerts": new_topic(1, "alerts"), "dead_letters": new_topic(1, "dlq")},
            "milvus": {"uri": str(tmp_path / "milvus.db"), "retry_backoff_s": 0.2, "retry_backoff_max_s": 1.0},
            "model": {"spec": "opennsfw"},
            "fetch": {"file_root": str(tmp_path / "images")},
            "batch": {"max_size": 8},
            "kafka": {"session_timeout_s": 6.0},
            "web": {"host": "127.0.0.1", "port": services.free_port()},
            "worker": {"shutdown_timeout_s": shutdown_timeout_s},
        }
        for section, values in overrides.items():
            sections[section] = {**sections.get(section, {}), **values}
        return service_settings(**sections)

    return make
