"""The configuration reference is generated from the settings classes and committed up to date; every variable
of every settings class fails, on a bad value, with one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitguard.errors import ConfigError
from vitguard.settings import _SECTIONS, _env_var, load_settings
from vitguard.settings_reference import DOC_PATH, reference_markdown

ROOT = Path(__file__).resolve().parents[1]

EVERY_VARIABLE = [(cls, name) for cls in _SECTIONS.values() for name in cls.model_fields]

BAD_VALUES = ("[", "{", "not-a-number", "-5", "1e400", "", "nan", "[1, 2", '{"a": 1}', "x" * 5000)


def test_the_committed_reference_is_the_generated_one() -> None:
    """Run ``vitguard config reference > docs/configuration.md`` after changing a setting."""
    assert (ROOT / DOC_PATH).read_text() == reference_markdown()


def test_the_reference_names_every_variable_once_and_descriptions_do_not_repeat_it() -> None:
    text = reference_markdown()
    for cls, name in EVERY_VARIABLE:
        var = _env_var(cls, name)
        assert text.count(f"`{var}`") == 1, var
        description = cls.model_fields[name].description or ""
        assert description.strip(), f"{var} has no description"
        assert "Env:" not in description and "Default " not in description, var  # stated once, generated


@pytest.mark.parametrize("cls, name", EVERY_VARIABLE, ids=[_env_var(c, n) for c, n in EVERY_VARIABLE])
def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> None:
    """A free-form string may accept every one of these values; no variable may fail any other way (a
    traceback, or a message about a field name the operator never wrote)."""
    var = _env_var(cls, name)
    for value in BAD_VALUES:
        monkeypatch.setenv(var, value)
        message = _refusal(value, var, monkeypatch)
        if message is not None:
            assert "\n" not in message and var in message, (value, message)


def _refusal(value: str, var: str, monkeypatch: pytest.MonkeyPatch) -> str | None:
    monkeypatch.setenv(var, value)
    try:
        load_settings()
    except ConfigError as exc:
        return str(exc)
    return None


@pytest.mark.slow  # loads the settings once for every variable
def test_the_sweep_reaches_refusals_of_every_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The values above are refused by numbers, booleans, choices, lists and patterns alike."""
    refused = set()
    for cls, name in EVERY_VARIABLE:
        var = _env_var(cls, name)
        messages = [_refusal(v, var, monkeypatch) for v in BAD_VALUES]
        monkeypatch.delenv(var)
        if any(m is not None and var in m for m in messages):
            refused.add(var)
    for var in ("VITGUARD_WORKER_MAX_IN_FLIGHT", "VITGUARD_WEB_ENABLED", "VITGUARD_LOG_LEVEL",
                "VITGUARD_POLICY_UNSAFE_LABELS", "VITGUARD_FETCH_ALLOWED_NETWORKS",
                "VITGUARD_MILVUS_COLLECTION_PREFIX"):
        assert var in refused
    assert len(refused) > len(EVERY_VARIABLE) // 2


def test_list_variables_take_json_or_comma_separated_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITGUARD_POLICY_UNSAFE_LABELS", "NSFW, porn")
    monkeypatch.setenv("VITGUARD_FETCH_ALLOWED_NETWORKS", "127.0.0.1/32")
    settings = load_settings()
    assert settings.policy.unsafe_labels == ("NSFW", "porn")
    assert settings.fetch.allowed_networks == ("127.0.0.1/32",)
    monkeypatch.setenv("VITGUARD_POLICY_UNSAFE_LABELS", '["a", "b"]')
    assert load_settings().policy.unsafe_labels == ("a", "b")
