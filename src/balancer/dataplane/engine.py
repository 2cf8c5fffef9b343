"""The compiled data plane (`balancer._dataplane.Engine`, rust/src/engine.rs) as a service sees it.

The engine accepts, picks, connects, retries and relays on a thread of its own; this module
gives it a service's listening sockets, settings and backend table, and turns its events,
read in batches when its eventfd is readable, into the service's usual bookkeeping: backend
counts, passive failures judged by `Blame`, refusals, access lines and figures. Python runs on
events, never per byte, and mostly not per connection either: the engine counts each
backend's open and total connections (`Backend.active` and `total` read them), writes the
access line of a connection that went well (handed over in batches), and keeps its figures
(durations, terminations, bytes) until a reader of `stats` takes them (`Engine.sync`). A
connection with a passive failure, whose line names the rule Python judged it by, and every
connection in the JSON log format, come to Python as a `finished` event each.

A service uses the engine when every feature its config asks for is one the engine has
(`supported`): today all but plug-in algorithms and worker processes; the Python relay
serves those until they are ported.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from balancer import _dataplane
from balancer.core.termination import Termination
from balancer.dataplane import stream
from balancer.observability.logs import AccessRecord
from balancer.selection import REGISTRY
from balancer.selection.round_robin import selection_weight, smooth_schedule

if TYPE_CHECKING:
    from balancer.config.model import Limits, ServiceConfig
    from balancer.core.termination import Termination as Reason
    from balancer.observability.logs import EventLog
    from balancer.observability.stats import BackendStats
    from balancer.pool.backend import Backend
    from balancer.pool.pool import Pool


class Budget(Protocol):
    @property
    def limit(self) -> int: ...  # connections the process may have open (0: no limit)


class Service(Protocol):
    """What the engine's events need of a service (service.Service)."""

    name: str
    config: ServiceConfig
    pool: Pool
    log: EventLog

    @property
    def budget(self) -> Budget: ...

    on_exhausted: Callable[[str], None] | None

    def connect_failed(self, backend: Backend, error: str, *, refused: bool) -> str: ...
    def backend_failed(self, backend: Backend, error: str, client: str, forwarded: bool) -> str: ...
    def backend_answered(self, backend: Backend) -> None: ...
    def refusal(self, reason: Reason, peer: str, detail: str) -> None: ...
    def engine_finished(self, backend: Backend | None, record: AccessRecord) -> None: ...
    def engine_figures(self, finished: int) -> BackendStats: ...
    def engine_limited(self, on: bool) -> None: ...
    def engine_full(self, on: bool) -> None: ...


FINISHED, CONNECT_FAILED, EARLY_FAILED, ANSWERED = range(1, 5)
REFUSAL, NO_BACKEND, EXHAUSTED, PANICKED, LIMITED, LINES, FULL = range(5, 12)
ACCESS = {None: 2, "text": 1, "json": 0}  # who records: see Settings.access in engine.rs
_OWNER_BITS = 24
_ids = itertools.count(1)  # links (services on the engine)
_slots = itertools.count(1)  # backends


def supported(config: ServiceConfig, *, worker: bool) -> str | None:
    """None if the engine can serve this service, else what it lacks (for the log)."""
    if os.environ.get("BALANCER_DATAPLANE") == "python":
        return "BALANCER_DATAPLANE=python"
    if worker:
        return "worker processes"
    if config.algorithm not in REGISTRY:
        return f"algorithm {config.algorithm}"
    return None


def settings(config: ServiceConfig, log: EventLog) -> tuple[Any, ...]:
    t, passive = config.timeouts, config.passive
    version = {"v1": 1, "v2": 2}.get(config.send_proxy or "", 0)
    return (
        (t.connect, t.idle, t.client, t.server, t.client_first_byte),
        config.retries,
        passive.retry_replay,
        passive.replay_limit,
        config.accept_proxy,
        version,
        config.no_backend_message,
        ACCESS[log.access_format],
        log.quoted(config.name),
        _limits(config.limits),
    )


