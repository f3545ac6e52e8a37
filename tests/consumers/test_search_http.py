"""What a ``POST /search`` request means, by content type, and what each failure answers (pure)."""

from __future__ import annotations

import pytest

from tests.consumers.test_classify_http import multipart
from vitguard.banks.lookup import BanksDisabledError, lookup_hash
from vitguard.consumers.classify_http import UnsupportedMediaTypeError
from vitguard.consumers.http_gate import http_failure
from vitguard.consumers.search_http import LookupCall, parse_lookup, parse_search
from vitguard.errors import FetchError, InputError, ServiceUnavailableError
from vitguard.search import NotStoredError, SearchRequest


def test_a_json_search_starts_from_a_content_id_or_a_reference() -> None:
    call = parse_search("application/json", b'{"content_id": "item-1", "k": 3, "label": "unsafe"}', {})
    assert call.data is None and call.request == SearchRequest(content_id="item-1", k=3, label=["unsafe"])
    call = parse_search("application/json", b'{"image_ref": "https://example.com/a.jpg"}', {})
    assert call.request.image_ref == "https://example.com/a.jpg"


@pytest.mark.parametrize("body", [
    b"{}",  # neither start
    b'{"k": 3}',
    b'{"image_ref": "ftp://x/y.jpg"}',  # a reference the stream refuses
    b'{"image_ref": "https://x/y.jpg", "content_id": "a"}',
    b"[1]",
    b'{"content_id": "a", "tenant": "x\\" or tenant != \\""}',
])
def test_a_bad_json_search_is_a_schema_violation(body: bytes) -> None:
    with pytest.raises(InputError) as caught:
        parse_search("application/json", body, {})
    assert caught.value.reason == "schema_violation"


def test_a_json_search_takes_no_url_filters() -> None:
    with pytest.raises(InputError):
        parse_search("application/json", b'{"content_id": "a"}', {"k": ["3"]})


def test_an_image_body_takes_its_filters_from_the_url() -> None:
    call = parse_search("image/jpeg", b"\xff\xd8...", {"k": ["2"], "tenant": ["a,b"]})
    assert call.data == b"\xff\xd8..." and call.request == SearchRequest(k=2, tenant=["a", "b"])
    content_type, body = multipart(("file", "a.jpg", b"\xff\xd8..."))
    assert parse_search(content_type, body, {}).data == b"\xff\xd8..."
    content_type, body = multipart(("file", "a.jpg", b"1"), ("file", "b.jpg", b"2"))
    with pytest.raises(InputError, match="2 images"):
        parse_search(content_type, body, {})
    with pytest.raises(InputError):
        parse_search("image/png", b"\x89PNG", {"content_id": ["a"]})
    with pytest.raises(UnsupportedMediaTypeError):
        parse_search("text/plain", b"hello", {})


def test_each_failure_has_its_status() -> None:
    assert http_failure(NotStoredError("no item"))[::2] == ("not_found", 404)
    assert http_failure(ServiceUnavailableError("Milvus down"))[::2] == ("unavailable", 503)
    assert http_failure(InputError("not_an_image", "no"))[::2] == ("not_an_image", 400)
    assert http_failure(FetchError("fetch_timeout", "slow"))[::2] == ("fetch_timeout", 504)
    assert http_failure(UnsupportedMediaTypeError("text/plain"))[::2] == ("unsupported_media_type", 415)
    assert http_failure(RuntimeError("bug"))[::2] == ("internal_error", 500)
    from aiohttp.web import HTTPRequestEntityTooLarge

    too_large = HTTPRequestEntityTooLarge(max_size=10, actual_size=20)  # aiohttp's body limit: was a 500
    assert http_failure(too_large)[::2] == ("fetch_too_large", 413)


PDQ = "f" * 32 + "0" * 32


def test_a_lookup_takes_a_hash_a_reference_or_the_image() -> None:
    assert parse_lookup("application/json", f'{{"hash": "0x{PDQ.upper()}"}}'.encode()) == LookupCall(hash=PDQ)
    assert parse_lookup("application/json", b'{"image_ref": "https://example.com/a.jpg"}') == LookupCall(
        image_ref="https://example.com/a.jpg")
    assert parse_lookup("image/png", b"\x89PNG") == LookupCall(data=b"\x89PNG")


@pytest.mark.parametrize("body", [
    b"{}", b'{"hash": "abc"}', b'{"hash": 3}', b'{"hash": "' + PDQ.encode() + b'", "image_ref": "https://x/y"}',
    b'{"image_ref": "ftp://x/y.jpg"}', b'{"pdq": "' + PDQ.encode() + b'"}', b'["' + PDQ.encode() + b'"]',
])
def test_a_bad_lookup_is_a_schema_violation(body: bytes) -> None:
    with pytest.raises(InputError) as caught:
        parse_lookup("application/json", body)
    assert caught.value.reason == "schema_violation"


def test_a_worker_without_banks_says_so() -> None:
    with pytest.raises(BanksDisabledError) as caught:
        lookup_hash(None, PDQ)
    assert http_failure(caught.value)[::2] == ("banks_disabled", 404)
