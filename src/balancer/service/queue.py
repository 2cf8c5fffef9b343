"""The queue of clients waiting for a slot on a backend at its `max_connections`.

First come, first served, as HAProxy's server queues: a client woken for a slot that someone
took first goes back to its place, ahead of every client that joined after it. How many may
wake is worked out from the backends' limits and their connections in every worker.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, Protocol, TypeVar

from balancer.pool.backend import Backend


class Waiter(Protocol):
    """A client in the queue: when its wait ends, counted from when it first joined."""

    queued_until: float


W = TypeVar("W", bound=Waiter)


class BackendQueue(Generic[W]):
    def __init__(self, size: int) -> None:
        self.size = size  # at most this many wait (a reload may change it)
        self.waiting: deque[W] = deque()

    def __len__(self) -> int:
        return len(self.waiting)

    def __bool__(self) -> bool:
        return bool(self.waiting)

    def __iter__(self) -> Iterator[W]:
        return iter(self.waiting)

    def join(self, waiter: W) -> bool:
        """At the back of the queue; False if it is full."""
        if len(self.waiting) >= self.size:
            return False
        self.waiting.append(waiter)
        return True

    def rejoin(self, waiter: W) -> None:
        """Back to its place: ahead of every waiter that joined after it."""
        place = 0
        for other in self.waiting:
            if other.queued_until > waiter.queued_until:
                break
            place += 1
        self.waiting.insert(place, waiter)

    def leave(self, waiter: W) -> None:
        with contextlib.suppress(ValueError):
            self.waiting.remove(waiter)

    def pop(self) -> W | None:
        """The head of the queue, taken off it."""
        return self.waiting.popleft() if self.waiting else None


def free_slots(eligible: Iterable[Backend], others: Callable[[Backend], int], wanted: int) -> int:
    """Slots free on the eligible backends for queued clients, at most `wanted`: a backend
    without a limit has room for all. `others` counts a backend's connections in the other
    workers."""
    free = 0
    for backend in eligible:
        limit = backend.max_connections
        if not limit:
            return wanted
        free += max(limit - backend.active - others(backend), 0)
        if free >= wanted:
            return wanted
    return free
