"""The health check's HTTP response reading: pure, exact, and never anything but a status,
a request for more bytes, or ValueError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer.config import parse_status_ranges
from balancer.health.checks import http_check_request, http_response_status, status_ok


def test_statuses() -> None:
    assert http_response_status(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") == 200
    assert http_response_status(b"HTTP/1.0 503 Service Unavailable\r\n\r\nbusy") == 503
    assert http_response_status(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No\r\n\r\n") == 204
    assert http_response_status(b"HTTP/1.1 200 OK\r\nContent-") is None
    with pytest.raises(ValueError, match="closed before a complete response head, after 17 "):
        http_response_status(b"HTTP/1.1 200 OK\r\n", complete=True)
    with pytest.raises(ValueError, match=r"^connection closed without a response$"):
        http_response_status(b"", complete=True)
    with pytest.raises(ValueError, match="malformed HTTP response"):
        http_response_status(b"SSH-2.0-OpenSSH\r\n\r\n")
    ranges = parse_status_ranges("200-299,304")
    assert status_ok(204, ranges) and status_ok(304, ranges) and not status_ok(301, ranges)
    request = http_check_request("/health", "example.com")
    assert request.startswith(b"GET /health HTTP/1.1\r\nHost: example.com\r\n")
    assert request.endswith(b"\r\n\r\n")


@given(st.binary(max_size=200), st.booleans())
def test_fuzz(data: bytes, complete: bool) -> None:
    try:
        status = http_response_status(data, complete=complete)
    except ValueError:
        return
    assert status is None or 100 <= status <= 999


@given(st.integers(200, 599), st.binary(max_size=50))
def test_any_status_read_back(status: int, body: bytes) -> None:
    head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    assert http_response_status(head + body) == status
