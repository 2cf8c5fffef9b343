"""Consistent hashing on the client address, over a ring of virtual nodes.

Each backend owns `weight * POINTS_PER_WEIGHT` points placed by hashing its address, so the ring
depends only on who is in it, not on order. A client maps to the first point at or after its
hash. When a backend leaves, only the clients on its points move; when one joins, only the
clients on its new points move: about 1/N of them either way.

Past MAX_POINTS points, every backend gets fewer points per weight, halving from
POINTS_PER_WEIGHT down to one, so a ring stays within MAX_POINTS unless the pool's total weight
is larger still (one point per unit of weight at the least). A point costs about 90 bytes (on
the ring and among the kept hashes): 22 MiB for 256,000. (A pool that grows or shrinks across
such a step moves more clients than 1/N, once.) Each backend's points are hashed once and kept;
a change to a few backends takes their points off the ring and puts their new ones on in
place, and a rebuild that leaves every backend's points as they were (a slow-start step
changes only the effective weight, which this ring does not use) does not touch the ring.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from balancer.pool.backend import Backend

POINTS_PER_WEIGHT = 100
MAX_POINTS = 1 << 18
IN_PLACE_POINTS = 512  # points a change may move one by one; more are sorted in
_OWNER_BITS = 24  # a point on the ring is its hash << _OWNER_BITS | its owner's id
_OWNER = (1 << _OWNER_BITS) - 1


def ring_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def points_per_weight(total_weight: int) -> int:
    """POINTS_PER_WEIGHT, halved (rounding down, at least 1) until the ring fits MAX_POINTS."""
    per_weight = POINTS_PER_WEIGHT
    while per_weight > 1 and total_weight * per_weight > MAX_POINTS:
        per_weight //= 2
    return per_weight


class SourceHash:
    def __init__(self) -> None:
        self._backends: tuple[Backend, ...] = ()
        self._ring: list[int] = []  # sorted; each point's low bits are its owner's id
        self._counts: dict[str, int] = {}  # each backend's points on the ring, by key
        self._ids: dict[str, int] = {}  # each backend's owner id, by key
        self._owners: list[Backend | None] = []  # by owner id
        self._hashes: dict[str, list[int]] = {}  # a backend's points, as many as were needed

    def _points(self, key: str, count: int) -> list[int]:
        hashes = self._hashes.setdefault(key, [])
        if len(hashes) < count:
            hashes.extend(ring_hash(f"{key}#{i}") for i in range(len(hashes), count))
        return hashes[:count]

    def update(self, backends: Sequence[Backend]) -> None:
        per_weight = points_per_weight(sum(b.weight for b in backends))
        counts = {b.key: b.weight * per_weight for b in backends}
        changed = [key for key, count in counts.items() if self._counts.get(key) != count]
        changed += [key for key in self._counts if key not in counts]
        if len(changed) > 8 + len(counts) // 64:
            self._ids = {key: i for i, key in enumerate(counts)}
            self._ring = [
                point << _OWNER_BITS | self._ids[key]
                for key, count in counts.items()
                for point in self._points(key, count)
            ]
            self._ring.sort()
        elif changed:
            moved = sum(self._counts.get(key, 0) + counts.get(key, 0) for key in changed)
            one_by_one = moved <= IN_PLACE_POINTS and moved * 16 <= len(self._ring)
            self._change(changed, counts, one_by_one=one_by_one)
        self._counts = counts
        self._backends = tuple(backends)
        owners: list[Backend | None] = [None] * (max(self._ids.values(), default=-1) + 1)
        for backend in backends:
            owners[self._ids[backend.key]] = backend
        self._owners = owners
        if len(self._hashes) > 2 * len(counts) + 64:  # (forget backends long gone)
            self._hashes = {k: v for k, v in self._hashes.items() if k in counts}

    def _change(self, changed: list[str], counts: dict[str, int], *, one_by_one: bool) -> None:
        """A few backends came, went or changed weight: take their points off the ring and put
        their new ones on. Few points are moved one by one (a bisection and a move of the
        list's tail each); more, by filtering the ring and sorting in the new points (one
        sorted run and a short tail, which sorting merges in close to linear time)."""
        ring, ids = self._ring, self._ids
        if one_by_one:
            for key in changed:
                if key in ids:
                    owner = ids[key]
                    for point in self._points(key, self._counts[key]):
                        del ring[bisect.bisect_left(ring, point << _OWNER_BITS | owner)]
        else:
            stale = {ids[key] for key in changed if key in ids}
            ring = [point for point in ring if point & _OWNER not in stale]
        for key in [k for k in changed if k not in counts]:
            del ids[key]
        taken = set(ids.values())
        free = (i for i in range(len(counts) + 1) if i not in taken)
        for key in changed:
            if key in counts:
                owner = ids[key] = ids[key] if key in ids else next(free)
                points = [point << _OWNER_BITS | owner for point in self._points(key, counts[key])]
                if one_by_one:
                    for point in points:
                        bisect.insort(ring, point)
                else:
                    ring.extend(points)
        if not one_by_one:
            ring.sort()
        self._ring = ring

    def candidates(self, client: str) -> Iterator[Backend]:
        owners, ring = self._owners, self._ring
        if not ring:
            return
        start = bisect.bisect_left(ring, ring_hash(client) << _OWNER_BITS)
        seen: set[int] = set()
        size = len(ring)
        wanted = len(self._backends)
        for step in range(size):
            owner = ring[(start + step) % size] & _OWNER
            if owner not in seen:
                seen.add(owner)
                backend = owners[owner]
                assert backend is not None  # (every point on the ring has a backend)
                yield backend
                if len(seen) == wanted:
                    return
