"""A load-generating client: opens a connection per request, sends it, reads the answer to
EOF, and reports successes, failures by kind, each backend's share and latency percentiles.

Two protocols: `http` sends `GET PATH` and counts an answer below 500 as a success (the
demo's HTTP backends, or any web server); `line` sends a message and counts any answer (the
`hello` backends of server.py, which answer whatever they are sent).
"""

from __future__ import annotations

import asyncio
import errno
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO

import h11
from hdrh.histogram import HdrHistogram

from balancer.core.address import Address

SERVER = re.compile(rb"Server (\d+)")  # "Hello from Server 9001!"
DEMO_SERVER = re.compile(rb"^balancer-demo/(\d+)$")  # the demo's Server header
READ_TIMEOUT = 10.0
MAX_ANSWER = 16 * 1024 * 1024  # bytes read of one answer at most


class NotHttp(Exception):
    """The answer was not an HTTP response (a `line` server answering an HTTP request)."""


class HttpError(Exception):
    """An HTTP answer of 500 or more: the balancer's own 503, or a backend's failure."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@dataclass
class Results:
    succeeded: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    served_by: Counter[str] = field(default_factory=Counter)
    latency: HdrHistogram = field(default_factory=lambda: HdrHistogram(1, 60_000_000, 3))

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def failure_kind(exc: BaseException) -> str:
    if isinstance(exc, HttpError):
        return f"http {exc.status}"
    if isinstance(exc, NotHttp):
        return "not http"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
        return "timeout"
    return type(exc).__name__


def http_request(target: Address, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: balancer-client\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")


def read_http(answer: bytes) -> tuple[int, bytes, bytes]:
    """The status, the demo backend's port (from its Server header, else b"") and the body of
    a whole HTTP response; NotHttp if it is none."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "client")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(answer)
    conn.receive_data(b"")
    status, server, body = 0, b"", b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
                for name, value in event.headers:
                    if name == b"server" and (match := DEMO_SERVER.match(value)):
                        server = match.group(1)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
            elif event is h11.NEED_DATA:
                raise NotHttp("the answer ended before a whole HTTP response")
    except h11.RemoteProtocolError as exc:
        raise NotHttp(str(exc)) from None
    if not status:
        raise NotHttp("no HTTP response")
    return status, server, body


async def one_request(target: Address, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read(MAX_ANSWER)
    finally:
        writer.close()


def served_by(answer: bytes, protocol: str) -> str:
    """Which demo backend answered, as its port, or "other"; raises for an HTTP failure."""
    if protocol == "http":
        status, server, body = read_http(answer)
        if status >= 500:
            raise HttpError(status)
        if server:
            return server.decode()
        answer = body
    match = SERVER.search(answer)
    return match.group(1).decode() if match else "other"


async def run_load(
    target: Address,
    *,
    concurrency: int,
    requests: int | None,
    duration: float | None,
    request: bytes,
    protocol: str = "line",
    on_response: object = None,
    progress: object = None,
) -> tuple[Results, float]:
    results = Results()
    issued = 0
    deadline = time.monotonic() + duration if duration else None

    def take() -> bool:
        nonlocal issued
        if requests is not None and issued >= requests:
            return False
        if deadline is not None and time.monotonic() >= deadline:
            return False
        issued += 1
        return True

    async def worker(number: int) -> None:
        while take():
            begin = time.perf_counter()
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    answer = await one_request(target, request)
                if not answer:
                    results.failures["empty"] += 1
                else:
                    server = served_by(answer, protocol)
                    results.succeeded += 1
                    results.latency.record_value(max(1, int((time.perf_counter() - begin) * 1e6)))
                    results.served_by[server] += 1
                    if callable(on_response):
                        on_response(number, answer)
            except (OSError, TimeoutError, NotHttp, HttpError) as exc:
                results.failures[failure_kind(exc)] += 1
            if callable(progress):
                progress()

    began = time.perf_counter()
    await asyncio.gather(*(worker(i + 1) for i in range(concurrency)))
    return results, time.perf_counter() - began


def report(results: Results, elapsed: float, out: IO[str]) -> None:
    total = results.succeeded + results.failed
    rate = total / elapsed if elapsed > 0 else 0.0
    print(f"requests: {total} in {elapsed:.2f}s ({rate:.1f}/s)", file=out)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(results.failures.items())) or "none"
    print(f"succeeded: {results.succeeded}  failed: {results.failed} ({kinds})", file=out)
    if results.served_by:
        print("served by:", file=out)
        for name, count in sorted(results.served_by.items()):
            label = f"Server {name}" if name.isdigit() else name
            print(f"  {label}: {count} ({100.0 * count / results.succeeded:.1f}%)", file=out)
    if results.failures.get("not http"):
        print(
            "  (not http: the target answered, but not in HTTP; for a plain-text server such "
            "as server.py, use --protocol line)",
            file=out,
        )
    if results.succeeded:
        h = results.latency
        figures = "  ".join(f"p{p} {h.get_value_at_percentile(p) / 1000:.2f}" for p in (50, 90, 99))
        print(f"latency ms: {figures}  max {h.get_max_value() / 1000:.2f}", file=out)


def main(
    target: Address,
    *,
    concurrency: int,
    requests: int | None,
    duration: float | None,
    protocol: str = "http",
    path: str = "/",
    message: bytes = b"Hello from client",
    show_responses: bool = False,
) -> int:
    out = sys.stdout
    request = http_request(target, path) if protocol == "http" else message

    def show(number: int, answer: bytes) -> None:
        if protocol == "http":
            status, _, body = read_http(answer)
            answer = f"{status} ".encode() + body
        print(f"Client {number}: {answer.decode(errors='replace').strip()}", file=out, flush=True)

    def load(**hooks: object) -> tuple[Results, float]:
        return asyncio.run(
            run_load(
                target,
                concurrency=concurrency,
                requests=requests,
                duration=duration,
                request=request,
                protocol=protocol,
                **hooks,
            )
        )

    if out.isatty() and not show_responses:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("requests", total=requests if requests else None)
            results, elapsed = load(progress=lambda: bar.advance(task))
    else:
        results, elapsed = load(on_response=show if show_responses else None)
    report(results, elapsed, out)
    return 0 if results.failed == 0 else 1
