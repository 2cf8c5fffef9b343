"""A service's backends and their state: the one object discovery, health, selection and the
relay meet at.

Membership and state changes rebuild the selection tables once and swap them in whole; each
pick reads that snapshot and never rebuilds anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from balancer.config import Address
from balancer.stats import BackendStats

if TYPE_CHECKING:
    from balancer.algorithms import Algorithm

UP = "up"
DOWN = "down"

ENABLED = "enabled"
DRAIN = "drain"
MAINTENANCE = "maintenance"
ADMIN_STATES = (ENABLED, DRAIN, MAINTENANCE)


class Backend:
    """One backend server of a service, with its health, operator state and counters."""

    __slots__ = (
        "_active",
        "_others",
        "address",
        "bytes_in",
        "bytes_out",
        "connect_failures",
        "effective_weight",
        "failures",
        "health",
        "key",
        "last_change",
        "max_connections",
        "moved",
        "send_proxy",
        "slot",
        "state",
        "stats",
        "total",
        "transitions",
        "weight",
    )

    def __init__(self, address: Address, weight: int = 1, health: str = UP) -> None:
        self.address = address
        self.key = str(address)
        self.weight = weight
        # What selection uses: the weight, or less while a returning backend slow-starts.
        self.effective_weight: float = weight
        self.health = health
        self.state = ENABLED
        self._active = 0  # open connections in this process (`active`)
        self._others = 0  # open connections on other worker processes, as of the last pick
        # Told when either count changes: set by an algorithm that keeps backends ordered by
        # load (least connections), so that it need not compare them all at every pick.
        self.moved: Callable[[Backend], None] | None = None
        self.slot = -1  # its cell in the workers' shared memory, when there are workers
        self.max_connections = 0  # 0: no limit
        self.send_proxy: str | None = None
        self.total = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.failures = 0
        self.connect_failures = 0
        self.transitions: dict[str, int] = {}
        self.stats = BackendStats()
        self.last_change = time.time()

    @property
    def active(self) -> int:
        """Open connections in this process."""
        return self._active

    @active.setter
    def active(self, count: int) -> None:
        self._active = count
        if self.moved is not None:
            self.moved(self)

    @property
    def others(self) -> int:
        """Open connections on the other worker processes, as last read."""
        return self._others

    @others.setter
    def others(self, count: int) -> None:
        if count != self._others:
            self._others = count
            if self.moved is not None:
                self.moved(self)

    @property
    def eligible(self) -> bool:
        return self.health == UP and self.state == ENABLED

    def __repr__(self) -> str:
        return (
            f"<Backend {self.key} w={self.weight} {self.health}/{self.state} active={self.active}>"
        )


def check_state(state: object) -> None:
    if state not in ADMIN_STATES:
        raise ValueError(f"state must be one of {', '.join(ADMIN_STATES)}, got {state!r}")


# Called as listener(event, backend, message), e.g. ("down", b, "connection refused").
Listener = Callable[[str, Backend, str], None]


class Pool:
    """The backends of one service and the algorithm choosing among the eligible ones."""

    def __init__(self, name: str, algorithm: Algorithm, *, panic: bool = False) -> None:
        self.name = name
        self.algorithm = algorithm
        self.panic = panic
        self.panicking = False
        self.backends: dict[Address, Backend] = {}
        self.listeners: list[Listener] = []
        self.panic_listeners: list[Callable[[bool, int], None]] = []
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
        eligible = tuple(b for b in self.backends.values() if b.eligible)
        panicking = False
        if not eligible and self.panic:
            # Envoy's panic mode: better to try every enabled backend than to refuse everyone.
            eligible = tuple(b for b in self.backends.values() if b.state == ENABLED)
            panicking = bool(eligible)
        if panicking != self.panicking:
            self.panicking = panicking
            for panic_listener in self.panic_listeners:
                panic_listener(panicking, len(eligible))
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
        if address in self.backends:
            raise KeyError(f"backend {address} already exists in service {self.name!r}")
        check_state(state)
        backend = self.put(address, weight, health)
        backend.state = state  # (before the rebuild: one added in drain is never eligible)
        self.rebuild()
        if not quiet:
            self.announce_added(backend)
        return backend

    def announce_added(self, backend: Backend, reason: str = "") -> None:
        detail = f"weight {backend.weight}, {backend.health}, {backend.state}"
        self._emit("added", backend, f"{reason}: {detail}" if reason else detail)

    def put(self, address: Address, weight: int, health: str) -> Backend:
        """Place a backend for `address` (not rebuilt yet): the object removed while its
        connections were open, if they still are, so that they keep counting; else a new one."""
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

    def take_out(self, address: Address) -> Backend:
        """Take a backend out (not rebuilt yet), kept aside while its connections are open."""
        backend = self.backends.pop(address)
        for gone in [a for a, b in self.leaving.items() if not b.active]:
            del self.leaving[gone]
        if backend.active:
            self.leaving[address] = backend
        return backend

    def remove(self, address: Address, reason: str = "") -> Backend:
        backend = self.take_out(address)
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
