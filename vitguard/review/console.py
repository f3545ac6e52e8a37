"""The review console: an aiohttp app listing pending review items, publishing reviewers' decisions.

Security model:

- **Everything behind a login.** The queue, thumbnails and writes need a session; a session comes from the
  login form with ``VITGUARD_REVIEW_CONSOLE_TOKEN`` (compared in constant time). The session id lives in an
  ``HttpOnly; SameSite=Strict`` cookie (``Secure`` with ``VITGUARD_REVIEW_COOKIE_SECURE``), server-side
  sessions expire after ``VITGUARD_REVIEW_SESSION_TTL_S``.
- **No cross-site writes.** Every POST must come from the console's own origin (``Origin``, else
  ``Referer``, checked against ``VITGUARD_REVIEW_PUBLIC_ORIGIN`` or the request's own origin) and, once
  logged in, carry the session's CSRF token (a hidden form field, compared in constant time).
- **The browser never loads user URLs.** Thumbnails are ``/thumb/<key>`` on the console: the server fetches
  the image through :class:`~vitguard.fetch.ImageFetcher` (SSRF guard, size limits, timeouts), decodes it
  with the worker's pixel limit and re-encodes a small JPEG; what the reviewer's browser gets is pixels.
- **Everything escaped** (:mod:`vitguard.review.pages`), and a Content-Security-Policy with no inline script.

The queue is fed by a thread that follows the review-requests and review-decisions topics from their
beginning (no consumer group), so every console replica sees the same queue.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import io
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from confluent_kafka import Producer
from PIL import Image

from vitguard import metrics as vg_metrics
from vitguard.errors import ConfigError, FetchError
from vitguard.fetch import ImageFetcher
from vitguard.kafka.config import librdkafka_config
from vitguard.kafka.produce import DEFAULT_PRODUCER_CONFIG, produce_and_wait, raise_on_failures
from vitguard.kafka.reader import TopicReader, decode
from vitguard.review import metrics
from vitguard.review.applier import encode
from vitguard.review.assets import CONSOLE_CSS, CONSOLE_JS
from vitguard.review.identity import REVIEWER_RE, LoginLimiter, Reviewer, hash_password, load_reviewers, verify_password
from vitguard.review.pages import REASONS, login_page, queue_page
from vitguard.review.queue import ReviewQueue
from vitguard.schemas.review import DecisionKind, ReviewDecision, ReviewRequest
from vitguard.settings import Settings

__all__ = ["COOKIE", "QueueFeed", "build_console_app", "run_console"]

_log = logging.getLogger(__name__)

COOKIE = "vitguard_review_session"
_CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'")
_SHOWN = 200


@dataclass
class Session:
    reviewer: str
    csrf: str
    expires: float
    flash: str | None = None
    tenants: frozenset[str] | None = None
    """The tenants this reviewer may review (None: all)."""

    def may_review(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants


@dataclass
class _State:
    settings: Settings
    queue: ReviewQueue
    lock: threading.Lock
    fetcher: ImageFetcher
    producer: Any
    sessions: dict[str, Session] = field(default_factory=dict)
    thumbs: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    """Thumbnails by the SHA-256 of the image reference they show."""
    deciding: set[str] = field(default_factory=set)
    """Review requests a decision is being published for right now (:func:`_claim`)."""
    reviewers: dict[str, Reviewer] | None = None
    """Per-reviewer logins (VITGUARD_REVIEW_REVIEWERS_FILE); None: the shared token."""
    limiter: LoginLimiter = field(default_factory=LoginLimiter)


STATE: web.AppKey[_State] = web.AppKey("state")
FEED: web.AppKey[QueueFeed] = web.AppKey("feed")


class QueueFeed:
    """Follows the requests and decisions topics into a :class:`ReviewQueue`, in a thread of its own."""

    def __init__(self, settings: Settings, queue: ReviewQueue, lock: threading.Lock) -> None:
        self.settings = settings
        self.queue = queue
        self.lock = lock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        t = self.settings.topics
        # built here, not in the thread, so a missing topic fails the console's start
        self._reader = TopicReader(self.settings.kafka, [t.review_requests, t.review_decisions], poll_interval_s=0.2)
        self._thread = threading.Thread(target=self._run, name="review-feed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t = self.settings.topics
        counted, counted_at = True, time.monotonic()  # the depth gauge is current
        try:
            while not self._stop.is_set():
                record = self._reader.next_record(0.2)
                if not counted and (record is None or time.monotonic() - counted_at > _DEPTH_EVERY_S):
                    # caught up, or every few seconds while records stream in: counted per record, loading a
                    # long topic was quadratic (20,000 requests: 31 s; a million: a day)
                    with self.lock:
                        metrics.QUEUE_DEPTH.set(self.queue.depth())
                    counted, counted_at = True, time.monotonic()
                if record is None:
                    continue
                counted = False
                self._take(record, record.topic == t.review_requests)
        except BaseException as exc:  # reported on /healthz; the page keeps showing what it has
            self.error = exc
            _log.exception("the review queue feed stopped")
        finally:
            self._reader.close()

    def _take(self, record: Any, is_request: bool) -> None:
        """One record into the queue. Anything on these topics may be malformed (any producer can write
        them): an invalid record, or one the queue cannot take, is skipped, counted and logged with its
        offset, and the feed goes on; it never stops the console."""
        where = f"{record.topic}[{record.partition}]@{record.offset}"
        decoded = decode(record, ReviewRequest if is_request else ReviewDecision)
        try:
            if decoded.value is None:
                raise ValueError(decoded.error)
            with self.lock:
                if isinstance(decoded.value, ReviewRequest):
                    self.queue.add_request(decoded.value)
                else:
                    self.queue.add_decision(decoded.value)  # type: ignore[arg-type]
        except Exception as exc:
            metrics.RECORDS_SKIPPED.labels(record.topic).inc()
            _log.warning("review %s at %s skipped: %s", "request" if is_request else "decision", where,
                         str(exc)[:300])

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


_DEPTH_EVERY_S = 5.0
"""How often the queue-depth gauge is recounted while review records stream in."""


def _origin_ok(request: web.Request, settings: Settings) -> bool:
    expected = settings.review.public_origin or f"{request.scheme}://{request.host}"
    origin = request.headers.get("Origin")
    if origin is not None:
        return hmac.compare_digest(origin, expected)
    referer = request.headers.get("Referer")
    return referer is not None and (referer == expected or referer.startswith(expected + "/"))


def _session(request: web.Request) -> Session | None:
    state: _State = request.app[STATE]
    header = state.settings.review.identity_header
    if header is not None:  # behind an authenticating proxy: the identity comes with every request
        return _proxied(state, request.headers.get(header, ""))
    sid = request.cookies.get(COOKIE)
    if not sid:
        return None
    s = state.sessions.get(sid)
    if s is None or s.expires < time.time():
        state.sessions.pop(sid, None)
        return None
    return s


_SECURITY_HEADERS = {
    "Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
}


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every response carries the security headers: pages, errors and redirects alike (an error or a redirect
    is raised in aiohttp, and went out without them, a 303 with Set-Cookie included)."""
    try:
        response: web.StreamResponse = await handler(request)
    except web.HTTPException as exc:
        for name, value in _SECURITY_HEADERS.items():
            exc.headers.setdefault(name, value)
        raise
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def _form(request: web.Request) -> Any:
    """The posted form; a body that is not one (not UTF-8, an unknown charset, multipart without or with a
    broken boundary) is a 400 that echoes nothing, never a 500."""
    try:
        return await request.post()
    except web.HTTPException:
        raise
    except Exception:
        raise web.HTTPBadRequest(text="malformed form body") from None


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


