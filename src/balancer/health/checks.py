"""Health checks without I/O: the request an http check sends, and how its answer is read.

Pure functions, tested exhaustively; `probe` does the I/O around them.
"""

from __future__ import annotations

import h11

MAX_RESPONSE = 65536  # bytes of a check response read at most


def http_check_request(path: str, host: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: balancer-health-check\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")


def http_response_status(data: bytes, *, complete: bool = False) -> int | None:
    """The status of an HTTP response's head in `data`, or None while more bytes are needed.

    `complete` says the peer has closed, so a missing head is an error. Malformed input raises
    ValueError with what h11 found wrong.
    """
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "check")]))
    conn.send(h11.EndOfMessage())
    if data:  # (h11 takes b"" for the EOF, and an EOF before any answer for a protocol error)
        conn.receive_data(data)
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                return int(event.status_code)
            if isinstance(event, h11.InformationalResponse):
                continue
            if event is h11.NEED_DATA:
                if complete and not data:
                    raise ValueError("connection closed without a response")
                if complete:
                    raise ValueError(
                        f"connection closed before a complete response head, after "
                        f"{len(data)} bytes"
                    )
                return None
            raise ValueError(f"unexpected {type(event).__name__} before a response")
    except h11.RemoteProtocolError as exc:
        raise ValueError(f"malformed HTTP response: {exc}") from None


def status_ok(status: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= status <= high for low, high in ranges)
