"""A service: one listener, its pool of backends, their health checks and open sessions.

Phases are plain: `start` (bind, begin checks), serve, `drain` (stop accepting, let sessions
finish), `stop` (end what is left).
"""

from __future__ import annotations

import asyncio
import errno
import socket

from balancer import algorithms
from balancer.config import ServiceConfig
from balancer.health import Health
from balancer.logs import AccessRecord, EventLog
from balancer.pool import DOWN, Backend, Pool
from balancer.relay import Session, Termination

BACKLOG = 1024


class StartupError(Exception):
    """A service cannot start; the message says which and why, in one line."""


class Service:
    def __init__(self, config: ServiceConfig, log: EventLog) -> None:
        self.config = config
        self.name = config.name
        self.log = log
        algorithm = algorithms.create(config.algorithm)
        self.pool = Pool(config.name, algorithm, panic=config.passive.panic)
        self.pool.listeners.append(self._state_changed)
        self.pool.panic_listeners.append(self._panic_changed)
        self.health = Health(self.pool, config.health_check, config.passive)
        self.sessions: set[Session] = set()
        self.server: asyncio.Server | None = None
        self.closing = False
        self.address = str(config.listen)
        self.accepted = 0
        for backend in config.backends:
            self.pool.add(backend.address, backend.weight, quiet=True)
        if config.discover is not None:
            # Discovered ports take traffic only once a check has found them listening.
            for address in config.discover.addresses():
                if address not in self.pool.backends:
                    self.pool.add(address, 1, health=DOWN, quiet=True)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        try:
            self.server = await loop.create_server(
                lambda: Session(self),
                listen.host,
                listen.port,
                backlog=BACKLOG,
                reuse_address=True,
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason = "address already in use"
            raise StartupError(
                f"service {self.name!r} cannot listen on {listen}: {reason.lower()}"
            ) from None
        sock = self.server.sockets[0]
        host, port = sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
        self.health.sync()
        backends = ", ".join(f"{b.key} (weight {b.weight})" for b in self.pool.backends.values())
        if self.config.discover is not None:
            d = self.config.discover
            backends = f"discovering {d.host}:{d.first_port}-{d.last_port}"
        self.log.event(
            "listening",
            f"service {self.name} listening on {self.address}, {self.config.algorithm}, {backends}",
            service=self.name,
        )

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
        self.log.access(record)

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
