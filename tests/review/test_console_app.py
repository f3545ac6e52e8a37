"""The console app against an in-process server: login, CSRF and origin checks, escaping, thumbnails."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
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


async def _login(client: TestClient[Any, Any]) -> str:
    resp = await client.post("/login", data={"reviewer": "alice", "token": TOKEN}, headers=_origin(client),
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
    form = {"key": item_key("item-1"), "decision": "overturn_safe", "reason": "artistic", "csrf": csrf}
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
