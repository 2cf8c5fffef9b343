"""Clients the tests talk to a balancer with: its admin API, and echo transfers through it."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import urllib.error
import urllib.request
from typing import Any

MIB = 1024 * 1024


def call(
    admin: int, method: str, path: str, body: object = None, token: str | None = None,
    raw: bytes | None = None, content_type: str | None = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:  # fmt: skip
    """One admin API request on 127.0.0.1:`admin`: its status and its JSON (or text) body."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"http://127.0.0.1:{admin}{path}", data=data, method=method)
    if content_type is not None:
        request.add_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        request.add_header(name, value)  # (a Host given here replaces urllib's own)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        payload = exc.read()
        status = exc.code
    try:
        return status, json.loads(payload)
    except json.JSONDecodeError:
        return status, payload.decode()


def echo_transfer(port: int, size: int, seed: int) -> tuple[str, str]:
    """Send `size` pseudo-random bytes, half-close, read the echo to EOF; both sha256s."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB, distinct per seed
    sent = hashlib.sha256()
    got = hashlib.sha256()
    received = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:

        def reader() -> None:
            nonlocal received
            while chunk := s.recv(256 * 1024):
                got.update(chunk)
                received += len(chunk)

        thread = threading.Thread(target=reader)
        thread.start()
        remaining = size
        while remaining:
            piece = block[: min(len(block), remaining)]
            s.sendall(piece)
            sent.update(piece)
            remaining -= len(piece)
        s.shutdown(socket.SHUT_WR)  # half-close: the echo must still come back whole
        thread.join(timeout=120)
        assert not thread.is_alive(), "echo did not finish"
    assert received == size
    return sent.hexdigest(), got.hexdigest()
