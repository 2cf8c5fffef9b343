"""The PROXY protocol parser: exact cases, round trips, and fuzzing (it must only ever return a
header, ask for more bytes, or raise ProxyProtocolError)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.protocols.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    build_local,
    build_v1,
    build_v2,
    parse,
)

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)


def test_v1_examples() -> None:
    assert parse(b"PROXY TCP4 192.168.0.1 10.0.0.2 56324 443\r\nGET /") == (
        ProxyHeader(1, "tcp4", ("192.168.0.1", 56324), ("10.0.0.2", 443)),
        43,
    )
    assert parse(b"PROXY TCP6 ::1 ::2 1 2\r\n") == (
        ProxyHeader(1, "tcp6", ("::1", 1), ("::2", 2)),
        24,
    )
    assert parse(b"PROXY UNKNOWN\r\n") == (ProxyHeader(1, "unknown", None, None), 15)
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")[1] == 35  # type: ignore[index]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "needs 6 fields"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "must be TCP4, TCP6 or UNKNOWN"),
        (b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n", "bad IPv4 address"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "bad IPv4 address"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad IPv6 address"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "out of range"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "without CRLF"),
        (b"PROXY " + b"x" * 200, "without CRLF"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n", "not ASCII"),
        (V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12, "version must be 2"),
        (V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12, "command must be LOCAL or PROXY"),
        (V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x00" * 12, "is not TCP over IPv4 or IPv6"),
        (V2_SIGNATURE + b"\x21\x11\x00\x08" + b"\x00" * 8, "need 12 bytes"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "longer than"),
    ],
)
def test_malformed_headers_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        parse(data)


def test_v2_local_and_tlvs() -> None:
    local = V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert parse(local + b"rest") == (ProxyHeader(2, "unknown", None, None), 16)
    assert build_local("v2") == local  # what a health check sends
    assert build_local("v1") == b"PROXY UNKNOWN\r\n"
    header = build_v2(("10.1.2.3", 4000), ("10.9.9.9", 80))
    with_tlv = bytearray(header)
    with_tlv[14:16] = (12 + 5).to_bytes(2, "big")  # an extra TLV of 5 bytes is skipped
    parsed = parse(bytes(with_tlv) + b"\x04\x00\x02ab" + b"payload")
    assert parsed == (ProxyHeader(2, "tcp4", ("10.1.2.3", 4000), ("10.9.9.9", 80)), 33)


@given(
    st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports, st.binary(max_size=20)
)
def test_round_trip_both_versions(
    addresses: tuple[str, str], sport: int, dport: int, rest: bytes
) -> None:
    src, dst = addresses
    family = "tcp4" if ipaddress.ip_address(src).version == 4 else "tcp6"
    for build, version in ((build_v1, 1), (build_v2, 2)):
        header = build((src, sport), (dst, dport))
        expected = ProxyHeader(version, family, (src, sport), (dst, dport))
        assert parse(header + rest) == (expected, len(header))
        # Every strict prefix asks for more bytes instead of guessing.
        for cut in range(len(header)):
            assert parse(header[:cut]) is None


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    try:
        result = parse(data)
    except ProxyProtocolError:
        return
    if result is not None:
        header, length = result
        assert 0 < length <= len(data)
        assert header.version in (1, 2)


@settings(max_examples=500)
@given(st.sampled_from([b"PROXY ", V2_SIGNATURE]), st.binary(max_size=120))
def test_fuzz_after_a_valid_signature(prefix: bytes, tail: bytes) -> None:
    try:
        result = parse(prefix + tail)
    except ProxyProtocolError:
        return
    if result is not None:
        assert 0 < result[1] <= len(prefix + tail)
