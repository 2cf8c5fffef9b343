"""A service: one listener, its pool of backends, their health checks and open sessions.

Phases are plain: `start` (bind, begin checks), serve, `drain` (stop accepting, let sessions
finish), `stop` (end what is left).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from balancer import selection
from balancer.config.model import BackendConfig, HealthCheckConfig, PassiveConfig, ServiceConfig
from balancer.core.address import Address
from balancer.core.errors import describe_error
from balancer.core.termination import Termination
from balancer.dataplane import engine, stream
from balancer.dataplane.engine import EngineListener, Link
from balancer.dataplane.relay import Session
from balancer.dataplane.stream import Listener, Stream
from balancer.dataplane.wheel import Wheel
from balancer.health.tracker import Health
from balancer.observability.logs import AccessRecord, EventLog
from balancer.observability.stats import BackendStats
from balancer.pool.backend import ENABLED, Backend
from balancer.pool.discovery import wanted_backends
from balancer.pool.pool import Panic, Pool
from balancer.service.admission import Admission
from balancer.service.blame import Blame
from balancer.service.budget import Budget
from balancer.service.queue import BackendQueue, free_slots
from balancer.service.shared import SharedCursor, SharedState

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
Serving = Listener | EngineListener  # a service's listening sockets, on either data path
QUEUE_POLL = 0.05  # seconds between looks at other workers' counts while sessions are queued


class StartupError(Exception):
    """A service cannot start; the message says which and why, in one line."""


class PassiveHealth(Protocol):
    """What a service needs of health: the local `Health`, or a worker's link to it."""

    def sync(self) -> None: ...

    def stop(self) -> None: ...

    def reconfigure(
        self, check: HealthCheckConfig, passive: PassiveConfig, send_proxy: str | None
    ) -> None: ...

    def passive_failure(self, backend: Backend, error: str, *, refused: bool) -> None: ...

    def passive_success(self, backend: Backend) -> None: ...


HealthFactory = Callable[["Service"], PassiveHealth]


class OtherWorkers:
    """The other workers' open connections on a service's eligible backends, read from shared
    memory before each pick (for every backend if the algorithm weighs load, else for those
    with a max_connections). Made again when the pool is rebuilt, which every change of the
    eligible set, a slot or a max_connections is followed by."""

    def __init__(self, service: Service, shared: SharedState) -> None:
        self.eligible = service.pool.eligible
        every = service.uses_load
        self.backends = [b for b in self.eligible if b.slot >= 0 and (every or b.max_connections)]
        self._read = shared.reader(service.worker_index, [b.slot for b in self.backends])
        self.last = [b.others for b in self.backends]

    def read(self) -> None:
        counts = self._read()
        if counts != self.last:  # (set only what changed: a change moves a backend's entry)
            for backend, count, before in zip(self.backends, counts, self.last, strict=True):
                if count != before:
                    backend.others = count
            self.last = counts