async def _index(request: web.Request) -> web.StreamResponse:
    s = _session(request)
    if s is None:
        raise web.HTTPSeeOther("/login")
    state: _State = request.app[STATE]
    with state.lock:
        scoped = [i for i in state.queue.pending() if s.may_review(i.request.tenant)]
        items, depth = scoped[:_SHOWN], len(scoped)
        recent = [i for i in state.queue.decided(50) if s.may_review(i.request.tenant)][:10]
    flash, s.flash = s.flash, None
    return _html(queue_page(items, reviewer=s.reviewer, csrf=s.csrf, depth=depth, flash=flash, recent=recent))


async def _login_form(request: web.Request) -> web.StreamResponse:
    if _session(request) is not None:
        raise web.HTTPSeeOther("/")
    return _html(login_page())


def _proxied(state: _State, name: str) -> Session | None:
    """The session of the reviewer an authenticating proxy named (one per reviewer, made on first sight)."""
    if not REVIEWER_RE.match(name):
        return None
    s = state.sessions.get(f"proxy:{name}")
    if s is None:
        scope = state.reviewers.get(name) if state.reviewers is not None else None
        s = state.sessions[f"proxy:{name}"] = Session(name, secrets.token_urlsafe(32), float("inf"),
                                                      tenants=scope.tenants if scope else None)
    return s


