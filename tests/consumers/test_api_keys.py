"""API keys for POST /classify: constant-time match over every key, and a token bucket per key (pure)."""

from __future__ import annotations

from tests.harness.clock import ManualClock
from vitguard.consumers.api_keys import ApiKeys


def test_no_keys_configured_lets_everyone_in() -> None:
    keys = ApiKeys([], rate=1.0)
    assert not keys.enabled and keys.check({}) is None


def test_a_request_needs_one_of_the_keys_by_bearer_or_header() -> None:
    keys = ApiKeys(["old-key", "new-key"], rate=100.0)
    assert keys.check({"Authorization": "Bearer new-key"}) is None
    assert keys.check({"Authorization": "bearer  old-key "}) is None
    assert keys.check({"X-API-Key": "old-key"}) is None
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic old-key"},
                    {"X-API-Key": "old-ke"}, {"X-API-Key": "old-key-and-more"}, {"Authorization": "Bearer "}):
        refusal = keys.check(headers)
        assert refusal is not None and refusal.status == 401 and refusal.reason == "unauthorized", headers
        assert refusal.headers["WWW-Authenticate"].startswith("Bearer")


def test_each_key_has_its_own_rate() -> None:
    clock = ManualClock()
    keys = ApiKeys(["a", "b"], rate=2.0, clock=clock)
    a, b = {"X-API-Key": "a"}, {"X-API-Key": "b"}
    assert keys.check(a) is None and keys.check(a) is None  # a burst of `rate`
    refusal = keys.check(a)
    assert refusal is not None and refusal.status == 429 and refusal.headers["Retry-After"] == "1"
    assert keys.check(b) is None  # another key is not held by a's
    clock.now += 0.5  # one token back
    assert keys.check(a) is None
    assert keys.check(a) is not None
    clock.now += 10  # refilled, but never beyond the burst
    assert [keys.check(a) is None for _ in range(3)] == [True, True, False]


def test_a_rate_under_one_a_second_still_lets_one_request_through() -> None:
    clock = ManualClock()
    keys = ApiKeys(["a"], rate=0.1, clock=clock)
    assert keys.check({"X-API-Key": "a"}) is None
    refusal = keys.check({"X-API-Key": "a"})
    assert refusal is not None and refusal.headers["Retry-After"] == "10"
    clock.now += 10
    assert keys.check({"X-API-Key": "a"}) is None


def test_a_tenant_bound_key_is_admitted_with_its_tenant() -> None:
    from vitguard.consumers.api_keys import Admitted

    keys = ApiKeys(["all-key", "shared"], rate=100.0, tenant_keys=["acme=acme-key", "b2=bee=key", "acme=shared"])
    assert keys.admit({"X-API-Key": "all-key"}) == Admitted(None)
    assert keys.admit({"Authorization": "Bearer acme-key"}) == Admitted("acme")
    assert keys.admit({"X-API-Key": "bee=key"}) == Admitted("b2")  # split at the first "=": keys may hold one
    assert keys.admit({"X-API-Key": "shared"}) == Admitted("acme")  # listed both ways: the narrower grant
    refused = keys.admit({"X-API-Key": "acme"})
    assert not isinstance(refused, Admitted) and refused.status == 401
    assert ApiKeys([], rate=1.0, tenant_keys=["t=k"]).enabled  # bound keys alone turn keys on


def test_a_bound_caller_sees_its_tenant_only() -> None:
    import pytest

    from vitguard.consumers.api_keys import ForbiddenTenantError, scope_tenants
    from vitguard.consumers.http_gate import http_failure

    assert scope_tenants([], None) == [] and scope_tenants(["a", "b"], None) == ["a", "b"]
    assert scope_tenants([], "acme") == ["acme"] and scope_tenants(["acme"], "acme") == ["acme"]
    with pytest.raises(ForbiddenTenantError, match="bound to tenant 'acme'") as caught:
        scope_tenants(["acme", "other"], "acme")
    assert http_failure(caught.value)[::2] == ("forbidden_tenant", 403)
