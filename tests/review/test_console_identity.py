"""Reviewer identity (issue 29): per-reviewer logins stored hashed, tenant scopes, a login limiter with a
lockout that ends, and identity from an authenticating proxy's header. In-process console, fake producer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from review_values import request
from test_console_app import FakeProducer, _origin, _request_id

from vitguard.errors import ConfigError
from vitguard.review.console import STATE, build_console_app
from vitguard.review.identity import LoginLimiter, hash_password, load_reviewers, verify_password
from vitguard.review.queue import ReviewQueue, item_key
from vitguard.schemas.review import ReviewDecision
from vitguard.settings import load_settings

ALICE_PW = "alice-long-password"  # noqa: S105 - test credentials
BOB_PW = "bob-long-password"  # noqa: S105


def test_passwords_are_stored_hashed_and_checked() -> None:
    stored = hash_password(ALICE_PW)
    assert ALICE_PW not in stored and stored.startswith("scrypt$")
    assert verify_password(ALICE_PW, stored) and not verify_password(BOB_PW, stored)
    assert not verify_password(ALICE_PW, "garbage") and hash_password(ALICE_PW) != stored  # salted


def test_a_reviewers_file_is_checked_line_by_line(tmp_path: Path) -> None:
    good = tmp_path / "reviewers"
    good.write_text(f"# reviewers\nalice:{hash_password(ALICE_PW)}:t1, t2\nbob:{hash_password(BOB_PW)}\n")
    reviewers = load_reviewers(good)
    assert reviewers["alice"].tenants == frozenset({"t1", "t2"}) and reviewers["bob"].tenants is None
    for bad in ("alice:plaintext", f"bad name:{hash_password(ALICE_PW)}", "", "# only a comment"):
        path = tmp_path / "bad"
        path.write_text(bad + "\n")
        with pytest.raises(ConfigError) as exc:
            load_reviewers(path)
        assert "plaintext" not in str(exc.value)  # never echoes what could be a secret


def test_the_limiter_locks_out_after_failures_and_the_lockout_ends() -> None:
    now = [0.0]
    limiter = LoginLimiter(max_failures=3, lockout_s=10.0, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.retry_after("name:alice") == 0
        limiter.failed("name:alice")
    assert limiter.retry_after("name:alice") == 10.0
    now[0] = 10.5
    assert limiter.retry_after("name:alice") <= 0  # it ends: the real user is never locked out for good
    for _ in range(3):
        limiter.failed("name:alice")
    assert limiter.retry_after("name:alice") == 20.0  # a second lockout in a row lasts longer
    limiter.succeeded("name:alice")
    assert limiter.retry_after("name:alice") == 0


@pytest.fixture
async def scoped(tmp_path: Path) -> AsyncIterator[tuple[TestClient[Any, Any], ReviewQueue, FakeProducer]]:
    reviewers = tmp_path / "reviewers"
    reviewers.write_text(f"alice:{hash_password(ALICE_PW)}:t1\nbob:{hash_password(BOB_PW)}\n")
    settings = load_settings(review={"reviewers_file": str(reviewers)})
    queue = ReviewQueue()
    queue.add_request(request("t1-item", tenant="t1"))
    queue.add_request(request("t2-item", tenant="t2"))
    producer = FakeProducer()
    async with TestClient(TestServer(build_console_app(settings, producer=producer, feed=False,
                                                       queue=queue))) as client:
        yield client, queue, producer


async def _login(client: TestClient[Any, Any], name: str, password: str) -> Any:
    return await client.post("/login", data={"reviewer": name, "token": password}, headers=_origin(client),
                             allow_redirects=False)


async def _csrf(client: TestClient[Any, Any]) -> str:
    import re

    page = await (await client.get("/")).text()
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match
    return match.group(1)


async def test_each_reviewer_logs_in_as_themselves_and_sees_only_their_tenants(scoped: Any) -> None:
    client, queue, producer = scoped
    assert (await _login(client, "alice", BOB_PW)).status == 401  # another reviewer's password
    assert (await _login(client, "mallory", ALICE_PW)).status == 401
    assert (await _login(client, "alice", ALICE_PW)).status == 303
    page = await (await client.get("/")).text()
    assert "t1-item" in page and "t2-item" not in page  # scoped to t1
    csrf = await _csrf(client)
    form = {"key": item_key("t2-item"), "request_id": _request_id(queue, "t2-item"), "decision": "overturn_safe",
            "reason": "artistic", "csrf": csrf, "reviewer": "bob"}
    assert (await client.post("/decide", data=form, headers=_origin(client))).status == 404  # not her tenant
    assert (await client.get(f"/thumb/{item_key('t2-item')}")).status == 404
    ok = await client.post("/decide", data={**form, "key": item_key("t1-item"),
                                            "request_id": _request_id(queue, "t1-item")},
                           headers=_origin(client), allow_redirects=False)
    assert ok.status == 303
    (msg,) = producer.sent
    assert ReviewDecision.model_validate_json(msg.value).reviewer == "alice"  # the login, never a typed name


async def test_guessing_in_parallel_is_locked_out_and_the_real_user_gets_in_after(scoped: Any) -> None:
    """Issue 29: failed logins waited 0.5 s each but in parallel: 100 guesses in a second, no lockout."""
    client, _, _ = scoped
    client.server.app[STATE].limiter = LoginLimiter(max_failures=5, lockout_s=1.0)
    statuses = [r.status for r in await asyncio.gather(*(_login(client, "alice", f"guess-{i}") for i in range(30)))]
    assert statuses.count(401) <= 10 and statuses.count(429) >= 20, statuses  # checks stop at the lockout
    assert (await _login(client, "alice", ALICE_PW)).status == 429  # even the right password, while locked
    await asyncio.sleep(1.1)
    assert (await _login(client, "alice", ALICE_PW)).status == 303  # the lockout ended


async def test_behind_an_authenticating_proxy_the_header_is_the_reviewer() -> None:
    settings = load_settings(review={"identity_header": "X-Auth-Request-User"})
    queue = ReviewQueue()
    queue.add_request(request("item-1"))
    producer = FakeProducer()
    async with TestClient(TestServer(build_console_app(settings, producer=producer, feed=False,
                                                       queue=queue))) as client:
        assert (await client.get("/", allow_redirects=False)).status == 303  # no header: not logged in
        assert (await client.post("/login", data={"reviewer": "x", "token": "y"}, headers=_origin(client))
                ).status == 404
        who = {"X-Auth-Request-User": "carol@example.com"}
        page = await (await client.get("/", headers=who)).text()
        import re

        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        form = {"key": item_key("item-1"), "request_id": _request_id(queue, "item-1"), "decision": "overturn_safe",
                "reason": "artistic", "csrf": csrf}
        ok = await client.post("/decide", data=form, headers={**_origin(client), **who}, allow_redirects=False)
        assert ok.status == 303
        assert ReviewDecision.model_validate_json(producer.sent[0].value).reviewer == "carol@example.com"
        forged = await client.post("/decide", data=form, headers={**_origin(client),
                                                                   "X-Auth-Request-User": "dave"})
        assert forged.status == 403  # another identity has another CSRF token


async def test_a_scoped_reviewer_sees_the_depth_of_their_whole_queue(scoped: Any) -> None:
    """The page shows at most 200 items; the depth it states counts every pending item of the reviewer's
    tenants (it counted the shown ones only)."""
    client, queue, _ = scoped
    for i in range(205):
        queue.add_request(request(f"t1-more-{i}", tenant="t1"))
    assert (await _login(client, "alice", ALICE_PW)).status == 303
    page = await (await client.get("/")).text()
    assert "<title>vitguard review (206)</title>" in page and page.count('<article class="item"') == 200
