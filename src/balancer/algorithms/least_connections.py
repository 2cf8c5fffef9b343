"""Weighted least-connections: fewest active connections per unit of weight wins."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.pool import Backend


def load(backend: Backend) -> float:
    """The load a new connection would see: (active + 1) / weight, over all workers."""
    return (backend.active + backend.others + 1) / backend.effective_weight


class LeastConnections:
    """Ties go round in rotation, so equal backends share evenly even when idle."""

    uses_load = True  # reads active connections, which several workers must sum

    def __init__(self) -> None:
        self._backends: tuple[Backend, ...] = ()
        self._rotation = 0

    def update(self, backends: Sequence[Backend]) -> None:
        self._backends = tuple(backends)
        self._rotation = 0

    def candidates(self, client: str) -> Iterator[Backend]:
        backends = self._backends
        count = len(backends)
        if not count:
            return
        start = self._rotation
        self._rotation = (start + 1) % count
        order = sorted(range(count), key=lambda i: (load(backends[i]), (i - start) % count))
        for i in order:
            yield backends[i]
