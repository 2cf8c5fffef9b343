"""Smooth weighted round-robin, as nginx does it, precomputed into one cycle."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import reduce
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.pool import Backend
    from balancer.shared import SharedCursor

MAX_CYCLE = 65536


def smooth_schedule(weights: Sequence[int]) -> list[int]:
    """One cycle of indexes: each index appears weight/gcd times, spread out, not in bursts."""
    if not weights:
        return []
    divisor = reduce(math.gcd, weights)
    reduced = [w // divisor for w in weights]
    total = sum(reduced)
    if total > MAX_CYCLE:
        # Exact shares would need too long a cycle; keep them to within 1/MAX_CYCLE.
        reduced = [max(1, round(w * MAX_CYCLE / total)) for w in reduced]
        total = sum(reduced)
    current = [0] * len(reduced)
    schedule = []
    for _ in range(total):
        for i, w in enumerate(reduced):
            current[i] += w
        best = max(range(len(reduced)), key=current.__getitem__)
        current[best] -= total
        schedule.append(best)
    return schedule


class RoundRobin:
    """Over each cycle every backend gets exactly its weight's share, interleaved."""

    def __init__(self) -> None:
        self._backends: tuple[Backend, ...] = ()
        self._schedule: list[int] = []
        self._position = 0
        # With several workers, a position shared by all of them (see balancer.shared).
        self.cursor: SharedCursor | None = None

    def update(self, backends: Sequence[Backend]) -> None:
        self._backends = tuple(backends)
        # Sixteenths, so a slow-starting backend's fractional weight still counts.
        weights = [max(1, round(b.effective_weight * 16)) for b in backends]
        self._schedule = smooth_schedule(weights)
        self._position = 0

    def candidates(self, client: str) -> Iterator[Backend]:
        backends, schedule = self._backends, self._schedule
        if not schedule:
            return
        if self.cursor is not None:
            position = self.cursor.next(len(schedule))
        else:
            position = self._position
            self._position = (position + 1) % len(schedule)
        first = schedule[position]
        yield backends[first]
        count = len(backends)
        for step in range(1, count):
            yield backends[(first + step) % count]