async def _login(request: web.Request) -> web.StreamResponse:
    state: _State = request.app[STATE]
    if state.settings.review.identity_header is not None:
        raise web.HTTPNotFound(text="log in through the console's authenticating proxy")
    if not _origin_ok(request, state.settings):
        raise web.HTTPForbidden(text="cross-origin request refused")
    form = await _form(request)
    name, secret = str(form.get("reviewer", "")), str(form.get("token", ""))
    keys = (f"client:{request.remote}", f"name:{name[:128]}")
    wait_s = state.limiter.retry_after(*keys)
    if wait_s > 0:  # locked out: not even checked, so a guesser learns nothing while it lasts
        return _html(login_page(f"Too many failed logins; try again in {wait_s:.0f} s."), status=429)
    # counted as a failure before it is checked, and cleared if it succeeds: guesses sent in parallel are
    # all counted before any of them is answered (they were checked at 0.5 s each, 100 in a second)
    state.limiter.failed(*keys)
    reviewer = await asyncio.get_running_loop().run_in_executor(None, _authenticate, state, name, secret)
    if reviewer is None:
        return _html(login_page("Wrong reviewer name or password."), status=401)
    state.limiter.succeeded(*keys)
    sid = secrets.token_urlsafe(32)
    ttl = state.settings.review.session_ttl_s
    state.sessions[sid] = Session(reviewer.name, secrets.token_urlsafe(32), time.time() + ttl,
                                  tenants=reviewer.tenants)
    response = web.HTTPSeeOther("/")
    response.set_cookie(COOKIE, sid, max_age=ttl, path="/", httponly=True, samesite="Strict",
                        secure=state.settings.review.cookie_secure)
    raise response


def _authenticate(state: _State, name: str, secret: str) -> Reviewer | None:
    """The reviewer ``name`` proves to be with ``secret`` (their own password, or the shared token), or None.
    Runs in a thread (scrypt takes tens of milliseconds)."""
    if not REVIEWER_RE.match(name):
        return None
    if state.reviewers is not None:
        known = state.reviewers.get(name)
        if known is None or known.password_hash is None:
            verify_password(secret, _dummy_hash())  # the same work for an unknown name: no timing oracle
            return None
        return known if verify_password(secret, known.password_hash) else None
    token = state.settings.review.console_token
    if token is None or not hmac.compare_digest(secret.encode(), token.get_secret_value().encode()):
        return None
    return Reviewer(name)


@functools.cache
def _dummy_hash() -> str:
    """A hash no password matches, made on first use (scrypt is not start-up work for a token console)."""
    return hash_password(secrets.token_urlsafe(16))


async def _checked(request: web.Request) -> tuple[Session, Any]:
    """The session and form of a POST that passed the origin, session and CSRF checks: the body is read only
    once the origin and the session are known good (an unauthenticated body is never parsed)."""
    state: _State = request.app[STATE]
    if not _origin_ok(request, state.settings):
        raise web.HTTPForbidden(text="cross-origin request refused")
    s = _session(request)
    if s is None:
        raise web.HTTPUnauthorized(text="log in first")
    form = await _form(request)
    if not hmac.compare_digest(str(form.get("csrf", "")).encode(), s.csrf.encode()):
        raise web.HTTPForbidden(text="missing or wrong CSRF token")
    return s, form


async def _logout(request: web.Request) -> web.StreamResponse:
    await _checked(request)
    request.app[STATE].sessions.pop(request.cookies.get(COOKIE, ""), None)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


