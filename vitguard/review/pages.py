"""HTML of the review console. Pure functions from values to markup; every value shown passes :func:`e`.

Nothing user-supplied ever reaches the page unescaped: content ids, tenants, metadata, appeal notes and
reviewer names are text, and the only URLs on the page are the console's own (``/thumb/<key>``, where the
key is a hash of the content id, never the image's reference). Scripts and styles are separate files of the
console (``/static/...``), so the Content-Security-Policy can forbid inline script altogether.
"""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Sequence
from datetime import datetime

from vitguard.review.queue import QueueItem
from vitguard.schemas.review import DecisionKind, ReviewRequest

__all__ = ["CONFIRM_REASONS", "OVERTURN_REASONS", "e", "login_page", "queue_page"]

OVERTURN_REASONS: dict[str, str] = {
    "false_positive": "False positive",
    "artistic": "Art",
    "medical": "Medical",
    "educational": "Educational",
    "other_safe": "Other (safe)",
}
"""Reason codes a reviewer may give for ``overturn_safe``; the first is the default."""

CONFIRM_REASONS: dict[str, str] = {
    "explicit": "Explicit nudity",
    "sexual_activity": "Sexual activity",
    "suggestive": "Suggestive",
    "other_unsafe": "Other (unsafe)",
}
"""Reason codes for ``confirm_unsafe``; the first is the default."""

REASONS: dict[DecisionKind, dict[str, str]] = {"overturn_safe": OVERTURN_REASONS, "confirm_unsafe": CONFIRM_REASONS}

_REASON_TEXT = {
    "uncertain": "uncertain score",
    "near_duplicate": "near-duplicate",
    "wave": "wave",
    "bank_match": "hash-bank match",
    "appeal": "appeal",
}


def e(value: object) -> str:
    """Escape for HTML text and attribute values (quotes included), with invisible characters made visible:
    bidi controls, zero-width and other format characters show as ``<U+202E>`` (``invoice_<U+202E>gpj.exe``
    rendered as ``invoice_exe.jpg``)."""
    return html.escape(_visible(str(value)), quote=True)


def _visible(text: str) -> str:
    if text.isascii():
        return text
    return "".join(f"<U+{ord(c):04X}>" if unicodedata.category(c) in _INVISIBLE else c for c in text)


_INVISIBLE = frozenset({"Cf", "Cc", "Co", "Cs", "Cn", "Zl", "Zp"})
"""Unicode categories that render as nothing, or reorder what follows (format, control, private use, ...)."""


def _page(title: str, body: str, *, csrf: str | None = None) -> str:
    meta = f'<meta name="csrf" content="{e(csrf)}">' if csrf else ""
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{e(title)}</title>{meta}"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="/static/console.css">'
        '<script src="/static/console.js" defer></script>'
        f"</head><body>{body}</body></html>\n"
    )


def login_page(error: str | None = None) -> str:
    """The login form: a reviewer name and their password (or the shared console token)."""
    message = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    body = (
        '<main class="login"><h1>vitguard review</h1>'
        f"{message}"
        '<form method="post" action="/login">'
        '<label for="reviewer">Reviewer name</label>'
        '<input id="reviewer" name="reviewer" autocomplete="username" required autofocus '
        'pattern="[A-Za-z0-9][A-Za-z0-9._:@/\\-]*" maxlength="128">'
        '<label for="token">Password (or the console token)</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required>'
        '<button type="submit">Log in</button>'
        "</form></main>"
    )
    return _page("vitguard review: log in", body)


def _when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t is not None else "-"


def _scores(r: ReviewRequest) -> str:
    if not r.scores and r.unsafe_score is None:
        return '<p class="muted">No verdict scores (appeal without a verdict).</p>'
    rows = "".join(
        f"<tr><th scope=\"row\">{e(name)}</th><td>{p:.3f}</td></tr>"
        for name, p in sorted(r.scores.items(), key=lambda kv: -kv[1])
    )
    head = (
        f'<p>Model verdict: <strong class="label-{e(r.label or "none")}">{e(r.label or "-")}</strong>, '
        f"unsafe score <strong>{r.unsafe_score:.3f}</strong></p>" if r.unsafe_score is not None else ""
    )
    model = f'<p class="muted">{e(r.model_name or "")} {e(r.model_version or "")}</p>'
    return f'{head}<table class="scores"><caption>Scores</caption>{rows}</table>{model}'


