"""``POST /classify`` over HTTP: what a request body means (told apart by its content type) and which status
each refusal gets. Pure: no I/O; the view in :mod:`vitguard.consumers.web` does the rest.

* ``application/json`` (or ``text/json``, ``application/*+json``): ``{"image_ref": ..., "content_id"?: ...,
  "tenant"?: ..., "surface"?: ..., "policy"?: ...}``, validated as an input event is;
* any kind: the URL parameters ``tenant``, ``surface`` and ``policy`` say whose policy judges the images;
* ``multipart/form-data`` (``curl -F file=@x.jpg``): every part with a file name is one image (several make
  a batch, answered together);
* ``image/*``, ``video/*``, ``application/octet-stream`` or no content type: the body is the image;
* anything else: 415.

Status codes: 4xx only for the caller's fault (400 a bad image or reference, 413 too large, 415 a body of
another kind); 502 when the referenced image could not be fetched (its server failed, answered 404, or
redirected too often) and 504 when it did not arrive in time, so a client can tell a bad image from a
retryable fetch problem.
"""

from __future__ import annotations

import email.parser
import email.policy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vitguard.errors import InputError
from vitguard.schemas.events import MAX_ID_LEN

__all__ = ["MAX_PARTS", "ClassifyCall", "UnsupportedMediaTypeError", "parse_request", "status_for"]

MAX_PARTS = 32
"""The most images one multipart request may carry."""

_JSON_TYPES = frozenset({"application/json", "text/json"})
_BYTES_TYPES = frozenset({"", "application/octet-stream"})
_UPSTREAM_STATUS = {
    "fetch_timeout": 504,
    "fetch_failed": 502,
    "fetch_not_found": 502,
    "too_many_redirects": 502,
    "fetch_too_large": 413,
    "inline_too_large": 413,
}


class UnsupportedMediaTypeError(ValueError):
    """The body is of a kind ``/classify`` does not read (415; an HTTP refusal, not a dead-letter reason)."""

    reason = "unsupported_media_type"

    def __init__(self, content_type: str) -> None:
        self.message = (f"cannot read a {content_type!r} body: send the image (image/*, video/*, "
                        'application/octet-stream), multipart/form-data with file parts, or application/json '
                        '{"image_ref": ...}')
        super().__init__(self.message)


@dataclass(frozen=True)
class ClassifyCall:
    """One image to classify: its bytes, or a reference (and the optional ids of a JSON request)."""

    data: bytes | None = None
    image_ref: str | None = None
    content_id: str | None = None
    tenant: str = "default"
    name: str | None = None
    """The file name of a multipart part (echoed in a batch's answer)."""
    surface: str | None = None
    policy: str | None = None
    """A policy of the document in force to judge under instead of the tenant's."""

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`~vitguard.pipeline.runtime.runner.Runner.classify`."""
        judged = {"tenant": self.tenant, "surface": self.surface, "policy": self.policy}
        if self.image_ref is not None:
            return {"image_ref": self.image_ref, "content_id": self.content_id, **judged}
        return {"data": self.data, **judged}


def status_for(reason: str) -> int:
    """The HTTP status of a refusal with this reason code."""
    return _UPSTREAM_STATUS.get(reason, 400)


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def parse_request(content_type: str, body: bytes,
                  query: Mapping[str, Sequence[str]] | None = None) -> tuple[list[ClassifyCall], bool]:
    """The images a request asks about, and whether it is a batch (a multipart request: answered as a list).

    ``query`` (the URL's parameters) may name the ``tenant``, ``surface`` or ``policy`` to judge every image
    of the request under; a JSON body may name them too (the body wins).

    Raises:
        UnsupportedMediaTypeError: a body of another kind.
        InputError: a JSON body that is not a valid request, a multipart body without a file part, or an
            unknown or malformed URL parameter.
    """
    judged: dict[str, Any] = _judged_as(query or {})
    kind = media_type(content_type)
    if kind in _JSON_TYPES or (kind.startswith("application/") and kind.endswith("+json")):
        return [_json_call(body, judged)], False
    if kind == "multipart/form-data":
        return [replace(c, **judged) for c in _multipart_calls(content_type, body)], True
    if kind in _BYTES_TYPES or kind.startswith(("image/", "video/")):
        return [ClassifyCall(data=body, **judged)], False
    raise UnsupportedMediaTypeError(kind)


_JUDGED_AS = {"tenant": MAX_ID_LEN, "surface": MAX_ID_LEN, "policy": 64}
"""The URL parameters of /classify, and the longest value of each."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/\-]*")


def _judged_as(query: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """The URL's ``tenant``, ``surface`` and ``policy``, each checked as an event's identifiers are."""
    unknown = sorted(set(query) - set(_JUDGED_AS))
    if unknown:
        raise InputError("schema_violation", f"unknown URL parameter(s): {unknown} (known: {list(_JUDGED_AS)})")
    out: dict[str, str] = {}
    for name, values in query.items():
        if len(values) != 1:
            raise InputError("schema_violation", f"URL parameter {name} given {len(values)} times")
        value = values[0]
        if len(value) > _JUDGED_AS[name] or not _NAME.fullmatch(value):
            raise InputError("schema_violation", f"{name}: not a name (a letter or digit, then letters, digits and "
                                                 f"._:@/-; at most {_JUDGED_AS[name]} characters)")
        out[name] = value
    return out


def _json_call(body: bytes, judged: Mapping[str, str]) -> ClassifyCall:
    from pydantic import ValidationError

    from vitguard.schemas.events import ImageEvent, load_json

    data = load_json(body)
    if not isinstance(data, dict) or not isinstance(data.get("image_ref"), str):
        raise InputError("schema_violation", 'expected a JSON object {"image_ref": "<http(s)|file|data URL>"}')
    unknown = set(data) - {"image_ref", "content_id", "tenant", "surface", "policy"}
    if unknown:
        raise InputError("schema_violation", f"unknown field(s): {sorted(unknown)}")
    policy = data.pop("policy", None)
    if policy is not None:
        policy = _judged_as({"policy": [policy if isinstance(policy, str) else ""]})["policy"]
    from_url = {k: v for k, v in judged.items() if k != "policy"}
    try:  # the same validation as an input event, so /classify refuses what the stream refuses
        event = ImageEvent.model_validate({"content_id": data.get("content_id") or "classify", **from_url, **data})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError("schema_violation", f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from exc
    return ClassifyCall(image_ref=event.image_ref, content_id=data.get("content_id"), tenant=event.tenant,
                        surface=event.surface, policy=policy or judged.get("policy"))


def _multipart_calls(content_type: str, body: bytes) -> list[ClassifyCall]:
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise InputError("schema_violation", "a multipart/form-data body without parts (is the boundary right?)")
    calls = []
    for part in message.iter_parts():
        name = part.get_filename()
        if name is None:
            continue  # a plain form field
        payload = part.get_payload(decode=True)
        calls.append(ClassifyCall(data=payload if isinstance(payload, bytes) else b"", name=name))
    if not calls:
        raise InputError("schema_violation", 'no file part: send the image as a file (curl -F "file=@photo.jpg")')
    if len(calls) > MAX_PARTS:
        raise InputError("schema_violation", f"{len(calls)} images in one request; at most {MAX_PARTS}")
    return calls
