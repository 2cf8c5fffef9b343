"""Consistent hashing on the client address, over a ring of virtual nodes.

Each backend owns `weight * POINTS_PER_WEIGHT` points placed by hashing its address, so the ring
depends only on who is in it, not on order. A client maps to the first point at or after its
hash. When a backend leaves, only the clients on its points move; when one joins, only the
clients on its new points move: about 1/N of them either way.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.pool import Backend

POINTS_PER_WEIGHT = 100


def ring_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class SourceHash:
    def __init__(self) -> None:
        self._backends: tuple[Backend, ...] = ()
        self._points: list[int] = []
        self._owners: list[int] = []

    def update(self, backends: Sequence[Backend]) -> None:
        ring = sorted(
            (ring_hash(f"{b.key}#{i}"), index)
            for index, b in enumerate(backends)
            for i in range(b.weight * POINTS_PER_WEIGHT)
        )
        self._backends = tuple(backends)
        self._points = [point for point, _ in ring]
        self._owners = [owner for _, owner in ring]

    def candidates(self, client: str) -> Iterator[Backend]:
        backends, points, owners = self._backends, self._points, self._owners
        if not points:
            return
        start = bisect.bisect_left(points, ring_hash(client))
        seen: set[int] = set()
        size = len(points)
        for step in range(size):
            owner = owners[(start + step) % size]
            if owner not in seen:
                seen.add(owner)
                yield backends[owner]
                if len(seen) == len(backends):
                    return
