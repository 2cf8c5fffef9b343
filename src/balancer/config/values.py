"""Converters for single config values: each takes what TOML gave and returns the value or
raises ValueError (or TypeError) with a message that quotes the bad value.

The flags of `balancer run` use the same ones, so a value means the same in both places.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path

from balancer.config.model import MAX_WORKERS

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
MAX_DURATION = (2**31 - 1) / 1000  # seconds: HAProxy's limit, 2^31-1 ms (about 24.8 days)


def parse_duration(value: object) -> float:
    """Seconds from `500ms`, `3s`, `5m`, `1h`, or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 500ms, 3s or 5m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a duration such as 500ms, 3s or 5m, got {value!r}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {value!r}")
    if not seconds <= MAX_DURATION:  # (also NaN)
        raise ValueError(f"duration must be at most 2147483647ms (about 24.8 days), got {value!r}")
    return seconds


def parse_port_range(text: str) -> tuple[int, int]:
    """`9001-9009` as (9001, 9009)."""
    match = re.fullmatch(r"(\d+)-(\d+)", text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"expected FIRST-LAST, as 9001-9009, got {text!r}")
    first, last = int(match.group(1)), int(match.group(2))
    if not (1 <= first <= last <= 65535):
        raise ValueError(f"expected 1 <= FIRST <= LAST <= 65535, got {text!r}")
    if last - first >= 1024:
        raise ValueError(f"a port range may hold at most 1024 ports, got {text!r}")
    return first, last


def parse_status_ranges(value: object) -> tuple[tuple[int, int], ...]:
    """`200-399`, `200`, `"200,204,300-302"` or a list of those, as inclusive ranges."""
    items = value if isinstance(value, list) else [value]
    ranges = []
    for item in items:
        for part in str(item).split(",") if isinstance(item, str | int) else [item]:
            match = re.fullmatch(r"\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?", str(part))
            if isinstance(part, bool) or not match:
                raise ValueError(
                    f"expected HTTP statuses such as 200-399 or 200,204, got {value!r}"
                )
            low = int(match.group(1))
            high = int(match.group(2) or low)
            if not 100 <= low <= high <= 599:
                raise ValueError(f"expected statuses from 100 to 599, low first, got {value!r}")
            ranges.append((low, high))
    if not ranges:
        raise ValueError(f"expected at least one status, got {value!r}")
    return tuple(ranges)


def string(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def choice(*options: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return str(value)

    return convert


def int_in(low: int, high: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {value!r}")
        return value

    return convert


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"duration must be more than zero, got {value!r}")
    return seconds


_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_service_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"expected 1-64 letters, digits, '_', '.' or '-', got {value!r}")
    return value


def networks(value: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if not isinstance(value, list):
        raise TypeError(f'expected a list of CIDRs such as ["10.0.0.0/8"], got {value!r}')
    networks = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(string(item), strict=False))
        except (ValueError, TypeError):
            raise ValueError(f"not an address or CIDR: {item!r}") from None
    return tuple(networks)


def rate(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= 10_000_000  # (also NaN)
    ):
        raise ValueError(f"expected a number from 0 to 10000000, got {value!r}")
    return float(value)


def regex(value: object) -> str:
    text = string(value)
    try:
        re.compile(text.encode())
    except (re.error, OverflowError, RecursionError) as exc:  # (a{4294967296}; deep nesting)
        raise ValueError(f"not a valid regular expression: {exc}, in {text!r}") from None
    return text


def http_path(value: object) -> str:
    text = string(value)
    if not text.startswith("/") or not text.isascii() or any(c in text for c in " \r\n"):
        raise ValueError(
            "expected a path starting with /, in ASCII (percent-encode other characters) and "
            f"without spaces, got {text!r}"
        )
    return text


def http_host(value: object) -> str | None:
    """The Host header of an http check; empty: the backend's address."""
    text = string(value)
    if not text.isascii() or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(
            "expected a host name in ASCII (IDNA for others) without spaces or control "
            f"characters, got {text!r}"
        )
    return text or None


def message(value: object) -> bytes:
    text = string(value)
    return text.encode().decode("unicode_escape").encode("latin-1")


def read_token_file(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
    if not token:
        raise ValueError(f"{path!r} is empty")
    return token


def parse_workers(value: object) -> int:
    """A number of worker processes, or "auto" for one per CPU."""
    if value == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ValueError(
            f"expected a number of workers from 1 to {MAX_WORKERS} or auto, got {value!r}"
        )
    return value


_ALGORITHM = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?$"
)


def algorithm_name(value: object) -> str:
    """A registered algorithm's name, or a dotted path to a class (`pkg.module:Class`). Only
    the form is checked here: whether it imports is the selection's to say."""
    if not isinstance(value, str):
        raise TypeError(f"expected an algorithm name, got {value!r}")
    if not _ALGORITHM.match(value):
        raise ValueError(
            f"expected an algorithm name or a dotted path as package.module:Class, got {value!r}"
        )
    return value
