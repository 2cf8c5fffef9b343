"""A backend's or listener's address, and the one parser for `HOST:PORT`."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_address(text: str, *, allow_zero_port: bool = False) -> Address:
    """Parse `HOST:PORT` (IPv6 as `[::1]:PORT`); raise ValueError saying what is wrong."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"expected [IPV6]:PORT, got {text!r}")
        host, port_text = text[1:end], text[end + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        if ":" in host:
            raise ValueError(f"IPv6 addresses need brackets, as [::1]:PORT, got {text!r}")
    if not port_text.isdigit():
        raise ValueError(f"port must be a number, got {port_text!r} in {text!r}")
    port = int(port_text)
    low = 0 if allow_zero_port else 1
    if not low <= port <= 65535:
        raise ValueError(f"port must be {low}-65535, got {port} in {text!r}")
    if not valid_host(host):
        raise ValueError(f"not a valid host name or IP address: {host!r} in {text!r}")
    return Address(host, port)


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def valid_host(host: str) -> bool:
    """An IP address, or a host name as RFC 1123 allows."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


def show_endpoint(endpoint: tuple[str, int]) -> str:
    """`host:port`, with IPv6 hosts in brackets."""
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