def _limits(limits: Limits) -> tuple[Any, ...]:
    """The admission limits, with the refusals' details worded as admission.Admission's."""
    return (
        [(str(net.network_address), net.prefixlen) for net in limits.allow],
        [(str(net.network_address), net.prefixlen) for net in limits.deny],
        limits.client_max_connections,
        float(limits.client_rate),
        float(limits.client_burst),
        float(limits.suspect_rate),
        f"over {limits.client_rate:g} connections/s",
        f"named as causing most of a backend's failures: over {limits.suspect_rate:g} "
        "connections/s",
        limits.max_connections,
        limits.queue_size,
        float(limits.queue_timeout),
    )


class Engine:
    """This process's engine, shared by its services, with its events read on `loop`."""

    _current: Engine | None = None

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.core = _dataplane.Engine()
        self.loop = loop
        self.links: dict[int, Link] = {}
        self.backends: dict[int, Backend] = {}  # by slot: every backend a table named
        loop.add_reader(self.core.events_fd(), self.read_events)

    @classmethod
    def get(cls, loop: asyncio.AbstractEventLoop) -> Engine:
        engine = cls._current
        if engine is None or engine.loop is not loop or engine.loop.is_closed():
            engine = cls._current = Engine(loop)
        return engine

    def sync(self) -> None:
        """Add the figures the engine kept since the last call to the services' and backends'."""
        for is_backend, key, finished, bytes_in, bytes_out, connect, duration, ends in (
            self.core.take_figures()
        ):
            if is_backend:
                backend = self.backends.get(key)
                if backend is None:
                    continue
                stats = backend.plane_figures(bytes_in, bytes_out)
            else:
                link = self.links.get(key)
                if link is None:
                    continue
                stats = link.service.engine_figures(finished)
            stats.connect.add(*connect)
            stats.duration.add(*duration)
            stats.terminations.update(ends)

    def read_events(self) -> None:
        links = self.links
        for event in self.core.take_events():
            link = links.get(event[1])
            if link is not None:
                link.event(event)