def _context(r: ReviewRequest) -> str:
    parts = []
    if r.cluster_id:
        wave = ""
        if r.wave_count is not None:
            wave = f", {r.wave_count} item(s) within {r.wave_window_s or '?'} s"
        parts.append(f"<li>Cluster <code>{e(r.cluster_id)}</code>{e(wave)}"
                     f"{' (wave)' if r.severity == 'critical' else ''}</li>")
    for m in r.matches[:5]:
        parts.append(f"<li>Close to <code>{e(m.content_id)}</code> (similarity {m.similarity:.3f})</li>")
    for b in r.bank_matches[:5]:
        kind = "negative bank" if b.negative else "bank"
        parts.append(f"<li>Matched {kind} <code>{e(b.bank)}</code> entry <code>{e(b.entry_id)}</code> "
                     f"(distance {b.distance})</li>")
    if r.appeal_note:
        parts.append(f'<li>Appeal: <q class="appeal">{e(r.appeal_note)}</q></li>')
    if r.metadata:
        meta = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in sorted(r.metadata.items()))
        parts.append(f'<li>Metadata<dl class="metadata">{meta}</dl></li>')
    if not parts:
        return ""
    return f'<ul class="context">{"".join(parts)}</ul>'


def _reason_select(item_no: int) -> str:
    kinds: tuple[tuple[DecisionKind, str], ...] = (("overturn_safe", "Overturn: safe"),
                                                   ("confirm_unsafe", "Confirm: unsafe"))
    groups = "".join(
        f'<optgroup label="{e(label)}">'
        + "".join(f'<option value="{e(code)}">{e(text)}</option>' for code, text in REASONS[kind].items())
        + "</optgroup>"
        for kind, label in kinds
    )
    return (f'<label for="reason-{item_no}">Reason</label>'
            f'<select id="reason-{item_no}" name="reason"><option value="">default</option>{groups}</select>')


def _item(no: int, item: QueueItem, csrf: str) -> str:
    r = item.request
    reasons = " ".join(f'<span class="tag tag-{e(x)}">{e(_REASON_TEXT[x])}</span>' for x in r.reasons)
    thumb = (f'<img class="thumb" src="/thumb/{e(item.key)}" alt="Image under review: {e(r.content_id)}" '
             f'width="256" height="256" loading="lazy">' if r.image_ref else
             '<div class="thumb none">no image reference</div>')
    label_id = f"title-{no}"
    return (
        f'<article class="item" tabindex="0" id="item-{no}" data-key="{e(item.key)}" aria-labelledby="{label_id}">'
        f'<h2 id="{label_id}"><span class="position">{no}.</span> <code>{e(r.content_id)}</code></h2>'
        f'<p class="meta">tenant <code>{e(r.tenant)}</code> &middot; requested {e(_when(r.requested_at))} '
        f"&middot; {reasons}</p>"
        f'<div class="body">{thumb}<div class="details">{_scores(r)}{_context(r)}</div></div>'
        '<p class="armed-hint" role="status" aria-live="assertive"></p>'
        f'<form class="decide" method="post" action="/decide">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">'
        f'<input type="hidden" name="key" value="{e(item.key)}">'
        f'<input type="hidden" name="request_id" value="{e(item.request.request_id)}">'
        f"{_reason_select(no)}"
        f'<label for="note-{no}">Note</label><input id="note-{no}" name="note" maxlength="2000">'
        f'<button type="submit" name="decision" value="confirm_unsafe" class="confirm">'
        f"Confirm unsafe <kbd>c</kbd></button>"
        f'<button type="submit" name="decision" value="overturn_safe" class="overturn">'
        f"Overturn: safe <kbd>o</kbd></button>"
        "</form></article>"
    )


def queue_page(
    items: Sequence[QueueItem], *, reviewer: str, csrf: str, depth: int, flash: str | None = None,
    recent: Sequence[QueueItem] = (),
) -> str:
    """The queue: pending items, most urgent first, each with its decision form."""
    notice = f'<p class="flash" role="status">{e(flash)}</p>' if flash else ""
    listing = "".join(_item(i + 1, item, csrf) for i, item in enumerate(items)) or (
        '<p class="empty" tabindex="0">Nothing waiting for review.</p>'
    )
    done = "".join(
        f"<li><code>{e(i.request.content_id)}</code>: {e(i.decision.decision)} ({e(i.decision.reason)}) by "
        f"{e(i.decision.reviewer)}</li>"
        for i in recent if i.decision is not None
    )
    recent_html = f'<section class="recent"><h2>Recent decisions</h2><ul>{done}</ul></section>' if done else ""
    body = (
        '<header><h1>vitguard review</h1>'
        f'<p>Logged in as <strong>{e(reviewer)}</strong> &middot; <span id="depth">{depth}</span> waiting</p>'
        '<form method="post" action="/logout" class="logout">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}"><button type="submit">Log out</button></form>'
        "</header>"
        '<p class="help" id="help">Keys: <kbd>j</kbd>/<kbd>k</kbd> next/previous item, <kbd>c</kbd> confirm '
        "unsafe, <kbd>o</kbd> overturn (safe), each pressed twice (the first press arms it and says so); or "
        "<kbd>Tab</kbd> through each item's form.</p>"
        f'{notice}<main id="queue" aria-describedby="help">{listing}</main>{recent_html}'
    )
    return _page(f"vitguard review ({depth})", body, csrf=csrf)
