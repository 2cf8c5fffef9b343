"""`balancer bench --selection`: what each algorithm costs as pools grow.

Pure Python, no network: for every registered algorithm and a few pool sizes, with equal
weights and with weights spread over 1-100, the time of a rebuild (one backend comes back and
another leaves, as health changes do, into a pool not seen before) together with the first
pick after it, which is where an algorithm's lazily built tables are paid for, and the time of
one pick after that. Round robin is measured twice: in one process, and as a worker walking the
schedule shared by all workers. The report is a markdown table of medians.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import IO

from balancer.core.address import Address
from balancer.pool.backend import Backend
from balancer.selection import REGISTRY, Algorithm, create
from balancer.selection.round_robin import RoundRobin
from balancer.service.shared import SharedCursor, SharedState

SIZES = (10, 100, 1000)
QUICK_SIZES = (10, 100)
WEIGHTS = ("1", "1-100")
REBUILDS = 6  # rebuilds timed per pool (each with another backend out than the last)
PICKS = 2000  # picks timed per batch
BATCHES = 5


def pool(size: int, weights: str, seed: int = 1) -> list[Backend]:
    spread = random.Random(seed)
    return [
        Backend(Address("127.0.0.1", 10000 + i), 1 if weights == "1" else spread.randint(1, 100))
        for i in range(size)
    ]


@contextmanager
def _algorithms() -> Iterator[list[tuple[str, Callable[[], Algorithm]]]]:
    """(name, factory) of every registered algorithm, and round robin as a worker."""
    shared = SharedState(None, 2)

    def worker_round_robin() -> Algorithm:
        algorithm = RoundRobin()
        algorithm.cursor = SharedCursor(shared, 0)
        return algorithm

    try:
        named: list[tuple[str, Callable[[], Algorithm]]] = [
            (name, partial(create, name)) for name in REGISTRY
        ]
        named.append(("round_robin (workers)", worker_round_robin))
        yield named
    finally:
        shared.close()


def _first(algorithm: Algorithm, client: str) -> Backend:
    return next(iter(algorithm.candidates(client)))


def measure(make: Callable[[], Algorithm], backends: list[Backend]) -> tuple[float, float]:
    """Medians: a rebuild with the first pick after it (ms), and a pick (us)."""
    algorithm = make()
    algorithm.update(backends)
    _first(algorithm, "10.0.0.1")
    rebuilds = []
    for i in range(REBUILDS):
        eligible = backends[:i] + backends[i + 1 :]  # (a pool not seen before, each time)
        started = time.perf_counter()
        algorithm.update(eligible)
        _first(algorithm, "10.0.0.1")
        rebuilds.append((time.perf_counter() - started) * 1e3)
    clients = [f"10.{i // 250 % 250}.{i % 250}.7" for i in range(PICKS)]
    picks = []
    for _ in range(BATCHES):
        started = time.perf_counter()
        for client in clients:
            _first(algorithm, client)
        picks.append((time.perf_counter() - started) * 1e6 / PICKS)
    return statistics.median(rebuilds), statistics.median(picks)


def run(quick: bool = False, out: IO[str] = sys.stdout) -> int:
    sizes = QUICK_SIZES if quick else SIZES
    out.write("## balancer bench --selection\n\n")
    out.write(
        f"- rebuild: one backend back in and another out, then the first pick "
        f"(median of {REBUILDS})\n"
        f"- pick: the first candidate for a client (median of {BATCHES} x {PICKS:,})\n\n"
    )
    out.write("| algorithm | backends | weights | rebuild + first pick, ms | pick, us |\n")
    out.write("|---|---:|---|---:|---:|\n")
    with _algorithms() as named:
        for name, make in named:
            for size in sizes:
                for weights in WEIGHTS:
                    rebuild, pick = measure(make, pool(size, weights))
                    out.write(f"| {name} | {size:,} | {weights} | {rebuild:.2f} | {pick:.1f} |\n")
                    out.flush()
    return 0