async def _decide(request: web.Request) -> web.StreamResponse:
    s, form = await _checked(request)
    state: _State = request.app[STATE]
    kind = str(form.get("decision", ""))
    if kind not in REASONS:
        raise web.HTTPBadRequest(text="decision must be confirm_unsafe or overturn_safe")
    decision_kind: DecisionKind = "confirm_unsafe" if kind == "confirm_unsafe" else "overturn_safe"
    allowed = REASONS[decision_kind]
    reason = str(form.get("reason", "")) or next(iter(allowed))
    if reason not in allowed:  # nothing of the request is echoed back
        raise web.HTTPBadRequest(text="the reason does not fit the decision")
    r = _claim(state, s, str(form.get("key", "")), str(form.get("request_id", "")))
    try:
        note = str(form.get("note", "")).strip()[:2000] or None
        decision = ReviewDecision(
            content_id=r.content_id, decision=decision_kind, reviewer=s.reviewer, reason=reason, note=note,
            tenant=r.tenant, request_id=r.request_id, collection=r.collection, model_name=r.model_name,
            model_version=r.model_version, previous_label=r.label, pdq_hash=r.pdq_hash,
            requested_at=r.requested_at,
        )
        message = encode(state.settings.topics.review_decisions, decision.decision_id, decision)
        results = await asyncio.get_running_loop().run_in_executor(
            None, lambda: produce_and_wait(state.producer, [message], 15.0))
        raise_on_failures(results)
        with state.lock:
            state.queue.add_decision(decision)
            metrics.QUEUE_DEPTH.set(state.queue.depth())
    finally:
        with state.lock:
            state.deciding.discard(r.request_id)
    verb = "Confirmed unsafe" if decision_kind == "confirm_unsafe" else "Overturned (safe)"
    s.flash = f"{verb}: {r.content_id}"
    raise web.HTTPSeeOther("/")


def _claim(state: _State, session: Session, key: str, request_id: str) -> ReviewRequest:
    """The pending request the form was rendered for, claimed for this decision (released by the caller).

    Exactly one decision per review request: a form answers the request it was rendered for, never a newer
    one for the same item (an appeal that arrived while the page was open), and a request that is already
    decided, or being decided by another post right now (a double submit, two reviewers), answers 409 with
    what happened. (Several console replicas do not share this claim: run one, or rely on the applier, which
    applies the latest decision per item and records the others as superseded.)"""
    with state.lock:
        item = state.queue.get(key)
        if item is None or not session.may_review(item.request.tenant):
            raise web.HTTPNotFound(text="no such review item")
        r = item.request
        if request_id != r.request_id:
            raise web.HTTPConflict(text="this item has a newer review request since the page was shown "
                                        "(an appeal?): reload the queue to see it")
        if not item.pending and item.decision is not None:
            d = item.decision
            raise web.HTTPConflict(text=f"already decided: {d.decision} by {d.reviewer} at "
                                        f"{d.decided_at:%Y-%m-%d %H:%M:%S %Z}; reload the queue")
        if r.request_id in state.deciding:
            raise web.HTTPConflict(text="this item is being decided right now (a double submit?); reload the queue")
        state.deciding.add(r.request_id)
    return r


async def _thumb(request: web.Request) -> web.StreamResponse:
    session = _session(request)
    if session is None:
        raise web.HTTPUnauthorized(text="log in first")
    state: _State = request.app[STATE]
    key = request.match_info["key"]
    with state.lock:
        item = state.queue.get(key)
    if item is None or item.request.image_ref is None or not session.may_review(item.request.tenant):
        raise web.HTTPNotFound(text="no image for this item")
    # cached by what it shows: a newer request for the same content id with another image gets its own
    shown = hashlib.sha256(item.request.image_ref.encode()).hexdigest()
    with state.lock:
        cached = state.thumbs.get(shown)
    if cached is None:
        try:
            data = (await state.fetcher.fetch(item.request.image_ref)).data
        except FetchError as exc:
            _log.info("thumbnail of %s not fetched: %s", item.request.content_id, exc)
            raise web.HTTPBadGateway(text=f"image not fetched ({exc.reason})") from exc
        px, max_pixels = state.settings.review.thumbnail_px, state.settings.model.max_pixels
        try:
            cached = await asyncio.get_running_loop().run_in_executor(None, _thumbnail, data, px, max_pixels)
        except ValueError as exc:
            raise web.HTTPBadGateway(text=str(exc)) from exc
        with state.lock:
            state.thumbs[shown] = cached
            while len(state.thumbs) > state.settings.review.thumbnail_cache:
                state.thumbs.popitem(last=False)
    return web.Response(body=cached, content_type="image/jpeg",  # no browser cache: /thumb/<key> may change
                        headers={"Cache-Control": "no-store"})


