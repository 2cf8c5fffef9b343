"""A service's backends and their state: the one object discovery, health, selection and the
relay meet at.

Membership and state changes rebuild the selection tables once and swap them in whole; each
pick reads that snapshot and never rebuilds anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, Protocol

from balancer.core.address import Address
from balancer.pool.backend import ENABLED, UP, Backend, check_state


class Algorithm(Protocol):
    """What the pool needs of a selection algorithm (see balancer.selection)."""

    def update(self, backends: Sequence[Backend]) -> None:
        """Take the new eligible set; build derived tables here, once."""

    def candidates(self, client: str) -> Iterator[Backend]:
        """Backends for a connection from `client` (its IP address), best first."""


class Panic(NamedTuple):
    """A service going into panic or out of it."""

    panicking: bool
    healthy: int  # enabled backends up
    spread: int  # backends taking traffic: those the active checks hold up, in a panic
    enabled: int


# Called as listener(event, backend, message), e.g. ("down", b, "connection refused").
ChangeListener = Callable[[str, Backend, str], None]


class Pool:
    """The backends of one service and the algorithm choosing among the eligible ones."""

    def __init__(
        self, name: str, algorithm: Algorithm, *, panic: bool = False, panic_threshold: int = 50
    ) -> None:
        self.name = name
        self.algorithm = algorithm
        self.panic = panic
        self.panic_threshold = panic_threshold  # percent of the enabled backends
        self.panicking = False
        self.backends: dict[Address, Backend] = {}
        self.listeners: list[ChangeListener] = []
        self.panic_listeners: list[Callable[[Panic], None]] = []
        self.rebuild_listeners: list[Callable[[Pool], None]] = []
        self.eligible: tuple[Backend, ...] = ()
        # Removed while connections were open: if the address comes back before they end, the
        # same object returns, so that they count (for max_connections, least connections).
        self.leaving: dict[Address, Backend] = {}

    def _emit(self, event: str, backend: Backend, message: str) -> None:
        backend.transitions[event] = backend.transitions.get(event, 0) + 1
        for listener in self.listeners:
            listener(event, backend, message)

    def rebuild(self) -> None:
        enabled = [b for b in self.backends.values() if b.state == ENABLED]
        eligible = healthy = tuple(b for b in enabled if b.health == UP)
        panicking = False
        if self.panic and len(healthy) * 100 < self.panic_threshold * len(enabled):
            # Envoy's panic mode, bounded by what the active checks see: a passive ejection
            # is what a client can provoke, and too many of them must not refuse everyone.
            held_up = tuple(b for b in enabled if b.checks_up)
            if len(held_up) > len(healthy):
                panicking, eligible = True, held_up
        if panicking != self.panicking:
            self.panicking = panicking
            change = Panic(panicking, len(healthy), len(eligible), len(enabled))
            for panic_listener in self.panic_listeners:
                panic_listener(change)
        self.eligible = eligible
        self.algorithm.update(eligible)
        for rebuilt in self.rebuild_listeners:
            rebuilt(self)

    def replace_algorithm(self, algorithm: Algorithm) -> None:
        """Choose with another algorithm from the next rebuild on; the old one is told of no
        more changes."""
        for backend in (*self.backends.values(), *self.leaving.values()):
            backend.moved = None
        self.algorithm = algorithm

    def by_key(self, key: str) -> Backend | None:
        return next((b for b in self.backends.values() if b.key == key), None)

    def candidates(self, client: str) -> Iterator[Backend]:
        """Eligible backends for a client, best first; retries walk on down the list."""
        return self.algorithm.candidates(client)

    def add(
        self,
        address: Address,
        weight: int = 1,
        *,
        health: str = UP,
        state: str = ENABLED,
        quiet: bool = False,
    ) -> Backend:
        """A new backend, in the tables at once, and announced (an `added` event) unless
        `quiet`; KeyError if the address is already there."""
        if address in self.backends:
            raise KeyError(f"backend {address} already exists in service {self.name!r}")
        check_state(state)
        backend = self.stage_add(address, weight, health)
        backend.state = state  # (before the rebuild: one added in drain is never eligible)
        self.rebuild()
        if not quiet:
            self.announce_added(backend)
        return backend

    def announce_added(self, backend: Backend, reason: str = "") -> None:
        detail = f"weight {backend.weight}, {backend.health}, {backend.state}"
        self._emit("added", backend, f"{reason}: {detail}" if reason else detail)

    def stage_add(self, address: Address, weight: int, health: str) -> Backend:
        """Place a backend for `address` without a rebuild or an event: the caller rebuilds
        once for a batch of changes (a worker applying its supervisor's snapshot). The object
        removed while its connections were open comes back, if they still are, so that they
        keep counting; else a new one."""
        backend = self.leaving.pop(address, None)
        if backend is not None and backend.active:
            backend.weight = weight
            backend.effective_weight = weight
            backend.health, backend.state = health, ENABLED
            backend.last_change = time.time()
        else:
            backend = Backend(address, weight, health)
        self.backends[address] = backend
        return backend

    def stage_remove(self, address: Address) -> Backend:
        """Take a backend out without a rebuild or an event (see `stage_add`); it is kept
        aside while its connections are open."""
        backend = self.backends.pop(address)
        for gone in [a for a, b in self.leaving.items() if not b.active]:
            del self.leaving[gone]
        if backend.active:
            self.leaving[address] = backend
        return backend

    def remove(self, address: Address, reason: str = "") -> Backend:
        """Out of the tables at once, with a `removed` event; open connections carry on."""
        backend = self.stage_remove(address)
        self.rebuild()
        detail = f"{backend.active} connections still open"
        self._emit("removed", backend, f"{reason}: {detail}" if reason else detail)
        return backend

    def set_health(self, backend: Backend, health: str, reason: str) -> None:
        if backend.health == health or self.backends.get(backend.address) is not backend:
            return
        backend.health = health
        backend.last_change = time.time()
        self.rebuild()
        self._emit(health, backend, reason)

    def set_state(self, backend: Backend, state: str, reason: str = "operator") -> None:
        check_state(state)
        if backend.state == state:
            return
        backend.state = state
        backend.last_change = time.time()
        self.rebuild()
        self._emit(state, backend, reason)

    def set_weight(self, backend: Backend, weight: int) -> None:
        if backend.weight == weight:
            return
        old, backend.weight = backend.weight, weight
        # (in a slow start, the ramp goes on at the same fraction of the new weight)
        backend.effective_weight = backend.effective_weight * weight / old if old else weight
        self.rebuild()
        self._emit("weight", backend, f"weight {old} -> {weight}")

    def set_effective_weight(self, backend: Backend, weight: float) -> None:
        """Slow start's ramp: selection sees `weight`, the operator's weight stays."""
        if backend.effective_weight != weight and self.backends.get(backend.address) is backend:
            backend.effective_weight = weight
            self.rebuild()
