"""A load-generating client: opens a connection per request, sends a message, reads the answer
to EOF, and reports successes, failures by kind, each backend's share and latency percentiles.
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

from hdrh.histogram import HdrHistogram

from balancer.config import Address

SERVER = re.compile(rb"Server (\d+)")
READ_TIMEOUT = 10.0


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
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
        return "timeout"
    return type(exc).__name__


async def one_request(target: Address, message: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(message)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


async def run_load(
    target: Address,
    *,
    concurrency: int,
    requests: int | None,
    duration: float | None,
    message: bytes,
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
                    answer = await one_request(target, message)
            except (OSError, TimeoutError) as exc:
                results.failures[failure_kind(exc)] += 1
            else:
                if not answer:
                    results.failures["empty"] += 1
                else:
                    results.succeeded += 1
                    results.latency.record_value(max(1, int((time.perf_counter() - begin) * 1e6)))
                    match = SERVER.search(answer)
                    results.served_by[match.group(1).decode() if match else "other"] += 1
                    if callable(on_response):
                        on_response(number, answer)
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
    if results.succeeded:
        h = results.latency
        figures = "  ".join(f"p{p} {h.get_value_at_percentile(p) / 1000:.2f}" for p in (50, 90, 99))
        print(f"latency ms: {figures}  max {h.get_max_value() / 1000:.2f}", file=out)


def main(
    target: Address,
    concurrency: int,
    requests: int | None,
    duration: float | None,
    message: bytes,
    show_responses: bool,
) -> int:
    out = sys.stdout

    def show(number: int, answer: bytes) -> None:
        print(f"Client {number}: {answer.decode(errors='replace').strip()}", file=out, flush=True)

    on_response = show if show_responses else None
    if out.isatty() and not show_responses:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("requests", total=requests if requests else None)
            results, elapsed = asyncio.run(
                run_load(
                    target,
                    concurrency=concurrency,
                    requests=requests,
                    duration=duration,
                    message=message,
                    progress=lambda: bar.advance(task),
                )
            )
    else:
        results, elapsed = asyncio.run(
            run_load(
                target,
                concurrency=concurrency,
                requests=requests,
                duration=duration,
                message=message,
                on_response=on_response,
            )
        )
    report(results, elapsed, out)
    return 0 if results.failed == 0 else 1
