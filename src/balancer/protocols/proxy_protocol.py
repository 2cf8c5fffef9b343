"""The PROXY protocol, versions 1 and 2 (HAProxy's spec): a pure parser and builders.

`parse` takes the first bytes of a connection and returns the header with its length, None
while more bytes are needed, or raises ProxyProtocolError saying exactly what is wrong. It never
does I/O, so it is tested exhaustively and fuzzed.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER = struct.Struct("!12sBBH")
V2_MAX_BODY = 4096  # bytes of addresses and TLVs accepted; the spec allows more, nobody needs it
V2_FAMILIES = {0x11: ("tcp4", 4), 0x21: ("tcp6", 16)}

Endpoint = tuple[str, int]


class ProxyProtocolError(ValueError):
    """A malformed, truncated or unsupported PROXY protocol header."""


@dataclass(frozen=True)
class ProxyHeader:
    version: int
    family: str  # tcp4, tcp6, or unknown (v1 UNKNOWN, v2 LOCAL or UNSPEC)
    source: Endpoint | None
    destination: Endpoint | None


def parse(data: bytes) -> tuple[ProxyHeader, int] | None:
    """The header at the start of `data` and its length, or None if more bytes are needed."""
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        return _parse_v2(data) if len(data) >= len(V2_SIGNATURE) else None
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        return _parse_v1(data) if len(data) >= len(V1_PREFIX) else None
    raise ProxyProtocolError(f"not a PROXY protocol header: starts with {data[:16]!r}")


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == "0"):
        raise ProxyProtocolError(f"bad port {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"port {port} out of range")
    return port


def _address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"bad IPv{version} address {text!r}") from None
    if address.version != version or str(address) != text.lower():
        raise ProxyProtocolError(f"bad IPv{version} address {text!r}")
    return str(address)


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            raise ProxyProtocolError(f"v1 header without CRLF in its first {V1_MAX} bytes")
        return None
    try:
        line = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1 header is not ASCII") from None
    parts = line.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1, "unknown", None, None), end + 2
    if len(parts) != 6:
        raise ProxyProtocolError(f"v1 header needs 6 fields, got {len(parts)}: {line!r}")
    _, proto, src, dst, sport, dport = parts
    if proto not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"v1 protocol must be TCP4, TCP6 or UNKNOWN, got {proto!r}")
    version = 4 if proto == "TCP4" else 6
    header = ProxyHeader(
        1,
        proto.lower(),
        (_address(src, version), _port(sport)),
        (_address(dst, version), _port(dport)),
    )
    return header, end + 2


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if len(data) < V2_HEADER.size:
        return None
    _, version_command, family, length = V2_HEADER.unpack_from(data)
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"v2 version must be 2, got {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyProtocolError(f"v2 command must be LOCAL or PROXY, got {command}")
    if length > V2_MAX_BODY:
        raise ProxyProtocolError(f"v2 header of {length} bytes is longer than {V2_MAX_BODY}")
    total = V2_HEADER.size + length
    if len(data) < total:
        return None
    if command == 0 or family == 0x00:
        return ProxyHeader(2, "unknown", None, None), total
    if family not in V2_FAMILIES:
        raise ProxyProtocolError(f"v2 family/protocol 0x{family:02x} is not TCP over IPv4 or IPv6")
    name, size = V2_FAMILIES[family]
    if length < 2 * size + 4:
        raise ProxyProtocolError(f"v2 {name} addresses need {2 * size + 4} bytes, got {length}")
    body = data[V2_HEADER.size : total]
    src = ipaddress.ip_address(body[:size])
    dst = ipaddress.ip_address(body[size : 2 * size])
    sport, dport = struct.unpack_from("!HH", body, 2 * size)
    return ProxyHeader(2, name, (str(src), sport), (str(dst), dport)), total


def build_v1(source: Endpoint, destination: Endpoint) -> bytes:
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def build_v2(source: Endpoint, destination: Endpoint) -> bytes:
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        return V2_HEADER.pack(V2_SIGNATURE, 0x21, 0x00, 0)
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return V2_HEADER.pack(V2_SIGNATURE, 0x21, family, len(body)) + body


def build(version: str, source: Endpoint, destination: Endpoint) -> bytes:
    return build_v1(source, destination) if version == "v1" else build_v2(source, destination)


def build_local(version: str) -> bytes:
    """The header of a connection the sender opened for itself, such as a health check: v1
    UNKNOWN or v2 LOCAL, which tell the receiver to use the connection's own addresses."""
    return b"PROXY UNKNOWN\r\n" if version == "v1" else V2_HEADER.pack(V2_SIGNATURE, 0x20, 0, 0)
