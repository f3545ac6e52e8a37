"""The console app against an in-process server: login, CSRF and origin checks, escaping, thumbnails."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image
from review_values import request

from vitguard.errors import ConfigError
from vitguard.review.console import COOKIE, build_console_app
from vitguard.review.queue import ReviewQueue, item_key
from vitguard.schemas.review import ReviewDecision
from vitguard.settings import load_settings

TOKEN = "s3cret-review-token"  # noqa: S105 - a test token
EVIL = '<script>alert("x")</script>'


class FakeMsg:
    def __init__(self, topic: str, key: bytes, value: bytes) -> None:
        self._t, self._k, self.value = topic, key, value

    def key(self) -> bytes:
        return self._k

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


class FakeProducer:
    """Acknowledges every message at once and keeps it (the console's publish seam)."""

    def __init__(self) -> None:
        self.sent: list[FakeMsg] = []

    def produce(self, topic: str, *, key: bytes, value: bytes, on_delivery: Any, **_: Any) -> None:
        msg = FakeMsg(topic, key, value)
        self.sent.append(msg)
        on_delivery(None, msg)

    def poll(self, _t: float) -> int:
        return 0

    def flush(self, _t: float = 0) -> int:
        return 0


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "img"
    root.mkdir()
    Image.new("RGB", (800, 600), (200, 30, 30)).save(root / "red.jpg")
    return root


@pytest.fixture
async def console(image_root: Path) -> AsyncIterator[tuple[TestClient[Any, Any], ReviewQueue, FakeProducer]]:
    settings = load_settings(review={"console_token": TOKEN}, fetch={"file_root": str(image_root)})
    queue = ReviewQueue()
    queue.add_request(request("item-1", image_ref=(image_root / "red.jpg").as_uri(),
                              metadata={"caption": EVIL, EVIL: "key too"}, appeal_note=EVIL, cluster_id="c-7"))
    queue.add_request(request("item-ssrf", image_ref="http://127.0.0.1:9/private.jpg"))
    producer = FakeProducer()
    app = build_console_app(settings, producer=producer, feed=False, queue=queue)
    async with TestClient(TestServer(app)) as client:
        yield client, queue, producer


def _origin(client: TestClient[Any, Any]) -> dict[str, str]:
    return {"Origin": str(client.make_url("")).rstrip("/")}


def _request_id(queue: ReviewQueue, content_id: str) -> str:
    item = queue.get(item_key(content_id))
    assert item is not None
    return item.request.request_id


async def _login(client: TestClient[Any, Any], reviewer: str = "alice") -> str:
    resp = await client.post("/login", data={"reviewer": reviewer, "token": TOKEN}, headers=_origin(client),
                             allow_redirects=False)
    assert resp.status == 303
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = await (await client.get("/")).text()
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match
    return match.group(1)


def test_no_token_no_console() -> None:
    with pytest.raises(ConfigError, match="VITGUARD_REVIEW_CONSOLE_TOKEN"):
        build_console_app(load_settings(), producer=FakeProducer(), feed=False)


async def test_everything_needs_a_login(console: Any) -> None:
    client, _, _ = console
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login"
    assert (await client.get(f"/thumb/{item_key('item-1')}")).status == 401
    assert (await client.post("/decide", data={"key": item_key("item-1"), "decision": "overturn_safe"},
                              headers=_origin(client))).status == 401
    bad = await client.post("/login", data={"reviewer": "alice", "token": "wrong"}, headers=_origin(client))
    assert bad.status == 401
    cross = await client.post("/login", data={"reviewer": "alice", "token": TOKEN},
                              headers={"Origin": "https://evil.example"})
    assert cross.status == 403


async def test_page_escapes_what_it_shows_and_sets_a_csp(console: Any) -> None:
    client, _, _ = console
    await _login(client)
    resp = await client.get("/")
    page = await resp.text()
    assert "item-1" in page and "c-7" in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "127.0.0.1:9" not in page, "user URLs never reach the page"
    assert f'src="/thumb/{item_key("item-1")}"' in page
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"


async def test_decisions_need_csrf_and_same_origin(console: Any) -> None:
    client, queue, producer = console
    csrf = await _login(client)
    form = {"key": item_key("item-1"), "decision": "overturn_safe", "reason": "artistic", "csrf": csrf,
            "request_id": _request_id(queue, "item-1")}
    assert (await client.post("/decide", data={**form, "csrf": "forged"}, headers=_origin(client))).status == 403
    assert (await client.post("/decide", data=form, headers={"Origin": "https://evil.example"})).status == 403
    assert (await client.post("/decide", data=form)).status == 403, "no Origin and no Referer"
    assert (await client.post("/decide", data={**form, "reason": "explicit"}, headers=_origin(client))).status == 400
    assert producer.sent == []
    ok = await client.post("/decide", data=form, headers=_origin(client), allow_redirects=False)
    assert ok.status == 303
    [msg] = producer.sent
    d = ReviewDecision.model_validate_json(msg.value)
    assert (d.content_id, d.decision, d.reason, d.reviewer) == ("item-1", "overturn_safe", "artistic", "alice")
    assert d.collection == "vitguard_m" and d.previous_label == "unsafe" and msg.key() == d.decision_id.encode()
    assert [i.request.content_id for i in queue.pending()] == ["item-ssrf"]
    page = await (await client.get("/")).text()
    assert "Overturned (safe): item-1" in page


async def test_thumbnails_are_fetched_server_side_with_the_guard(console: Any) -> None:
    client, _, _ = console
    await _login(client)
    resp = await client.get(f"/thumb/{item_key('item-1')}")
    assert resp.status == 200 and resp.content_type == "image/jpeg"
    import io

    with Image.open(io.BytesIO(await resp.read())) as img:
        assert max(img.size) <= 256
    blocked = await client.get(f"/thumb/{item_key('item-ssrf')}")
    assert blocked.status == 502 and "fetch_blocked" in await blocked.text()


async def test_logout_needs_csrf(console: Any) -> None:
    client, _, _ = console
    csrf = await _login(client)
    assert (await client.post("/logout", data={"csrf": "x"}, headers=_origin(client))).status == 403
    out = await client.post("/logout", data={"csrf": csrf}, headers=_origin(client), allow_redirects=False)
    assert out.status == 303 and COOKIE in out.headers.get("Set-Cookie", "")
    assert (await client.get("/", allow_redirects=False)).status == 303


SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options", "Cache-Control")


def _decision_form(queue: ReviewQueue, csrf: str, content_id: str = "item-1") -> dict[str, str]:
    return {"key": item_key(content_id), "decision": "overturn_safe", "reason": "artistic", "csrf": csrf,
            "request_id": _request_id(queue, content_id)}


async def test_a_double_submit_and_concurrent_posts_give_one_decision(console: Any) -> None:
    """Issue 29: the same form posted twice gave two decisions; five concurrent posts gave five."""
    import asyncio

    client, queue, producer = console
    form = _decision_form(queue, await _login(client))
    first = await client.post("/decide", data=form, headers=_origin(client), allow_redirects=False)
    again = await client.post("/decide", data=form, headers=_origin(client), allow_redirects=False)
    assert first.status == 303 and again.status == 409
    assert "already decided: overturn_safe by alice" in await again.text()
    other = _decision_form(queue, form["csrf"], "item-ssrf")
    statuses = sorted(r.status for r in await asyncio.gather(*(
        client.post("/decide", data=other, headers=_origin(client), allow_redirects=False) for _ in range(5))))
    assert statuses == [303, 409, 409, 409, 409]
    assert [ReviewDecision.model_validate_json(m.value).content_id for m in producer.sent] == ["item-1", "item-ssrf"]


async def test_two_reviewers_on_one_item_and_an_appeal_arriving_while_the_page_is_open(
    console: Any, image_root: Path
) -> None:
    """Issue 29: a reviewer could decide an item another had decided (the last won), and a stale form's
    decision took a newer request's id (an appeal), which then left the queue unseen."""
    client, queue, producer = console
    alice_form = _decision_form(queue, await _login(client))
    async with TestClient(TestServer(client.server.app)) as bob:
        bob_form = _decision_form(queue, await _login(bob, "bob"))  # both pages show item-1
        assert (await client.post("/decide", data=alice_form, headers=_origin(client),
                                  allow_redirects=False)).status == 303
        late = await bob.post("/decide", data=bob_form, headers=_origin(bob), allow_redirects=False)
        assert late.status == 409 and "by alice" in await late.text()
    stale = _decision_form(queue, alice_form["csrf"], "item-ssrf")  # the page was rendered for this request
    queue.add_request(request("item-ssrf", reasons=["appeal"], appeal_note="please look again",
                              at=queue.get(item_key("item-ssrf")).request.requested_at + timedelta(minutes=5)))
    refused = await client.post("/decide", data=stale, headers=_origin(client), allow_redirects=False)
    assert refused.status == 409 and "newer review request" in await refused.text()
    assert len(producer.sent) == 1 and "item-ssrf" in [i.request.content_id for i in queue.pending()]


async def test_every_response_carries_the_security_headers_and_echoes_nothing(console: Any) -> None:
    """Issue 29: 303 (with Set-Cookie), 400, 401, 403 and 404 went out without CSP, nosniff, frame and cache
    headers, and a 400 echoed the submitted reason back."""
    client, queue, _ = console
    responses = [await client.get("/", allow_redirects=False),  # 303 to the login
                 await client.get(f"/thumb/{item_key('item-1')}"),  # 401
                 await client.post("/login", data={"reviewer": "alice", "token": TOKEN},
                                   headers={"Origin": "https://evil.example"})]  # 403
    login = await client.post("/login", data={"reviewer": "alice", "token": TOKEN}, headers=_origin(client),
                              allow_redirects=False)
    responses.append(login)  # 303 with Set-Cookie
    csrf = await _login(client)
    evil = '<script>alert("x")</script>'
    bad_reason = await client.post("/decide", data={**_decision_form(queue, csrf), "reason": evil},
                                   headers=_origin(client))
    responses += [bad_reason, await client.get("/thumb/no-such-key")]
    assert [r.status for r in responses] == [303, 401, 403, 303, 400, 404]
    for r in responses:
        assert all(h in r.headers for h in SECURITY_HEADERS), (r.status, dict(r.headers))
    assert "script" not in await bad_reason.text()


@pytest.mark.parametrize("body,content_type", [
    (b"reviewer=al\xffice&token=\xfe", "application/x-www-form-urlencoded"),
    (b"reviewer=alice&token=x", "application/x-www-form-urlencoded; charset=no-such-charset"),
    (b"--x\r\nContent-Disposition: form-data; name=reviewer\r\n\r\nalice", "multipart/form-data"),
    (b"--x\r\nContent-Disposition: form-data; name=reviewer\r\n\r\nali", "multipart/form-data; boundary=x"),
])
async def test_malformed_bodies_are_400_never_500(console: Any, body: bytes, content_type: str) -> None:
    """Issue 29: such bodies on POST /login (and /decide) answered 500; /decide's body is now read only after
    the origin and the session are checked."""
    client, _, producer = console
    login = await client.post("/login", data=body, headers={**_origin(client), "Content-Type": content_type})
    assert login.status in (400, 401) and all(h in login.headers for h in SECURITY_HEADERS), login.status
    anonymous = await client.post("/decide", data=body, headers={**_origin(client), "Content-Type": content_type})
    assert anonymous.status == 401  # refused before the body is parsed
    await _login(client)
    decide = await client.post("/decide", data=body, headers={**_origin(client), "Content-Type": content_type})
    assert decide.status in (400, 403) and producer.sent == []


async def test_thumbnails_are_keyed_by_the_image_they_show(console: Any, image_root: Path) -> None:
    """Issue 29: thumbnails were cached by content id, so a newer request for the same content id with another
    image still showed the old one."""
    import io

    client, queue, _ = console
    await _login(client)
    first = await (await client.get(f"/thumb/{item_key('item-1')}")).read()
    Image.new("RGB", (800, 600), (20, 30, 220)).save(image_root / "blue.jpg")
    queue.add_request(request("item-1", image_ref=(image_root / "blue.jpg").as_uri(),
                              at=queue.get(item_key("item-1")).request.requested_at + timedelta(minutes=1)))
    second = await (await client.get(f"/thumb/{item_key('item-1')}")).read()
    with Image.open(io.BytesIO(first)) as a, Image.open(io.BytesIO(second)) as b:
        assert a.getpixel((10, 10))[0] > 150 and b.getpixel((10, 10))[2] > 150  # red, then blue


async def test_bidi_and_zero_width_characters_are_shown_escaped(console: Any) -> None:
    """Issue 29: ``invoice_<U+202E>gpj.exe`` rendered as ``invoice_exe.jpg``; zero-width characters vanished."""
    client, queue, _ = console
    queue.add_request(request("item-bidi", metadata={"file": "invoice_\u202egpj.exe", "note\u200b": "a\u2066b"}))
    await _login(client)
    page = await (await client.get("/")).text()
    assert "invoice_&lt;U+202E&gt;gpj.exe" in page and "note&lt;U+200B&gt;" in page and "a&lt;U+2066&gt;b" in page
    assert not any(c in page for c in "\u202e\u200b\u2066")