class Service:
    def __init__(
        self,
        config: ServiceConfig,
        log: EventLog,
        health: HealthFactory | None = None,
        *,
        worker: bool = False,
        budget: Budget | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.log = log
        self.worker = worker  # a worker process: relays only, the supervisor logs state
        self.budget = budget or Budget()
        self.budget.services.append(self)
        algorithm = selection.create(config.algorithm)
        passive = config.passive
        self.pool = Pool(
            config.name, algorithm, panic=passive.panic, panic_threshold=passive.panic_threshold
        )
        self.blame = Blame(passive)
        self.suspects_timer: asyncio.TimerHandle | None = None  # ends the blame's window
        self.algorithm_failures = 0  # times it raised instead of choosing
        if not worker:
            self.pool.listeners.append(self._state_changed)
            self.pool.panic_listeners.append(self._panic_changed)
        self.health_factory = health
        self.health = self._make_health()
        self.sessions: set[Session] = set()
        self.wheel = Wheel()  # the sessions' timeouts
        self.server: Serving | None = None
        self.links: list[Link] = []  # on the compiled data plane: each listener it was given
        self.loop: asyncio.AbstractEventLoop | None = None  # set by bind
        self.poller: stream.Poller | None = None  # the loop's, set by bind
        self.closing = False
        self.address = str(config.listen)
        self.bound: Address | None = None  # the port a supervisor reserved for its workers
        self.remote_open = 0  # open connections on worker processes, as last reported
        self.remote_queued = 0  # and their clients in the queue
        self.admission = Admission(config.limits)
        self.running = 0  # sessions past the max_connections gate
        self.waiting: deque[Session] = deque()  # accepted, waiting for max_connections room
        self.accept_paused = False
        self.last_pause_log = 0.0
        self.pause_logged = False  # the data plane's last pause was logged (see engine_full)
        self.queue: BackendQueue[Session] = BackendQueue(config.limits.queue_size)
        self.queue_poll: asyncio.TimerHandle | None = None  # see _watch_other_workers
        self.refusals: Counter[str] = Counter()
        self.refusal_log: dict[str, tuple[float, int]] = {}
        self.on_recovery: Callable[[], None] | None = None  # set while accept() lacks resources
        self.on_exhausted: Callable[[str], None] | None = None  # accept() lacks resources
        self.shared: SharedState | None = None
        self.worker_index = 0
        self.uses_load = False
        self._counts: OtherWorkers | None = None  # read before each pick, with workers
        self._finished = 0  # finished connections (`accepted`)
        self._stats = BackendStats()  # every connection of the service, with a backend or not
        # Discovered ports take traffic only once a check has found them listening.
        for address, (backend_config, state) in wanted_backends(config).items():
            backend = self.pool.add(address, backend_config.weight, health=state, quiet=True)
            self._configure(backend, backend_config)
        self.pool.rebuild_listeners.append(self._pool_rebuilt)

    def _make_health(self) -> PassiveHealth:
        if self.health_factory is not None:
            return self.health_factory(self)
        config = self.config
        return Health(
            self.pool, config.health_check, config.passive, config.send_proxy, self._notice
        )

    def share(self, shared: SharedState, worker: int, cursor: int) -> None:
        """Count connections across workers, and walk one round-robin schedule with them."""
        self.shared = shared
        self.worker_index = worker
        self.uses_load = bool(getattr(self.pool.algorithm, "uses_load", False))
        self._counts = None
        if hasattr(self.pool.algorithm, "cursor"):
            self.pool.algorithm.cursor = SharedCursor(shared, cursor)

    def candidates(self, client: str) -> Iterator[Backend]:
        """The backends to try, in order, with the other workers' connections counted where
        the algorithm weighs load or a backend has a max_connections."""
        if self.shared is not None:
            counts = self._counts
            if counts is None or counts.eligible is not self.pool.eligible:
                counts = self._counts = OtherWorkers(self, self.shared)
            counts.read()
        return self.pool.candidates(client)

    def acquire(self, backend: Backend) -> None:
        backend.active += 1
        if self.shared is not None and backend.slot >= 0:
            self.shared.set_active(self.worker_index, backend.slot, backend.active)

    def release(self, backend: Backend) -> None:
        backend.active -= 1
        if self.shared is not None and backend.slot >= 0:
            self.shared.set_active(self.worker_index, backend.slot, backend.active)
        if self.queue and backend.max_connections:
            self.wake_queued()

    def _room(self) -> bool:
        limit = self.config.limits.max_connections
        return (not limit or self.running < limit) and not self.budget.full()

    def admit_waiting(self) -> None:
        while self.waiting and self._room():
            session = self.waiting.popleft()
            if session.client_open:
                self._run(session)
        if self._room():
            self._resume_accepting()

    def _run(self, session: Session) -> None:
        self.running += 1
        self.budget.running += 1
        session.start()

    def open_connections(self) -> int:
        return len(self.sessions) + self.engine_open() + self.remote_open

    def engine_open(self) -> int:
        return sum(link.open for link in self.links)

    def queued(self) -> int:
        """Clients waiting in the queue for a backend's free slot (HAProxy's qcur)."""
        return len(self.queue) + self.remote_queued + sum(link.queued for link in self.links)

    async def bind(self, listen: Address) -> Serving:
        try:
            sockets = await stream.listen(
                listen.host, listen.port, backlog=BACKLOG, reuse_port=self.worker
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.EADDRINUSE:
                reason = "address already in use"
            raise StartupError(
                f"service {self.name!r} cannot listen on {listen}: {reason.lower()}"
            ) from None
        self.loop = asyncio.get_running_loop()
        self.poller = stream.poller(self.loop)
        return self._listener(self.loop, sockets)

    def _listener(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket]) -> Serving:
        """The compiled data plane's listener where it has every feature the config asks
        for, else the Python relay's."""
        if engine.supported(self.config, worker=self.worker) is None:
            listener = EngineListener(self, loop, sockets)
            self.links.append(listener.link)
            return listener
        return Listener(loop, sockets, self._accepted, self._exhausted)

    def _fit_listener(self, server: Serving) -> Serving:
        """`server`, or its sockets under the data path that fits the config now."""
        wants_engine = engine.supported(self.config, worker=self.worker) is None
        if isinstance(server, EngineListener):
            if wants_engine and server.link.service is self:
                return server
            return self._listener(server.loop, server.detach())
        if wants_engine:
            server.pause()
            return self._listener(server.loop, server.sockets)
        return server

    def _serve_on(self, server: Serving) -> None:
        self.server = server
        sock = server.sockets[0]
        host, port = sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
        if not self.accept_paused:
            server.start()
        if not self.worker:
            self.announce()

    def _accepted(self, sock: socket.SocketType, address: Any) -> None:
        try:
            stream.prepare(sock)
        except OSError:
            sock.close()  # (reset before it could be served)
            return
        loop = self.loop
        assert loop is not None
        Stream(loop, sock, Session(self, loop), address, self.poller).start()

    def _exhausted(self, error: OSError) -> None:
        if self.on_exhausted is not None:
            self.on_exhausted(describe_error(error))

    def announce(self) -> None:
        backends = ", ".join(f"{b.key} (weight {b.weight})" for b in self.pool.backends.values())
        if self.config.discover is not None:
            d = self.config.discover
            backends = f"discovering {d.host}:{d.first_port}-{d.last_port}"
        lacks = engine.supported(self.config, worker=self.worker)
        plane = "the compiled data plane" if lacks is None else f"the Python relay (for {lacks})"
        self.log.event(
            "listening",
            f"service {self.name} listening on {self.address}, {self.config.algorithm}, "
            f"{backends}; served by {plane}",
            service=self.name,
        )

    async def start(self, server: Serving | None = None) -> None:
        """Listen (on `server`, a listener taken over from another service, if given)."""
        self._serve_on(server if server is not None else await self.bind(self.config.listen))
        self.health.sync()

    def give_listener(self) -> Serving | None:
        """Hand this service's listener to another (a reload that renames or swaps services):
        this one stops accepting, the socket stays open and keeps its backlog."""
        server, self.server = self.server, None
        if server is not None:
            server.pause()
        return server

    def claim(self, server: Serving) -> Serving:
        """Make a listener given by another service deliver its connections here."""
        self.loop = server.loop
        self.poller = stream.poller(server.loop)
        if isinstance(server, Listener):
            server.accepted, server.exhausted = self._accepted, self._exhausted
            server.paused = False  # (`_serve_on` starts it, unless this service is at its limit)
        return self._fit_listener(server)

    def apply(self, config: ServiceConfig, server: Serving | None) -> None:
        """Take a reloaded config; open connections continue as they are. Backends go back to
        what the file says: those it does not list are removed, those it lists are enabled
        again (undoing a drain or maintenance set through the admin API, whose pending removal
        then ends); health, ejections and slow starts carry on."""
        old = self.config
        self.config = config
        self.admission.limits = config.limits
        self.queue.size = config.limits.queue_size
        if server is None and self.server is not None:
            fitted = self._fit_listener(self.server)
            if fitted is not self.server:
                self.server = None
                self._serve_on(fitted)
        for link in self.links:
            link.configure()
        if server is not None:
            if self.server is not None:
                self.server.close()  # stops accepting; open sessions are untouched
            self._serve_on(server)
        if config.algorithm != old.algorithm:
            self.pool.replace_algorithm(selection.create(config.algorithm))
        self.pool.panic = config.passive.panic
        self.pool.panic_threshold = config.passive.panic_threshold
        self.blame.passive = config.passive
        wanted = wanted_backends(config)
        for address in [a for a in self.pool.backends if a not in wanted]:
            self.pool.remove(address, "reload")
            self.blame.forget(str(address))
        for address, (backend_config, health) in wanted.items():
            backend = self.pool.backends.get(address)
            if backend is None:
                backend = self.pool.add(address, backend_config.weight, health=health, quiet=True)
                self.pool.announce_added(backend, "reload")
            else:
                self.pool.set_weight(backend, backend_config.weight)
                self.pool.set_state(backend, ENABLED, "reload")
            self._configure(backend, backend_config)
        self.health.reconfigure(config.health_check, config.passive, config.send_proxy)
        self.health.sync()
        self.pool.rebuild()

    @staticmethod
    def _configure(backend: Backend, config: BackendConfig) -> None:
        backend.max_connections = config.max_connections
        backend.send_proxy = config.send_proxy

    def _state_changed(self, event: str, backend: Backend, message: str) -> None:
        self.log.event(
            event,
            f"{backend.key} {event}: {message}",
            service=self.name,
            backend=backend.key,
        )

    def _notice(self, event: str, backend: Backend, message: str) -> None:
        self.log.event(
            event, f"{backend.key} {event}: {message}", service=self.name, backend=backend.key
        )

    def _panic_changed(self, change: Panic) -> None:
        up = f"{change.healthy} of {change.enabled} enabled backends up"
        threshold = self.pool.panic_threshold
        if change.panicking:
            message = (
                f"panic: {up}, below panic_threshold {threshold}%: spreading over the "
                f"{change.spread} that the active checks hold up"
            )
        elif not change.enabled:
            message = "panic over: no backend is enabled"
        elif change.healthy * 100 >= threshold * change.enabled:
            message = f"panic over: {up}"
        else:
            message = f"panic over: {up}, and the active checks hold up no more"
        self.log.event("panic" if change.panicking else "panic_over", message, service=self.name)

    def connect_failed(self, backend: Backend, error: str, *, refused: bool) -> str:
        """Passive detection: a connect was refused or timed out. The rule that judged it."""
        backend.connect_failures += 1
        verdict = self.blame.connect_failed(refused=refused)
        backend.failures[verdict.rule] += 1
        self.health.passive_failure(backend, f"connect: {error}", refused=refused)
        return verdict.rule

    def backend_failed(self, backend: Backend, error: str, client: str, forwarded: bool) -> str:
        """Passive detection: a connected backend closed or reset before answering, after
        the client's bytes reached it (`forwarded`) or not. The rule that judged it."""
        now = time.monotonic()
        verdict = self.blame.closed_early(backend.key, client, forwarded=forwarded, now=now)
        backend.failures[verdict.rule] += 1
        if verdict.counted:
            self.health.passive_failure(backend, f"{error} before answering", refused=False)
        if self.blame.window_open and self.suspects_timer is None and self.loop is not None:
            window = self.config.passive.failure_window
            self.suspects_timer = self.loop.call_later(window, self._report_suspects)
        return verdict.rule

    def _report_suspects(self) -> None:
        self.suspects_timer = None
        now = time.monotonic()
        window, rate = self.config.passive.failure_window, self.config.limits.suspect_rate
        for suspect in self.blame.close_window(now):
            if rate:
                self.admission.suspect(suspect.client, now + window)
                for link in self.links:
                    link.suspect(suspect.client, window)
                limit = f"limited to {rate:g} new connections/s for {window:g}s (suspect_rate)"
            else:
                limit = "suspect_rate, client_rate or client_max_connections can limit it"
            self.log.event(
                "suspect_client",
                f"{suspect.client} caused {suspect.failures} of the {suspect.total} failures "
                f"of {suspect.backend} after a request in the last {suspect.window:.0f}s, which "
                f"count against it only once several clients fail alike; {limit}",
                service=self.name,
                backend=suspect.backend,
                client=suspect.client,
            )

    def backend_answered(self, backend: Backend) -> None:
        self.health.passive_success(backend)

    def algorithm_failed(self, session: Session, exc: Exception) -> None:
        """The algorithm raised instead of naming backends: the client is refused as if none
        were left, and each time is logged (the first with its traceback)."""
        self.algorithm_failures += 1
        if self.algorithm_failures == 1:
            asyncio.get_running_loop().call_exception_handler(
                {"message": f"algorithm {self.config.algorithm} failed", "exception": exc}
            )
        self.log.event(
            "algorithm_failed",
            f"algorithm {self.config.algorithm} failed choosing for {session.peer}: "
            f"{type(exc).__name__}: {exc}",
            service=self.name,
        )

    def log_no_backend(self, session: Session, error: str) -> None:
        self.log.event(
            "no_backend",
            f"no backend reachable for {session.peer} after {session.attempts} attempts, "
            f"last: {error}",
            service=self.name,
        )

    # -- admission: ACLs, per-client limits, max_connections ---------------------------------

    def admit(self, session: Session) -> Termination | None:
        """None if the client may go on, else why not (counted and logged here)."""
        refusal = self.admission.check(session.client_ip, time.monotonic())
        if refusal is None:
            return None
        self.refusal(refusal.reason, session.peer, refusal.detail)
        return refusal.reason

    def start_when_room(self, session: Session) -> None:
        """Start the session now, or once another ends if max_connections is reached."""
        if not self._room():
            self.waiting.append(session)
            if session.client is not None:
                session.client.guard()
            self._pause_accepting()
            return
        self._run(session)
        if not self._room():
            self._pause_accepting()

    def _pause_accepting(self) -> None:
        """Leave new clients in the kernel's backlog rather than accept and starve them."""
        if self.server is None or self.accept_paused:
            return
        self.accept_paused = True
        self.server.pause()
        now = time.monotonic()
        if now - self.last_pause_log >= 1.0:
            self.last_pause_log = now
            if self.budget.full():
                what = f"the process's {self.budget.limit} connections (from its open-file limit)"
            else:
                what = f"max_connections {self.config.limits.max_connections}"
            self.log.event(
                "accept_paused",
                f"{what} reached: new clients wait in the listen backlog",
                service=self.name,
            )

    def _resume_accepting(self) -> None:
        if not self.accept_paused or self.server is None or self.closing:
            return
        self.log.event("accept_resumed", "accepting new clients again", service=self.name)
        self.accept_paused = False
        self.server.resume()

    def refusal(self, reason: Termination, peer: str, detail: str) -> None:
        """Count a refusal and log it, at most one line per reason per second."""
        self.refusals[reason] += 1
        now = time.monotonic()
        last, suppressed = self.refusal_log.get(reason, (0.0, 0))
        if now - last < 1.0:
            self.refusal_log[reason] = (last, suppressed + 1)
            return
        more = f" ({suppressed} more in the last second)" if suppressed else ""
        self.refusal_log[reason] = (now, 0)
        self.log.event("refused", f"{reason} {peer}: {detail}{more}", service=self.name)

    def enqueue(self, session: Session) -> bool:
        """Queue a session for a busy backend's next free slot; False if the queue is full."""
        if not self.queue.join(session):
            return False
        self._watch_other_workers()
        return True

    def requeue(self, session: Session) -> None:
        """A session woken for a slot that was taken before it could use it: back to its
        place, ahead of every session that joined the queue after it."""
        self.queue.rejoin(session)
        self._watch_other_workers()

    def _watch_other_workers(self) -> None:
        """Slots another worker frees are not seen by this one's `release`: while sessions
        wait, look at the shared counts every QUEUE_POLL seconds and wake one per free slot."""
        if self.shared is not None and self.queue_poll is None and self.loop is not None:
            self.queue_poll = self.loop.call_later(QUEUE_POLL, self._poll_other_workers)

    def _poll_other_workers(self) -> None:
        self.queue_poll = None
        if self.queue and self.shared is not None:
            self._wake_for_room()
            self._watch_other_workers()

    def _pool_rebuilt(self, pool: Pool) -> None:
        """A reload, an admin change or a health change may have made room for the queue;
        the data plane takes the new eligible set."""
        for link in self.links:
            link.push_table()
        if self.queue and self.loop is not None:
            self._wake_for_room()

    def _wake_for_room(self) -> None:
        """Wake one queued session per free slot of the eligible backends."""
        shared, worker = self.shared, self.worker_index

        def others(backend: Backend) -> int:
            if shared is not None and backend.slot >= 0:
                return shared.others(worker, backend.slot)
            return backend.others

        for _ in range(free_slots(self.pool.eligible, others, len(self.queue))):
            self.wake_queued()

    def dequeue(self, session: Session) -> None:
        self.queue.leave(session)

    def wake_queued(self) -> None:
        """Give a free slot to the head of the queue, on the loop's next turn. The session
        keeps its place until then, so a client accepted meanwhile queues behind it."""
        if self.queue:
            asyncio.get_running_loop().call_soon(self._wake_head)

    def _wake_head(self) -> None:
        session = self.queue.pop()
        if session is not None:
            session.slot_freed()

    def finished(self, session: Session, record: AccessRecord) -> None:
        self.sessions.discard(session)
        if session.admitted:
            self.admission.left(session.client_ip)
        if session.running:
            self.running -= 1
            self.budget.running -= 1
            self.budget.freed()
        elif session in self.waiting:
            self.waiting.remove(session)
        self._finished += 1
        connect_us, duration_us = int(record.connect_ms * 1000), int(record.duration_ms * 1000)
        self._stats.record(connect_us, duration_us, record.termination)
        if session.backend is not None:
            session.backend.stats.record(connect_us, duration_us, record.termination)
        self.log.access(record)

    def engine_finished(self, backend: Backend | None, record: AccessRecord) -> None:
        """A connection on the compiled data plane ended that Python records itself (see
        engine.Link): one with a passive failure to name in its line, or any in the JSON log."""
        self._finished += 1
        connect_us, duration_us = int(record.connect_ms * 1000), int(record.duration_ms * 1000)
        self._stats.record(connect_us, duration_us, record.termination)
        if backend is not None:
            backend.stats.record(connect_us, duration_us, record.termination)
        self.log.access(record)

    def engine_full(self, on: bool) -> None:
        """The data plane reached the service's max_connections (or left it)."""
        if on:
            now = time.monotonic()
            if now - self.last_pause_log >= 1.0:  # (a service at its limit pauses often)
                self.last_pause_log = now
                self.pause_logged = True
                self.log.event(
                    "accept_paused",
                    f"max_connections {self.config.limits.max_connections} reached: new "
                    "clients wait in the listen backlog",
                    service=self.name,
                )
        elif self.pause_logged:
            self.pause_logged = False
            self.log.event("accept_resumed", "accepting new clients again", service=self.name)

    def engine_limited(self, on: bool) -> None:
        """The data plane reached the process's connection budget (or left it)."""
        if on:
            self.log.event(
                "accept_paused",
                f"the process's {self.budget.limit} connections (from its open-file limit) "
                "reached: new clients wait in the listen backlog",
                service=self.name,
            )
        else:
            self.log.event("accept_resumed", "accepting new clients again", service=self.name)

    def plane_sync(self) -> None:
        """Add what the compiled data plane recorded since into the figures here."""
        for link in self.links:
            link.engine.sync()

    def engine_figures(self, finished: int) -> BackendStats:
        """The data plane's sync: its finished connections added, and the stats to add its
        figures to."""
        self._finished += finished
        return self._stats

    @property
    def accepted(self) -> int:
        """Connections finished (the open ones apart)."""
        if self.links:
            self.plane_sync()
        return self._finished

    @accepted.setter
    def accepted(self, count: int) -> None:
        self._finished = count

    @property
    def stats(self) -> BackendStats:
        if self.links:
            self.plane_sync()
        return self._stats

    @stats.setter
    def stats(self, stats: BackendStats) -> None:
        self._stats = stats

    def live_bytes(self) -> dict[Backend, tuple[int, int]]:
        """Bytes each way of the connections still open, by backend (added at their end)."""
        live: dict[Backend, tuple[int, int]] = {}
        for link in self.links:
            for backend, (bytes_in, bytes_out) in link.live_bytes().items():
                was_in, was_out = live.get(backend, (0, 0))
                live[backend] = (was_in + bytes_in, was_out + bytes_out)
        for session in self.sessions:
            used = session.backend
            if used is not None:
                was_in, was_out = live.get(used, (0, 0))
                live[used] = (was_in + session.bytes_in, was_out + session.bytes_out)
        return live

    def add_backend(
        self, address: Address, weight: int, *, reason: str, state: str = ENABLED
    ) -> Backend:
        backend = self.pool.add(address, weight, state=state, quiet=True)
        self.pool.announce_added(backend, reason)  # (its state is in the line)
        self.health.sync()
        return backend

    def remove_backend(self, backend: Backend, reason: str) -> None:
        if self.pool.backends.get(backend.address) is backend:
            self.pool.remove(backend.address, reason)
            self.blame.forget(backend.key)
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
        while (self.sessions or self.engine_open()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.stop()

    def stop(self) -> None:
        self.stop_accepting()
        self.health.stop()
        if self.suspects_timer is not None:
            self.suspects_timer.cancel()
        for session in list(self.sessions):
            session.end(Termination.SHUTDOWN)
        for link in self.links:
            link.end_all()
