"""Weighted random: each backend is chosen with probability weight / total weight."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.pool.backend import Backend


class WeightedRandom:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._backends: tuple[Backend, ...] = ()
        self._cumulative: list[float] = []

    def update(self, backends: Sequence[Backend]) -> None:
        self._backends = tuple(backends)
        self._cumulative = list(itertools.accumulate(b.effective_weight for b in backends))

    def candidates(self, client: str) -> Iterator[Backend]:
        backends = self._backends
        if not backends:
            return
        point = self._rng.random() * self._cumulative[-1]
        first = bisect.bisect_right(self._cumulative, point)
        yield backends[first]
        rest = [b for i, b in enumerate(backends) if i != first]
        self._rng.shuffle(rest)
        yield from rest
