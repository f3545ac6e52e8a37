"""The demo's building blocks: settings survive the trip through environment variables; the sample set."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from vitguard.demo.run import simulated_threshold
from vitguard.demo.samples import make_sample_set
from vitguard.schemas.events import ImageEvent
from vitguard.settings import load_settings
from vitguard.testing.worker import settings_env


def test_settings_round_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(
        kafka={"bootstrap_servers": "h1:9092,h2:9092", "security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
               "sasl_username": "u", "sasl_password": SecretStr("p@ss")},
        policy={"unsafe_labels": ("porn", "hentai"), "unsafe_threshold": 0.3},
        fetch={"allowed_networks": ("10.0.0.0/8",), "file_root": "/data"},
        batch={"max_wait_s": 0.05, "max_size": 7},
        web={"enabled": False},
    )
    env = settings_env(settings)
    assert env["VITGUARD_POLICY_UNSAFE_LABELS"] == '["porn", "hentai"]'
    assert env["VITGUARD_KAFKA_SASL_PASSWORD"] == "p@ss"  # noqa: S105 - a test value
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert load_settings() == settings


def test_sample_set_covers_photos_copies_and_bad_events(tmp_path: Path) -> None:
    samples = make_sample_set(tmp_path, photos=3, copies=2, burst=3)
    kinds = [e.kind for e in samples.events]
    assert kinds.count("photo") == 3 and kinds.count("near-duplicate") == 2 and kinds.count("burst-copy") == 3
    assert kinds.count("redelivery") == 1 and kinds.count("exact-reupload") == 1
    assert {k for k in kinds if k.startswith("bad:")} >= {"bad:invalid_json", "bad:schema_violation",
                                                         "bad:fetch_blocked", "bad:not_an_image"}
    assert samples.distinct_events == len(samples.events) - 1
    assert len(samples.flagged_files) == 1 + 2 + 3 and all(p.exists() for p in samples.flagged_files)
    copies = {p.read_bytes() for p in samples.flagged_files}
    assert len(copies) == len(samples.flagged_files)  # every copy has its own bytes (no cache hit)
    photo = next(e for e in samples.events if e.kind == "photo")
    assert ImageEvent.model_validate_json(photo.value).image_ref.startswith("file://")


def test_simulated_threshold_separates_the_flagged_family() -> None:
    assert simulated_threshold([0.03, 0.02], [0.01, 0.005]) == pytest.approx(0.015)
    assert simulated_threshold([0.03, 0.009], [0.01]) is None
