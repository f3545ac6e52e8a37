"""The review console in a real browser (headless Chromium from Debian's ``chromium`` package, driven by
Selenium through the system chromedriver; ``make system-deps`` installs both).

A reviewer logs in and reviews with the keyboard only; the decisions arrive on the decisions topic, the
applier applies them, and the overturned item no longer alerts: near-duplicate search finds nothing for it.
Set ``VITGUARD_SAVE_SCREENSHOTS=1`` to write the README's screenshots to ``docs/``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from review_services import VECTOR, review_settings, seed_unsafe

from vitguard.kafka.produce import publish_and_wait, raise_on_failures
from vitguard.kafka.reader import read_models
from vitguard.review.applier import DecisionApplier, encode
from vitguard.schemas.events import Match
from vitguard.schemas.review import ReviewDecision, ReviewRequest, VerdictCorrection
from vitguard.settings import Settings
from vitguard.stores.milvus import MilvusEmbeddingIndex
from vitguard.testing.services import free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOKEN = "browser-test-token"  # noqa: S105 - a test token
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def browser() -> Iterator[Any]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("no chromium/chromedriver: run `make system-deps`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,1100", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def console(service_settings: Callable[..., Settings], tmp_path: Path,
            sample_photos: list[Path]) -> Iterator[tuple[str, Settings, Path]]:
    images = tmp_path / "images"
    images.mkdir()
    for p in sample_photos[:2]:
        shutil.copy(p, images / p.name)
    settings = review_settings(service_settings, fetch={"file_root": str(images)})
    port = free_port()
    env = {**os.environ, "VITGUARD_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
           "VITGUARD_REVIEW_CONSOLE_TOKEN": TOKEN, "VITGUARD_FETCH_FILE_ROOT": str(images),
           **{f"VITGUARD_TOPIC_{k.upper()}": getattr(settings.topics, k) for k in
              ("review_requests", "review_decisions", "review_audit", "verdict_corrections")}}
    log = (tmp_path / "console.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "vitguard", "review", "console", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as r:  # noqa: S310 - our own console
                return bool(r.status == 200)
        except OSError:
            assert proc.poll() is None, (tmp_path / "console.log").read_text()
            return False

    try:
        wait_for(up, 60, "the review console")
        yield url, settings, images
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _wait(driver: Any, check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; page: {driver.page_source[:3000]}")
        time.sleep(0.2)
        driver.refresh()


def _keys(driver: Any, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def _active(driver: Any) -> Any:
    return driver.switch_to.active_element


def test_reviewer_overturns_an_item_with_the_keyboard_and_it_stops_alerting(
    console: tuple[str, Settings, Path], browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, settings, images = console
    t = settings.topics
    photos = sorted(images.iterdir())
    index = MilvusEmbeddingIndex(settings.milvus)
    try:
        collection = seed_unsafe(index, "upload-42")
        assert index.search_unsafe(collection, VECTOR[None], 5, 0.9)[0], "it is a near-duplicate anchor now"
        dup = ReviewRequest(
            content_id="upload-42", tenant="acme", event_id="ev-42", reasons=["near_duplicate"],
            image_ref=photos[0].as_uri(), label="unsafe", unsafe_score=0.91, top_class="NSFW",
            scores={"NSFW": 0.91, "SFW": 0.09}, model_name="review-test-model", model_version="v1",
            collection=collection, cluster_id="c-3f2a9b", wave_count=3, wave_window_s=600, severity="info",
            matches=[Match(content_id="upload-7", similarity=0.964, cluster_id="c-3f2a9b")],
            metadata={"caption": '<script>document.title="pwned"</script>', "uploader": "u-1001"},
        )
        appeal = ReviewRequest(
            content_id="upload-43", tenant="acme", reasons=["uncertain", "appeal"], image_ref=photos[1].as_uri(),
            label="unsafe", unsafe_score=0.52, top_class="NSFW", scores={"NSFW": 0.52, "SFW": 0.48},
            model_name="review-test-model", model_version="v1", collection=collection,
            appeal_note='It is a museum photo <img src=x onerror="alert(1)">',
        )
        raise_on_failures(publish_and_wait(settings.kafka, [encode(t.review_requests, r.content_id, r)
                                                            for r in (dup, appeal)]))

        # log in with the keyboard: the name field has focus, Tab to the token, Enter submits
        browser.get(f"{url}/")
        assert browser.current_url.endswith("/login")
        assert _active(browser).get_attribute("id") == "reviewer"
        _keys(browser, "alice", Keys.TAB, TOKEN, Keys.ENTER)
        _wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "article.item")) == 2, "two items")
        cookie = browser.get_cookie("vitguard_review_session")
        assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert browser.title.startswith("vitguard review"), "the <script> in metadata did not run"
        assert '<script>document.title="pwned"</script>' in browser.find_element(By.TAG_NAME, "main").text
        # appeals sort before near-duplicates; the first item has focus; thumbnails came from the console
        items = browser.find_elements(By.CSS_SELECTOR, "article.item")
        assert "upload-43" in items[0].text and "upload-42" in items[1].text
        assert _active(browser) == items[0]
        for img in browser.find_elements(By.CSS_SELECTOR, "img.thumb"):
            assert img.get_attribute("src").startswith(f"{url}/thumb/")
            assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0

        _keys(browser, "j")  # next item: visible focus
        assert _active(browser) == items[1]
        outline = browser.execute_script("return getComputedStyle(arguments[0]).boxShadow", items[1])
        assert outline and outline != "none", "the focused item is visibly marked"
        _shot(browser, tmp_path, "review-console.png")

        _keys(browser, "o")  # arms the overturn of the focused item (upload-42) and says so
        assert items[1].get_attribute("data-armed") == "overturn_safe"
        assert "Press o again" in items[1].text and "Overturned" not in browser.page_source
        _keys(browser, "o", "o")  # confirmed; the second press, a quick double, must not decide the next item
        _wait(browser, lambda: "Overturned (safe): upload-42" in browser.page_source, "the flash")
        # the remaining item by tab order only: item -> reason -> note -> confirm
        [left] = browser.find_elements(By.CSS_SELECTOR, "article.item")  # issue 29: it used to decide this one
        assert _active(browser) == left and "upload-43" in left.text and not left.get_attribute("data-armed")
        _keys(browser, Keys.TAB, Keys.TAB, Keys.TAB)
        assert _active(browser).get_attribute("value") == "confirm_unsafe"
        _shot(browser, tmp_path, "review-console-decided.png")
        _keys(browser, Keys.ENTER)
        _wait(browser, lambda: "Nothing waiting for review" in browser.page_source, "an empty queue")

        read = [r.value for r in read_models(settings.kafka, t.review_decisions, ReviewDecision) if r.value]
        assert sorted(d.content_id for d in read) == ["upload-42", "upload-43"]  # one decision each
        decisions = {d.content_id: d for d in read}
        assert decisions["upload-42"].decision == "overturn_safe" and decisions["upload-42"].reviewer == "alice"
        assert decisions["upload-42"].collection == collection
        assert decisions["upload-43"].decision == "confirm_unsafe"

        assert DecisionApplier(settings, records=index).run(once=True) == 2
        assert index.get(collection, ["upload-42"])["upload-42"].label == "overturned"
        # a near-duplicate of upload-42 arriving now finds no unsafe anchor: no alert against it
        assert [h.content_id for h in index.search_unsafe(collection, VECTOR[None], 5, 0.9)[0]] == []
        corrections = {r.value.content_id: r.value.label for r in read_models(
            settings.kafka, t.verdict_corrections, VerdictCorrection) if r.value}
        assert corrections == {"upload-42": "safe", "upload-43": "unsafe"}
    finally:
        index.close()


def _shot(driver: Any, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if os.environ.get("VITGUARD_SAVE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copy(path, DOCS / name)


def test_against_the_real_console_each_request_gets_one_decision_and_bad_posts_get_4xx(
    console: tuple[str, Settings, Path],
) -> None:
    """Issue 29 against a console process on the broker: concurrent posts and a double submit give one
    decision on the topic; a second reviewer's stale page and an appeal that arrived while the page was open
    get 409; malformed bodies get 400, with the security headers, never 500."""
    import asyncio
    import re
    from datetime import timedelta

    import aiohttp

    url, settings, images = console
    t = settings.topics
    photo = sorted(images.iterdir())[0].as_uri()
    first = ReviewRequest(content_id="c-1", reasons=["uncertain"], image_ref=photo, label="unsafe", unsafe_score=0.6)
    second = ReviewRequest(content_id="c-2", reasons=["uncertain"], image_ref=photo, label="unsafe",
                           unsafe_score=0.6)
    raise_on_failures(publish_and_wait(settings.kafka, [encode(t.review_requests, r.content_id, r)
                                                        for r in (first, second)]))
    origin = {"Origin": url}

    async def login(session: aiohttp.ClientSession, name: str) -> str:
        async with session.post(f"{url}/login", data={"reviewer": name, "token": TOKEN}, headers=origin) as r:
            assert r.status == 200, r.status  # followed the 303 to the queue
        for _ in range(100):
            async with session.get(f"{url}/") as r:
                page = await r.text()
            if "c-1" in page and "c-2" in page:
                break
            await asyncio.sleep(0.1)
        match = re.search(r'name="csrf" value="([^"]+)"', page)
        assert match
        return match.group(1)

    def form(csrf: str, request: ReviewRequest) -> dict[str, str]:
        from vitguard.review.queue import item_key

        return {"key": item_key(request.content_id), "request_id": request.request_id,
                "decision": "overturn_safe", "reason": "artistic", "csrf": csrf}

    async def scenario() -> None:
        jar = aiohttp.CookieJar
        async with aiohttp.ClientSession(cookie_jar=jar(unsafe=True)) as alice, \
                aiohttp.ClientSession(cookie_jar=jar(unsafe=True)) as bob:  # unsafe: cookies of an IP host
            alice_csrf, bob_csrf = await login(alice, "alice"), await login(bob, "bob")
            posts = [alice.post(f"{url}/decide", data=form(alice_csrf, first), headers=origin,
                                allow_redirects=False) for _ in range(5)]
            statuses = sorted([(await p).status for p in asyncio.as_completed(posts)])
            assert statuses == [303, 409, 409, 409, 409], statuses
            async with bob.post(f"{url}/decide", data=form(bob_csrf, first), headers=origin) as r:
                assert r.status == 409 and "by alice" in await r.text()  # bob's page was stale
            appeal = second.model_copy(update={"request_id": "appeal-1", "reasons": ["appeal"],
                                               "requested_at": second.requested_at + timedelta(minutes=1)})
            raise_on_failures(publish_and_wait(settings.kafka, [encode(t.review_requests, "c-2", appeal)]))
            await asyncio.sleep(2.0)  # the console's feed reads it
            async with bob.post(f"{url}/decide", data=form(bob_csrf, second), headers=origin) as r:
                assert r.status == 409 and "newer review request" in await r.text()
            for body, kind in [(b"csrf=\xff\xfe", "application/x-www-form-urlencoded"),
                               (b"--x\r\nContent-Disposition: form-data; name=csrf", "multipart/form-data")]:
                async with bob.post(f"{url}/decide", data=body, headers={**origin, "Content-Type": kind}) as r:
                    assert r.status == 400 and "Content-Security-Policy" in r.headers, r.status

    asyncio.run(scenario())
    decided = [r.value for r in read_models(settings.kafka, t.review_decisions, ReviewDecision) if r.value]
    assert [(d.content_id, d.reviewer) for d in decided] == [("c-1", "alice")]
