"""What a ``POST /classify`` body means, by content type, and the status of each refusal (pure)."""

from __future__ import annotations

import pytest

from vitguard.consumers.classify_http import (
    MAX_PARTS,
    ClassifyCall,
    UnsupportedMediaTypeError,
    parse_request,
    status_for,
)
from vitguard.errors import InputError


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = "b0undary") -> tuple[str, bytes]:
    """(content type, body) as curl -F builds them: (field name, file name or None, bytes) per part."""
    chunks = []
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                      f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return f"multipart/form-data; boundary={boundary}", b"".join(chunks) + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("content_type", ["", "image/jpeg", "IMAGE/PNG; q=1", "video/mp4", "application/octet-stream"])
def test_image_bodies_are_the_image(content_type: str) -> None:
    assert parse_request(content_type, b"\x89PNG...") == ([ClassifyCall(data=b"\x89PNG...")], False)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "text/json",
                                          "application/vnd.vitguard+json"])
def test_json_bodies_carry_a_reference(content_type: str) -> None:
    calls, batch = parse_request(content_type, b'{"image_ref": "https://example.com/a.jpg", "tenant": "t1"}')
    assert not batch and calls == [ClassifyCall(image_ref="https://example.com/a.jpg", tenant="t1")]
    assert calls[0].kwargs() == {"image_ref": "https://example.com/a.jpg", "content_id": None, "tenant": "t1",
                                 "surface": None, "policy": None}


def test_a_json_body_is_validated_like_an_input_event() -> None:
    for body in (b'{"image_ref": "ftp://x/y.jpg"}', b'{"image_ref": 3}', b"[1]", b'{"image_ref": "x", "extra": 1}'):
        with pytest.raises(InputError) as caught:
            parse_request("application/json", body)
        assert caught.value.reason == "schema_violation"
    with pytest.raises(InputError) as caught:
        parse_request("application/json", b"{not json")
    assert caught.value.reason == "invalid_json"


def test_multipart_file_parts_are_a_batch_and_plain_fields_are_ignored() -> None:
    content_type, body = multipart(("note", None, b"hello"), ("file", "a.jpg", b"\xff\xd8AAA\r\n--x"),
                                   ("file", "b.png", b"\x89PNG"))
    calls, batch = parse_request(content_type, body)
    assert batch
    assert calls == [ClassifyCall(data=b"\xff\xd8AAA\r\n--x", name="a.jpg"),
                     ClassifyCall(data=b"\x89PNG", name="b.png")]
    assert calls[0].kwargs() == {"data": b"\xff\xd8AAA\r\n--x", "tenant": "default", "surface": None, "policy": None}


def test_multipart_without_a_file_or_with_too_many_is_refused() -> None:
    for parts in ([("note", None, b"hello")], [("file", f"{i}.jpg", b"x") for i in range(MAX_PARTS + 1)]):
        content_type, body = multipart(*parts)
        with pytest.raises(InputError):
            parse_request(content_type, body)
    with pytest.raises(InputError):
        parse_request("multipart/form-data; boundary=other", multipart(("file", "a.jpg", b"x"))[1])


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_other_bodies_are_415(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        parse_request(content_type, b"whatever")
    assert caught.value.reason == "unsupported_media_type" and content_type in caught.value.message


def test_upstream_failures_are_5xx_and_the_callers_are_4xx() -> None:
    assert status_for("fetch_timeout") == 504
    assert {status_for(r) for r in ("fetch_failed", "fetch_not_found", "too_many_redirects")} == {502}
    assert status_for("fetch_too_large") == status_for("inline_too_large") == 413
    for reason in ("not_an_image", "schema_violation", "fetch_blocked", "invalid_base64", "decompression_bomb"):
        assert status_for(reason) == 400


def test_the_url_names_whose_policy_judges_every_image_and_a_json_body_may_too() -> None:
    query = {"tenant": ["kids-app"], "surface": ["profile"], "policy": ["strict-v2"]}
    [call], _ = parse_request("image/png", b"\x89PNG", query)
    assert (call.tenant, call.surface, call.policy) == ("kids-app", "profile", "strict-v2")
    content_type, body = multipart(("file", "a.jpg", b"A"), ("file", "b.jpg", b"B"))
    calls, _ = parse_request(content_type, body, {"tenant": ["t1"]})
    assert [c.tenant for c in calls] == ["t1", "t1"]
    [call], _ = parse_request("application/json", b'{"image_ref": "https://example.com/a.jpg", "surface": "chat", '
                                                  b'"policy": "p2"}', {"tenant": ["t9"], "policy": ["p1"]})
    assert (call.tenant, call.surface, call.policy) == ("t9", "chat", "p2")  # the body wins


@pytest.mark.parametrize("query", [
    {"tenant": ["a b"]}, {"tenant": ["x", "y"]}, {"surface": ["-lead"]}, {"policy": ["p" * 65]},
    {"polcy": ["typo"]}, {"tenant": [""]},
])
def test_malformed_or_unknown_url_parameters_are_a_schema_violation(query: dict[str, list[str]]) -> None:
    with pytest.raises(InputError) as caught:
        parse_request("image/png", b"\x89PNG", query)
    assert caught.value.reason == "schema_violation"
    for body in (b'{"image_ref": "https://e.com/a.jpg", "policy": 3}', b'{"image_ref": "https://e.com/a.jpg", '
                                                                       b'"surface": "a b"}'):
        with pytest.raises(InputError):
            parse_request("application/json", body)


def test_a_tenant_bound_key_is_judged_as_its_tenant_and_refused_for_another() -> None:
    from vitguard.consumers.api_keys import ForbiddenTenantError
    from vitguard.consumers.web import bound_to

    calls = [ClassifyCall(data=b"a"), ClassifyCall(data=b"b", tenant="acme")]
    assert bound_to(calls, None) == calls
    assert [c.tenant for c in bound_to(calls, "acme")] == ["acme", "acme"]
    with pytest.raises(ForbiddenTenantError):
        bound_to([ClassifyCall(data=b"a", tenant="other")], "acme")
