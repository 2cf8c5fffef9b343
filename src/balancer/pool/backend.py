"""One backend server as the pool holds it: its weight, health, operator state and counters."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from balancer.core.address import Address
from balancer.observability.stats import BackendStats

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
        "_bytes_in",
        "_bytes_out",
        "_others",
        "_stats",
        "_total",
        "address",
        "checks_up",
        "connect_failures",
        "effective_weight",
        "ejected",
        "ejections",
        "ejections_refused",
        "failures",
        "health",
        "key",
        "last_change",
        "max_connections",
        "moved",
        "plane",
        "plane_slot",
        "plane_sync",
        "send_proxy",
        "slot",
        "state",
        "transitions",
        "weight",
    )

    def __init__(self, address: Address, weight: int = 1, health: str = UP) -> None:
        self.address = address
        self.key = str(address)
        self.weight = weight
        # What selection uses: the weight, or less while a returning backend slow-starts.
        self.effective_weight: float = weight
        self.health = health  # what the pool goes by: checks and passive ejection together
        self.checks_up = health == UP  # the active checks' own verdict (up while they are off)
        self.ejected = False  # held down by a passive ejection
        self.state = ENABLED
        self._active = 0  # open connections in this process (`active`)
        self._others = 0  # open connections on other worker processes, as of the last pick
        # Told when either count changes: set by an algorithm that keeps backends ordered by
        # load (least connections), so that it need not compare them all at every pick.
        self.moved: Callable[[Backend], None] | None = None
        self.slot = -1  # its cell in the workers' shared memory, when there are workers
        self.plane: Any = None  # the compiled data plane that counts its connections, if any
        self.plane_slot = 0  # its number there (given when a table first names it)
        # Adds what the data plane has recorded since (stats, bytes) into the figures here.
        self.plane_sync: Callable[[], None] | None = None
        self.max_connections = 0  # 0: no limit
        self.send_proxy: str | None = None
        self._total = 0  # connections made by the Python relay (the data plane counts its own)
        self._bytes_in = 0  # bytes of its finished connections, each way
        self._bytes_out = 0
        self.failures: Counter[str] = Counter()  # passive failures by the rule that judged them
        self.ejections = 0  # passive ejections
        self.ejections_refused = 0  # passive ejections the cap refused
        self.connect_failures = 0
        self.transitions: dict[str, int] = {}
        self._stats = BackendStats()
        self.last_change = time.time()

    @property
    def active(self) -> int:
        """Open connections in this process."""
        if self.plane is None:
            return self._active
        return self._active + int(self.plane.counts(self.plane_slot)[0])

    @active.setter
    def active(self, count: int) -> None:
        self._active = count
        if self.moved is not None:
            self.moved(self)

    @property
    def total(self) -> int:
        """Connections made to it, in this process."""
        if self.plane is None:
            return self._total
        return self._total + int(self.plane.counts(self.plane_slot)[1])

    @total.setter
    def total(self, count: int) -> None:
        self._total = count - (self.total - self._total)

    # The figures of finished connections: the data plane's are added in when they are read.

    @property
    def stats(self) -> BackendStats:
        if self.plane_sync is not None:
            self.plane_sync()
        return self._stats

    @stats.setter
    def stats(self, stats: BackendStats) -> None:
        self._stats = stats

    def plane_figures(self, bytes_in: int, bytes_out: int) -> BackendStats:
        """The data plane's sync: its bytes added, and the stats to add its figures to."""
        self._bytes_in += bytes_in
        self._bytes_out += bytes_out
        return self._stats

    @property
    def bytes_in(self) -> int:
        if self.plane_sync is not None:
            self.plane_sync()
        return self._bytes_in

    @bytes_in.setter
    def bytes_in(self, count: int) -> None:
        self._bytes_in = count

    @property
    def bytes_out(self) -> int:
        if self.plane_sync is not None:
            self.plane_sync()
        return self._bytes_out

    @bytes_out.setter
    def bytes_out(self, count: int) -> None:
        self._bytes_out = count

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

    def __repr__(self) -> str:
        return (
            f"<Backend {self.key} w={self.weight} {self.health}/{self.state} active={self.active}>"
        )


def check_state(state: object) -> None:
    if state not in ADMIN_STATES:
        raise ValueError(f"state must be one of {', '.join(ADMIN_STATES)}, got {state!r}")
