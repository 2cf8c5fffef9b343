"""Power of two choices: of two random backends, the one with less load per weight wins."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from balancer.selection.least_connections import load

if TYPE_CHECKING:
    from balancer.pool.backend import Backend


class PowerOfTwo:
    uses_load = True  # reads active connections, which several workers must sum

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._backends: tuple[Backend, ...] = ()

    def update(self, backends: Sequence[Backend]) -> None:
        self._backends = tuple(backends)

    def candidates(self, client: str) -> Iterator[Backend]:
        backends = self._backends
        count = len(backends)
        if count == 0:
            return
        if count == 1:
            yield backends[0]
            return
        a, b = self._rng.sample(range(count), 2)
        if load(backends[b]) < load(backends[a]):
            a, b = b, a
        yield backends[a]
        yield backends[b]
        rest = [x for i, x in enumerate(backends) if i not in (a, b)]
        self._rng.shuffle(rest)
        yield from rest
