"""A pool's state as the supervisor sends it to its workers, and a worker's side of it.

The supervisor owns every decision about backends; after each change it sends the pool's
snapshot, and the worker makes its pool match before its next pick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from balancer.core.address import Address
from balancer.pool.backend import Backend
from balancer.pool.pool import Pool

if TYPE_CHECKING:
    from balancer.service.service import Service

Snapshot = list[tuple[Address, int, float, str, bool, str, int]]


def pool_snapshot(pool: Pool) -> Snapshot:
    return [
        (b.address, b.weight, b.effective_weight, b.health, b.checks_up, b.state, b.slot)
        for b in pool.backends.values()
    ]


def apply_snapshot(pool: Pool, snapshot: Snapshot) -> None:
    """Make a worker's pool match the supervisor's, then rebuild the tables once."""
    wanted = {item[0]: item for item in snapshot}
    for address in [a for a in pool.backends if a not in wanted]:
        pool.stage_remove(address)
    for address, weight, effective, health, checks_up, state, slot in snapshot:
        backend = pool.backends.get(address)
        if backend is None:
            backend = pool.stage_add(address, weight, health)
        backend.weight, backend.effective_weight = weight, effective
        backend.health, backend.checks_up = health, checks_up
        backend.state, backend.slot = state, slot
    pool.rebuild()


class BackendObjects:
    """A worker's one Backend object for each service and address, as long as it has open
    connections.

    The supervisor gives a backend the same shared-memory slot for the same service and
    address for all time, and a worker writes its open connections on that backend into its
    cell. A pool gives back its own busy backend that goes and comes back (`Pool.put`), but a
    service removed while draining and added again has a new pool, whose new objects would
    write their counts into the cells beside the old ones'. So the old object, while it has
    connections, takes the new one's place (with the new one's settings): one count for the
    address, as in the cell."""

    SETTINGS = (
        "weight", "effective_weight", "health", "checks_up", "state", "max_connections",
        "send_proxy",
    )  # fmt: skip

    def __init__(self) -> None:
        self.objects: dict[tuple[str, Address], Backend] = {}

    def adopt(self, services: dict[str, Service], names: list[str] | None = None) -> None:
        """After a change to the pools of `names` (of every service by default)."""
        for name in services if names is None else names:
            pool = services[name].pool
            swapped = False
            for address, backend in list(pool.backends.items()):
                old = self.objects.get((name, address))
                if old is not None and old is not backend and old.active > 0 and not backend.active:
                    for setting in self.SETTINGS:
                        setattr(old, setting, getattr(backend, setting))
                    if backend.slot >= 0:
                        old.slot = backend.slot
                    pool.backends[address] = old  # (in the same place: the order stays)
                    swapped = True
                else:
                    self.objects[(name, address)] = backend
            if swapped:
                pool.rebuild()
        # Forget the objects out of their pools whose connections have all ended.
        for (name, address), backend in list(self.objects.items()):
            if not backend.active:
                service = services.get(name)
                if service is None or service.pool.backends.get(address) is not backend:
                    del self.objects[(name, address)]
