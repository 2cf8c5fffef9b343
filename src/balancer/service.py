"""A service: one listener, its pool of backends, their health checks and open sessions.

Phases are plain: `start` (bind, begin checks), serve, `drain` (stop accepting, let sessions
finish), `stop` (end what is left).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Iterator
from typing import Protocol

from balancer import algorithms
from balancer.config import Address, ServiceConfig
from balancer.health import Health
from balancer.logs import AccessRecord, EventLog
from balancer.pool import DOWN, ENABLED, UP, Backend, Pool
from balancer.relay import Session, Termination
from balancer.shared import SharedCursor, SharedState
from balancer.stats import BackendStats

BACKLOG = 1024


class StartupError(Exception):
    """A service cannot start; the message says which and why, in one line."""


class PassiveHealth(Protocol):
    """What a service needs of health: the local `Health`, or a worker's link to it."""

    def sync(self) -> None: ...

    def stop(self) -> None: ...

    def passive_failure(self, backend: Backend, error: str, *, refused: bool) -> None: ...

    def passive_success(self, backend: Backend) -> None: ...


HealthFactory = Callable[["Service"], PassiveHealth]


class Service:
    def __init__(
        self,
        config: ServiceConfig,
        log: EventLog,
        health: HealthFactory | None = None,
        *,
        worker: bool = False,
    ) -> None:
        self.config = config
        self.name = config.name
        self.log = log
        self.worker = worker  # a worker process: relays only, the supervisor logs state
        algorithm = algorithms.create(config.algorithm)
        self.pool = Pool(config.name, algorithm, panic=config.passive.panic)
        if not worker:
            self.pool.listeners.append(self._state_changed)
            self.pool.panic_listeners.append(self._panic_changed)
        self.health_factory = health
        self.health = self._make_health()
        self.sessions: set[Session] = set()
        self.server: asyncio.Server | None = None
        self.closing = False
        self.address = str(config.listen)
        self.bound: Address | None = None  # the port a supervisor reserved for its workers
        self.remote_open = 0  # open connections on worker processes, as last reported
        self.shared: SharedState | None = None
        self.worker_index = 0
        self.uses_load = False
        self.accepted = 0
        self.stats = BackendStats()  # every connection of the service, with a backend or not
        # Discovered ports take traffic only once a check has found them listening.
        for address, (weight, state) in self._wanted_backends(config).items():
            self.pool.add(address, weight, health=state, quiet=True)

    def _make_health(self) -> PassiveHealth:
        if self.health_factory is not None:
            return self.health_factory(self)
        return Health(self.pool, self.config.health_check, self.config.passive)

    def share(self, shared: SharedState, worker: int, cursor: int) -> None:
        """Count connections across workers, and walk one round-robin schedule with them."""
        self.shared = shared
        self.worker_index = worker
        self.uses_load = bool(getattr(self.pool.algorithm, "uses_load", False))
        if hasattr(self.pool.algorithm, "cursor"):
            self.pool.algorithm.cursor = SharedCursor(shared, cursor)

    def candidates(self, client: str) -> Iterator[Backend]:
        shared = self.shared
        if shared is not None and self.uses_load:
            worker = self.worker_index
            for backend in self.pool.eligible:
                if backend.slot >= 0:
                    backend.others = shared.others(worker, backend.slot)
        return self.pool.candidates(client)

    def acquire(self, backend: Backend) -> None:
        backend.active += 1
        if self.shared is not None and backend.slot >= 0:
            self.shared.set_active(self.worker_index, backend.slot, backend.active)

    def release(self, backend: Backend) -> None:
        backend.active -= 1
        if self.shared is not None and backend.slot >= 0:
            self.shared.set_active(self.worker_index, backend.slot, backend.active)

    def open_connections(self) -> int:
        return len(self.sessions) + self.remote_open

    async def bind(self, listen: Address) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        try:
            return await loop.create_server(
                lambda: Session(self),
                listen.host,
                listen.port,
                backlog=BACKLOG,
                reuse_address=True,
                reuse_port=self.worker or None,
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason = "address already in use"
            raise StartupError(
                f"service {self.name!r} cannot listen on {listen}: {reason.lower()}"
            ) from None

    def _serve_on(self, server: asyncio.Server) -> None:
        self.server = server
        sock = server.sockets[0]
        host, port = sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
        if not self.worker:
            self.announce()

    def announce(self) -> None:
        backends = ", ".join(f"{b.key} (weight {b.weight})" for b in self.pool.backends.values())
        if self.config.discover is not None:
            d = self.config.discover
            backends = f"discovering {d.host}:{d.first_port}-{d.last_port}"
        self.log.event(
            "listening",
            f"service {self.name} listening on {self.address}, {self.config.algorithm}, {backends}",
            service=self.name,
        )

    async def start(self) -> None:
        self._serve_on(await self.bind(self.config.listen))
        self.health.sync()

    def apply(self, config: ServiceConfig, server: asyncio.Server | None) -> None:
        """Take a reloaded config; open connections continue as they are."""
        old = self.config
        self.config = config
        if server is not None:
            if self.server is not None:
                self.server.close()  # stops accepting; open sessions are untouched
            self._serve_on(server)
        if config.algorithm != old.algorithm:
            self.pool.algorithm = algorithms.create(config.algorithm)
        self.pool.panic = config.passive.panic
        wanted = self._wanted_backends(config)
        for address in [a for a in self.pool.backends if a not in wanted]:
            self.pool.remove(address, "reload")
        for address, (weight, health) in wanted.items():
            backend = self.pool.backends.get(address)
            if backend is None:
                backend = self.pool.add(address, weight, health=health, quiet=True)
                self.pool.announce_added(backend, "reload")
            else:
                self.pool.set_weight(backend, weight)
        if (config.health_check, config.passive) != (old.health_check, old.passive):
            self.health.stop()
            self.health = self._make_health()
        self.health.sync()
        self.pool.rebuild()

    @staticmethod
    def _wanted_backends(config: ServiceConfig) -> dict[Address, tuple[int, str]]:
        wanted = {b.address: (b.weight, UP) for b in config.backends}
        if config.discover is not None:
            for address in config.discover.addresses():
                wanted.setdefault(address, (1, DOWN))
        return wanted

    def _state_changed(self, event: str, backend: Backend, message: str) -> None:
        self.log.event(
            event,
            f"{backend.key} {event}: {message}",
            service=self.name,
            backend=backend.key,
        )

    def _panic_changed(self, panicking: bool, count: int) -> None:
        if panicking:
            message = f"panic: no backend is up, spreading over all {count} enabled backends"
        else:
            message = "panic over: a backend is up again"
        self.log.event("panic" if panicking else "panic_over", message, service=self.name)

    def connect_failed(self, backend: Backend, error: str, *, refused: bool) -> None:
        """Passive detection: a connect was refused or timed out."""
        backend.connect_failures += 1
        self.health.passive_failure(backend, f"connect: {error}", refused=refused)

    def backend_failed(self, backend: Backend, error: str) -> None:
        """Passive detection: a connected backend closed or reset before answering."""
        self.health.passive_failure(backend, f"{error} before answering", refused=False)

    def backend_answered(self, backend: Backend) -> None:
        self.health.passive_success(backend)

    def log_no_backend(self, session: Session, error: str) -> None:
        self.log.event(
            "no_backend",
            f"no backend reachable for {session.peer} after {session.attempts} attempts, "
            f"last: {error}",
            service=self.name,
        )

    def finished(self, session: Session, record: AccessRecord) -> None:
        self.sessions.discard(session)
        self.accepted += 1
        self.stats.record(record.connect_ms, record.duration_ms, record.termination)
        if session.backend is not None:
            session.backend.stats.record(record.connect_ms, record.duration_ms, record.termination)
        self.log.access(record)

    def live_bytes(self) -> dict[Backend, tuple[int, int]]:
        """Bytes each way of the connections still open, by backend (added at their end)."""
        live: dict[Backend, tuple[int, int]] = {}
        for session in self.sessions:
            backend = session.backend
            if backend is not None:
                was_in, was_out = live.get(backend, (0, 0))
                live[backend] = (was_in + session.bytes_in, was_out + session.bytes_out)
        return live

    def add_backend(
        self, address: Address, weight: int, *, reason: str, state: str = ENABLED
    ) -> Backend:
        backend = self.pool.add(address, weight, quiet=True)
        if state != ENABLED:
            self.pool.set_state(backend, state, reason)
        self.pool.announce_added(backend, reason)
        self.health.sync()
        return backend

    def remove_backend(self, backend: Backend, reason: str) -> None:
        if self.pool.backends.get(backend.address) is backend:
            self.pool.remove(backend.address, reason)
            self.health.sync()

    def stop_accepting(self) -> None:
        self.closing = True
        if self.server is not None:
            self.server.close()

    async def drain(self, grace: float) -> None:
        """Stop accepting; wait up to `grace` seconds for open sessions, then end the rest."""
        self.stop_accepting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.stop()

    def stop(self) -> None:
        self.stop_accepting()
        self.health.stop()
        for session in list(self.sessions):
            session.end(Termination.SHUTDOWN)
