"""The pure SSRF policy: which addresses and URLs the fetcher may contact."""

from __future__ import annotations

import ipaddress

import pytest
from yarl import URL

from vitguard.errors import FetchError
from vitguard.fetch.guard import AddressPolicy, blocked_reason, literal_ip, redirect_target, validate_http_url

BLOCKED = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "::1": "loopback",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "169.254.1.1": "link-local",
    "fe80::1": "link-local",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "0.0.0.0": "unspecified",  # noqa: S104 - an address to refuse, not to bind
    "::": "unspecified",
    "100.64.0.1": "carrier-grade NAT",
    "100.127.255.254": "carrier-grade NAT",
    "fd12:3456::1": "unique local",
    "fc00::1": "unique local",
    "240.0.0.1": "",  # reserved (class E)
    "255.255.255.255": "",
    "192.0.2.10": "",  # documentation range: not globally routable
    "198.18.0.1": "",  # benchmarking range
    "169.254.169.254": "cloud metadata",
    "fd00:ec2::254": "cloud metadata",
    "100.100.100.200": "cloud metadata",
    "::ffff:127.0.0.1": "loopback",
    "::ffff:10.0.0.1": "private",
    "::ffff:169.254.169.254": "cloud metadata",
    "2002:7f00:1::": "loopback",  # 6to4 around 127.0.0.1
    "64:ff9b::a9fe:a9fe": "cloud metadata",  # NAT64 of 169.254.169.254
}

PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2001:4860:4860::8888", "::ffff:8.8.8.8"]


@pytest.mark.parametrize(("address", "why"), sorted(BLOCKED.items()))
def test_non_public_addresses_are_blocked_with_a_reason(address: str, why: str) -> None:
    reason = blocked_reason(ipaddress.ip_address(address))
    assert reason is not None
    assert why in reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None
    AddressPolicy().check(ipaddress.ip_address(address))


def test_check_raises_fetch_blocked_naming_host_and_address() -> None:
    with pytest.raises(FetchError) as info:
        AddressPolicy().check(ipaddress.ip_address("10.0.0.5"), host="intranet.example")
    assert info.value.reason == "fetch_blocked"
    assert "intranet.example -> 10.0.0.5" in str(info.value)


def test_allow_list_exempts_only_its_networks() -> None:
    policy = AddressPolicy.from_cidrs(["127.0.0.0/8", "10.20.0.0/16"])
    policy.check(ipaddress.ip_address("127.0.0.1"))
    policy.check(ipaddress.ip_address("10.20.3.4"))
    policy.check(ipaddress.ip_address("::ffff:127.0.0.1"))  # mapped form of an allowed address
    for other in ["10.21.0.1", "192.168.0.1", "169.254.169.254", "::1"]:
        with pytest.raises(FetchError):
            policy.check(ipaddress.ip_address(other))


def test_one_bad_record_refuses_the_whole_name() -> None:
    addresses = [ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("127.0.0.1")]
    with pytest.raises(FetchError) as info:
        AddressPolicy().check_all(addresses, host="mixed.example")
    assert info.value.reason == "fetch_blocked"
    with pytest.raises(FetchError) as empty:
        AddressPolicy().check_all([], host="nothing.example")
    assert empty.value.reason == "fetch_failed"


def test_literal_ip_parses_literals_and_refuses_numeric_tricks() -> None:
    assert literal_ip("127.0.0.1") == ipaddress.ip_address("127.0.0.1")
    assert literal_ip("[::1]") == ipaddress.ip_address("::1")
    assert literal_ip("::1") == ipaddress.ip_address("::1")
    assert literal_ip("images.example.com") is None
    assert literal_ip("1.example") is None
    for trick in ["127.1", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f000001"]:
        with pytest.raises(FetchError) as info:
            literal_ip(trick)
        assert info.value.reason == "fetch_blocked", trick


def test_validate_http_url() -> None:
    assert validate_http_url("https://img.example/a.jpg").host == "img.example"
    for bad in ["ftp://x/y", "http://", "gopher://x", "http://x:99999/"]:
        with pytest.raises(FetchError) as info:
            validate_http_url(bad)
        assert info.value.reason == "unsupported_reference", bad


def test_redirect_target_resolves_relative_and_refuses_other_schemes() -> None:
    base = URL("http://a.example/dir/img.jpg")
    assert str(redirect_target(base, "/other.jpg")) == "http://a.example/other.jpg"
    assert str(redirect_target(base, "next.jpg")) == "http://a.example/dir/next.jpg"
    assert str(redirect_target(base, "https://b.example/x")) == "https://b.example/x"
    for target, reason in [("file:///etc/passwd", "fetch_blocked"), ("gopher://x/", "fetch_blocked"),
                           (None, "fetch_failed"), ("", "fetch_failed")]:
        with pytest.raises(FetchError) as info:
            redirect_target(base, target)
        assert info.value.reason == reason
