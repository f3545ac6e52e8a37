"""Who may change banks over HTTP (the views themselves run against a real worker in
tests/integration/test_banks_worker.py)."""

from __future__ import annotations

import pytest

from vitguard.consumers.api_keys import ApiKeys
from vitguard.consumers.banks_view import _may_change
from vitguard.consumers.http_gate import http_failure


def test_bank_changes_need_keys_configured_and_an_unbound_key() -> None:
    with pytest.raises(PermissionError) as none_configured:
        _may_change(ApiKeys([], rate=1.0), None)
    assert http_failure(none_configured.value)[::2] == ("keys_required", 403)
    keys = ApiKeys(["admin"], rate=1.0, tenant_keys=["acme=k"])
    with pytest.raises(PermissionError) as bound:
        _may_change(keys, "acme")
    assert http_failure(bound.value)[::2] == ("forbidden_tenant", 403)
    _may_change(keys, None)  # an unbound key may
