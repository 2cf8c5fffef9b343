"""Weighted least-connections: fewest active connections per unit of weight wins."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from balancer.algorithms.round_robin import SmoothWeights, selection_weight

if TYPE_CHECKING:
    from balancer.pool import Backend

# What a backend can be owed or owe for ties, in picks: one passed over for a long time (it
# held connections) wins the next few ties, not a run as long as the time it waited.
MAX_OWED = 2


def load(backend: Backend) -> float:
    """The load a new connection would see: (active + 1) / weight, over all workers."""
    return (backend.active + backend.others + 1) / backend.effective_weight


class LeastConnections:
    """Ties go to the backend furthest behind its weight's share, as smooth weighted
    round-robin would pick: equal backends share evenly even when idle, and keep doing so
    while others come and go (that state is carried over every rebuild)."""

    uses_load = True  # reads active connections, which several workers must sum

    def __init__(self) -> None:
        self._backends: tuple[Backend, ...] = ()
        self._smooth = SmoothWeights()

    def update(self, backends: Sequence[Backend]) -> None:
        self._backends = tuple(backends)
        self._smooth.update([b.key for b in backends], [selection_weight(b) for b in backends])

    def candidates(self, client: str) -> Iterator[Backend]:
        backends = self._backends
        count = len(backends)
        if not count:
            return
        smooth = self._smooth
        current = smooth.advance()
        order = sorted(range(count), key=lambda i: (load(backends[i]), -current[i]))
        smooth.charge(order[0])
        bound = MAX_OWED * smooth.total
        if max(current) > bound or min(current) < -bound:
            current[:] = [min(max(value, -bound), bound) for value in current]
        for i in order:
            yield backends[i]