def _thumbnail(data: bytes, px: int, max_pixels: int) -> bytes:
    """A JPEG of at most ``px`` on its longest side; refuses images over ``max_pixels`` before decoding."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ValueError(f"image of {w}x{h} pixels is over the decode limit")
            img.draft("RGB", (px, px))
            img.thumbnail((px, px))
            out = io.BytesIO()
            img.convert("RGB").save(out, format="JPEG", quality=80)
            return out.getvalue()
    except ValueError:
        raise
    except Exception as exc:  # any decoder error: not an image Pillow can read
        raise ValueError("not a decodable image") from exc


async def _static_css(_request: web.Request) -> web.StreamResponse:
    return web.Response(text=CONSOLE_CSS, content_type="text/css", headers={"Cache-Control": "max-age=3600"})


async def _static_js(_request: web.Request) -> web.StreamResponse:
    return web.Response(text=CONSOLE_JS, content_type="text/javascript",
                        headers={"Cache-Control": "max-age=3600"})


async def _healthz(request: web.Request) -> web.StreamResponse:
    feed: QueueFeed | None = request.app.get(FEED)
    if feed is not None and feed.error is not None:
        return web.json_response({"ok": False, "feed": str(feed.error)}, status=503)
    return web.json_response({"ok": True})


async def _metrics(_request: web.Request) -> web.StreamResponse:
    return web.Response(body=vg_metrics.render(), headers={"Content-Type": vg_metrics.CONTENT_TYPE})


def build_console_app(
    settings: Settings, *, fetcher: ImageFetcher | None = None, producer: Any = None, feed: bool = True,
    queue: ReviewQueue | None = None,
) -> web.Application:
    """The console app. ``feed=False`` leaves the queue to the caller (unit tests fill ``queue`` directly).

    Raises:
        ConfigError: no console token is configured (the console never allows anonymous writes).
    """
    review = settings.review
    token = review.console_token
    if review.identity_header is None and review.reviewers_file is None and (
            token is None or len(token.get_secret_value()) < 8):
        raise ConfigError("the review console needs VITGUARD_REVIEW_IDENTITY_HEADER (behind an authenticating "
                          "proxy), VITGUARD_REVIEW_REVIEWERS_FILE, or VITGUARD_REVIEW_CONSOLE_TOKEN (8 characters "
                          "or more)")
    reviewers = load_reviewers(review.reviewers_file) if review.reviewers_file is not None else None
    state = _State(
        settings=settings, queue=queue or ReviewQueue(), lock=threading.Lock(),
        fetcher=fetcher or ImageFetcher(settings.fetch),
        producer=producer or Producer(librdkafka_config(settings.kafka, **DEFAULT_PRODUCER_CONFIG)),
        reviewers=reviewers,
    )
    app = web.Application(middlewares=[_headers], client_max_size=64 * 1024)
    app[STATE] = state
    app.router.add_get("/", _index)
    app.router.add_get("/login", _login_form)
    app.router.add_post("/login", _login)
    app.router.add_post("/logout", _logout)
    app.router.add_post("/decide", _decide)
    app.router.add_get(r"/thumb/{key:[0-9a-f]{32}}", _thumb)
    app.router.add_get("/static/console.css", _static_css)
    app.router.add_get("/static/console.js", _static_js)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)

    if feed:
        async def start_feed(app: web.Application) -> None:
            f = QueueFeed(settings, state.queue, state.lock)
            f.start()
            app[FEED] = f

        async def stop_feed(app: web.Application) -> None:
            f = app.get(FEED)
            if f is not None:
                await asyncio.get_running_loop().run_in_executor(None, f.stop)

        app.on_startup.append(start_feed)
        app.on_cleanup.append(stop_feed)

    async def close_fetcher(_app: web.Application) -> None:
        await state.fetcher.close()
        state.producer.flush(5)

    app.on_cleanup.append(close_fetcher)
    return app


def run_console(settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
    """Serve the console until interrupted.

    Raises:
        ConfigError: no console token.
        TopicNotFoundError: the review topics do not exist (``vitguard review topics`` creates them).
    """
    app = build_console_app(settings)
    h, p = host or settings.review.console_host, port if port is not None else settings.review.console_port
    _log.info("review console on http://%s:%d", h, p)
    web.run_app(app, host=h, port=p, print=None, handle_signals=True)