class Link:
    """One service on the engine: what it was given, and what its events mean to it."""

    def __init__(self, service: Service, engine: Engine, sockets: list[socket.socket]) -> None:
        self.service = service
        self.engine = engine
        self.core = engine.core
        self.id = next(_ids)
        self.sockets = sockets
        self.backends: dict[int, Backend] = {}  # by slot: every backend a table named
        self.failures: dict[int, list[str]] = {}  # by connection: the rules that judged them
        engine.links[self.id] = self
        self.core.set_limit(service.budget.limit)
        self.core.set_pipes(stream.pipe_limit())
        self.core.add_service(
            self.id, [s.fileno() for s in sockets], settings(service.config, service.log)
        )
        self.push_table()

    # -- what the engine is given -----------------------------------------------------------

    def configure(self) -> None:
        self.core.configure(self.id, settings(self.service.config, self.service.log))
        self.push_table()

    def push_table(self) -> None:
        """The eligible backends, in the pool's order, with what the algorithm needs."""
        pool = self.service.pool
        eligible = pool.eligible
        rows = []
        for backend in eligible:
            slot = _slot(backend)
            self.backends[slot] = backend
            self.engine.backends[slot] = backend
            backend.plane = self.core
            backend.plane_sync = self.engine.sync
            version = {"v1": 1, "v2": 2}.get(backend.send_proxy or "", 0)
            host = backend.address.host
            weight = float(backend.effective_weight)
            label = self.service.log.quoted(backend.key)
            limit = backend.max_connections
            rows.append((slot, host, backend.address.port, weight, version, label, limit))
        name = self.service.config.algorithm
        schedule: list[int] = []
        ring: list[int] = []
        if name == "round_robin" and eligible:
            schedule = smooth_schedule([selection_weight(b) for b in eligible])
        elif name == "source_hash":
            ring = _ring(pool.algorithm, eligible)
        self.core.set_table(self.id, name, rows, schedule, ring)

    def accept(self, on: bool) -> None:
        self.core.accept(self.id, on)

    def close(self) -> None:
        self.core.close_listener(self.id)

    def end_all(self) -> None:
        self.core.end_all(self.id)

    def suspect(self, ip: str, seconds: float) -> None:
        """Hold a client address to the service's suspect_rate for `seconds`."""
        self.core.suspect(self.id, ip, seconds)

    @property
    def open(self) -> int:
        return int(self.core.open(self.id))

    @property
    def queued(self) -> int:
        return int(self.core.queued(self.id))

    def live_bytes(self) -> dict[Backend, tuple[int, int]]:
        return {b: self.core.live(slot) for slot, b in self.backends.items() if b.active > 0}

    # -- what its events mean ---------------------------------------------------------------

    def event(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        service = self.service
        if kind == LINES:
            service.log.lines(event[2])
        elif kind == FINISHED:
            _, _, conn, client, slot, connect_ms, duration_ms, bytes_in, bytes_out, retries, end = (
                event
            )
            backend = self.backends.get(slot) if slot is not None else None
            rules = self.failures.pop(conn, None) if self.failures else None
            if backend is not None:
                backend.plane_figures(bytes_in, bytes_out)
            service.engine_finished(
                backend,
                AccessRecord(
                    service=service.name,
                    client=client,
                    backend=backend.key if backend is not None else "-",
                    connect_ms=connect_ms,
                    duration_ms=duration_ms,
                    bytes_in=bytes_in,
                    bytes_out=bytes_out,
                    retries=retries,
                    failures=",".join(rules) if rules else "-",
                    termination=end,
                ),
            )
        elif kind == CONNECT_FAILED:
            _, _, conn, slot, error, refused = event
            backend = self.backends.get(slot)
            if backend is not None:
                rule = service.connect_failed(backend, error, refused=refused)
                self.failures.setdefault(conn, []).append(rule)
        elif kind == EARLY_FAILED:
            _, _, conn, slot, error, client, forwarded, _abandoned = event
            backend = self.backends.get(slot)
            if backend is not None:
                rule = service.backend_failed(backend, error, client, forwarded)
                self.failures.setdefault(conn, []).append(rule)
        elif kind == ANSWERED:
            backend = self.backends.get(event[2])
            if backend is not None:
                service.backend_answered(backend)
        elif kind == REFUSAL:
            _, _, reason, peer, detail = event
            service.refusal(Termination(reason), peer, detail)
        elif kind == NO_BACKEND:
            _, _, peer, attempts, error = event
            service.log.event(
                "no_backend",
                f"no backend reachable for {peer} after {attempts} attempts, last: {error}",
                service=service.name,
            )
        elif kind == EXHAUSTED:
            if service.on_exhausted is not None:
                service.on_exhausted(event[2])
        elif kind == LIMITED:
            service.engine_limited(event[2])
        elif kind == FULL:
            service.engine_full(event[2])
        elif kind == PANICKED:
            _, _, peer, reason = event
            service.log.event(
                "dataplane_panic",
                f"a defect ended the connection of {peer}: {reason}",
                service=service.name,
            )


def _slot(backend: Backend) -> int:
    if not backend.plane_slot:
        backend.plane_slot = next(_slots)
    return backend.plane_slot


def _ring(algorithm: Any, eligible: tuple[Backend, ...]) -> list[int]:
    """The source_hash algorithm's ring, each point's owner made an index into `eligible`."""
    ring: list[int] = getattr(algorithm, "_ring", [])
    owners: list[Backend | None] = getattr(algorithm, "_owners", [])
    position = {id(b): i for i, b in enumerate(eligible)}
    mask = (1 << _OWNER_BITS) - 1
    points = []
    for point in ring:
        owner = owners[point & mask]
        if owner is not None and id(owner) in position:
            points.append((point >> _OWNER_BITS) << _OWNER_BITS | position[id(owner)])
    points.sort()
    return points


class EngineListener:
    """A service's listening sockets served by the engine, with the interface of
    `stream.Listener` (start, pause, resume, close), so a service handles either alike."""

    def __init__(
        self, service: Service, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket]
    ) -> None:
        self.loop = loop
        self.sockets = sockets
        self.paused = False
        self.serving = False
        self.closed = False
        self.link = Link(service, Engine.get(loop), sockets)

    def start(self) -> None:
        if self.closed or self.serving or self.paused:
            return
        self.serving = True
        self.link.accept(True)

    def pause(self) -> None:
        self.paused = True
        self.serving = False
        self.link.accept(False)

    def resume(self) -> None:
        self.paused = False
        self.start()

    def detach(self) -> list[socket.socket]:
        """Stop serving these sockets here, leaving them open (for another service, or the
        Python relay); connections already accepted go on."""
        self.serving = False
        self.closed = True
        self.link.close()
        return self.sockets

    def close(self) -> None:
        if self.closed:
            return
        self.detach()
        for sock in self.sockets:
            sock.close()
