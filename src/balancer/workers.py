"""Several worker processes sharing the listening ports, under one supervisor.

The supervisor owns every decision about backends: it runs the health checks, the passive
ejection logic, the admin API and reloads, and pushes each pool's state to the workers after
every change. Workers only relay: they accept on the service ports (SO_REUSEPORT, so the kernel
spreads new connections over them), report passive failures and their figures to the supervisor,
and hear back how many connections the other workers hold on each backend, so least-connections
counts them all. A worker that dies is replaced; only its own open connections are lost.

Messages are length-prefixed pickles over a socketpair between the two processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pickle
import signal
import socket
import struct
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from balancer.config import Address, Config, HealthCheckConfig, PassiveConfig
from balancer.pool import Backend, Pool
from balancer.shared import MAX_SERVICES, MAX_SLOTS, SharedState
from balancer.stats import BackendStats, Timing

if TYPE_CHECKING:
    from balancer.app import Balancer
    from balancer.service import Service

HEADER = struct.Struct("!I")
STATS_INTERVAL = 0.5  # how often a worker reports its figures
RESTART_DELAY = 0.5


async def send(writer: asyncio.StreamWriter, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(HEADER.pack(len(data)) + data)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> Any:
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return pickle.loads(await reader.readexactly(size))


Snapshot = list[tuple[Address, int, float, str, str, int]]


def pool_snapshot(pool: Pool) -> Snapshot:
    return [
        (b.address, b.weight, b.effective_weight, b.health, b.state, b.slot)
        for b in pool.backends.values()
    ]


def apply_snapshot(pool: Pool, snapshot: Snapshot) -> None:
    """Make a worker's pool match the supervisor's, then rebuild the tables once."""
    wanted = {item[0]: item for item in snapshot}
    for address in [a for a in pool.backends if a not in wanted]:
        pool.take_out(address)
    for address, weight, effective, health, state, slot in snapshot:
        backend = pool.backends.get(address)
        if backend is None:
            backend = pool.put(address, weight, health)
        backend.weight, backend.effective_weight = weight, effective
        backend.health, backend.state, backend.slot = health, state, slot
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
        "weight", "effective_weight", "health", "state", "max_connections", "send_proxy",
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


# -- figures a worker reports ------------------------------------------------------------------


def _timing_wire(timing: Timing) -> tuple[list[int], int, str]:
    return (timing.buckets, timing.sum_us, timing.hdr.encode().decode())


def _timing_from_wire(wire: tuple[list[int], int, str]) -> Timing:
    from hdrh.histogram import HdrHistogram

    timing = Timing()
    timing.buckets, timing.sum_us = list(wire[0]), wire[1]
    if timing.count:
        timing.hdr = HdrHistogram.decode(wire[2].encode())
    return timing


def _stats_wire(stats: BackendStats) -> tuple[Any, Any, dict[str, int]]:
    return (_timing_wire(stats.connect), _timing_wire(stats.duration), dict(stats.terminations))


def _stats_from_wire(wire: tuple[Any, Any, dict[str, int]]) -> BackendStats:
    stats = BackendStats()
    stats.connect = _timing_from_wire(wire[0])
    stats.duration = _timing_from_wire(wire[1])
    stats.terminations.update(wire[2])
    return stats


def worker_figures(services: dict[str, Service]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, service in services.items():
        live = service.live_bytes()
        backends = {}
        for b in service.pool.backends.values():
            live_in, live_out = live.get(b, (0, 0))
            backends[b.key] = {
                "active": b.active,
                "total": b.total,
                "bytes_in": b.bytes_in + live_in,
                "bytes_out": b.bytes_out + live_out,
                "connect_failures": b.connect_failures,
                "stats": _stats_wire(b.stats),
            }
        figures[name] = {
            "refused": dict(service.refusals),
            "accepted": service.accepted,
            "open": len(service.sessions),
            "queued": len(service.queue),
            "stats": _stats_wire(service.stats),
            "backends": backends,
        }
    return figures


@dataclass
class Totals:
    """Cumulative figures of one service or backend, summed over workers."""

    total: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    connect_failures: int = 0
    stats: BackendStats = field(default_factory=BackendStats)

    def add_totals(self, other: Totals) -> None:
        self.total += other.total
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.connect_failures += other.connect_failures
        self.stats.connect.merge(other.stats.connect)
        self.stats.duration.merge(other.stats.duration)
        self.stats.terminations.update(other.stats.terminations)

    def add(self, figures: dict[str, Any]) -> None:
        self.total += figures.get("total", figures.get("accepted", 0))
        self.bytes_in += figures.get("bytes_in", 0)
        self.bytes_out += figures.get("bytes_out", 0)
        self.connect_failures += figures.get("connect_failures", 0)
        other = _stats_from_wire(figures["stats"])
        self.stats.connect.merge(other.connect)
        self.stats.duration.merge(other.duration)
        self.stats.terminations.update(other.terminations)


# -- the worker side ---------------------------------------------------------------------------


class RemoteHealth:
    """Health as a worker sees it: passive reports go to the supervisor, which decides."""

    def __init__(self, link: WorkerLink, service: str) -> None:
        self.link = link
        self.service = service
        self.failing: set[str] = set()

    def sync(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def reconfigure(
        self, check: HealthCheckConfig, passive: PassiveConfig, send_proxy: str | None
    ) -> None:
        pass  # (the supervisor's health has the settings)

    def passive_failure(self, backend: Backend, error: str, *, refused: bool) -> None:
        backend.failures += 1
        self.failing.add(backend.key)
        self.link.post(("failure", self.service, backend.key, error, refused))

    def passive_success(self, backend: Backend) -> None:
        # Only worth a message when the supervisor may be counting failures in a row.
        if backend.key in self.failing:
            self.failing.discard(backend.key)
            self.link.post(("answered", self.service, backend.key))


class WorkerLink:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.outbox: asyncio.Queue[object] = asyncio.Queue()

    def post(self, message: object) -> None:
        self.outbox.put_nowait(message)

    async def pump(self) -> None:
        while True:
            await send(self.writer, await self.outbox.get())


async def worker_main(fd: int, index: int) -> int:
    from balancer.app import Balancer, install_exception_handler
    from balancer.logs import EventLog, route_python_logging

    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    link = WorkerLink(reader, writer)
    config, memory_name, services, pools = await receive(reader)
    shared = SharedState(memory_name, config.workers)
    log = EventLog(config.log.file, config.log.format)
    route_python_logging(log)
    balancer = Balancer(config, log, worker=index, health=lambda s: RemoteHealth(link, s.name))
    objects = BackendObjects()
    # The supervisor's view of the pools (states set through the API, health, slots) before
    # the first connection, not the config file's.
    for name, snapshot in pools.items():
        if name in balancer.services:
            apply_snapshot(balancer.services[name].pool, snapshot)
    objects.adopt(balancer.services)
    balancer.share(shared, services)
    install_exception_handler(balancer)
    await balancer.start()
    loop = asyncio.get_running_loop()
    # The grace is read when the signal comes: a reload may have changed it since.
    loop.add_signal_handler(
        signal.SIGTERM, lambda: balancer.request_stop("SIGTERM", balancer.config.grace)
    )
    loop.add_signal_handler(signal.SIGINT, balancer.request_stop, "SIGINT", 0.0)
    await send(writer, ("ready", os.getpid()))

    async def report() -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            link.post(("figures", worker_figures(balancer.services)))

    async def listen() -> None:
        while True:
            try:
                message = await receive(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                # The supervisor is gone: finish what is open, then leave.
                balancer.request_stop("supervisor gone", balancer.config.grace)
                return
            kind = message[0]
            if kind == "pool":
                service = balancer.services.get(message[1])
                if service is not None:
                    apply_snapshot(service.pool, message[2])
                    objects.adopt(balancer.services, [message[1]])
            elif kind == "config":
                await balancer.apply_config(message[1])
                # (No await between the reload's new Backend objects and this: none has a
                # connection yet when an old one takes its place.)
                objects.adopt(balancer.services)
                balancer.share(shared, message[2])

    tasks = [loop.create_task(t()) for t in (link.pump, report, listen)]
    await balancer.serve()
    for task in tasks:
        task.cancel()
    for service in balancer.services.values():
        for backend in service.pool.backends.values():
            if backend.slot >= 0:
                shared.set_active(index, backend.slot, 0)
    try:  # the last word: figures up to the end, so the totals lose nothing
        await send(writer, ("figures", worker_figures(balancer.services)))
        writer.close()
    except ConnectionError:
        pass
    return 0


def run_worker(argv: list[str]) -> int:
    fd, index = int(argv[0]), int(argv[1])
    # SIGHUP (a reload, sent to the process group, or a terminal hanging up) is the
    # supervisor's business: a worker ignores it rather than die of it. The process started
    # with it blocked (see Supervisor._spawn): one that came meanwhile is dropped here.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the loop's own handler is in place
    from balancer.loop import run_loop

    return run_loop(worker_main(fd, index))


# -- the supervisor side -----------------------------------------------------------------------


class WorkerStartError(Exception):
    """A worker process died, or said something else, before it reported ready."""


def describe_status(status: int) -> str:
    return f"signal {-status}" if status < 0 else f"status {status}"


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    failures_in_a_row: int = 0
    listener: asyncio.Task[None] | None = None
    watcher: asyncio.Task[None] | None = None


class Supervisor:
    def __init__(self, balancer: Balancer, count: int) -> None:
        self.balancer = balancer
        self.workers = [Worker(i) for i in range(count)]
        self.count = count
        # Made when the workers start (not before the ports are reserved: a balancer that
        # exits for a port in use has no shared memory to leave behind).
        self._shared: SharedState | None = None
        self.slots: dict[tuple[str, Address], int] = {}
        self.unslotted: set[tuple[str, Address]] = set()  # logged: no slot was left for them
        self.service_index: dict[str, int] = {}
        self.reserved: dict[str, socket.socket] = {}
        self.retired: dict[str, dict[str, Totals]] = {}  # figures of workers that died
        self.retired_refusals: dict[str, Counter[str]] = {}
        # What each service's and backend's sum was last made from (see `aggregate`).
        self.summed: dict[tuple[str, str], tuple[object, tuple[Any, ...]]] = {}
        self.holding = False  # pool snapshots wait for a reload's config (see `reloading`)
        self.stopping = False
        self.stopped = asyncio.Event()  # set with `stopping`: wakes restarts waiting out a delay
        self.tasks: set[asyncio.Task[Any]] = set()
        self._exec_lock = asyncio.Lock()

    @property
    def shared(self) -> SharedState:
        assert self._shared is not None, "the workers have not started"
        return self._shared

    def reserve(self, service: Service, listen: Address) -> None:
        """Bind (not listen) the service port, so a port of 0 becomes one port for all."""
        self.commit(service, listen, self.bind_port(service, listen))

    def bind_port(self, service: Service, listen: Address) -> socket.socket:
        """A new reservation of `listen` for `service`, which changes nothing else: the caller
        passes it to `commit`, or closes it (a reload that fails on another port)."""
        from balancer.service import StartupError

        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        # Bound without SO_REUSEPORT, so that a port some other process listens on (another
        # balancer's workers included, which do use SO_REUSEPORT) is refused as in use rather
        # than shared; SO_REUSEPORT is set once bound (our workers bind beside this socket
        # with SO_REUSEADDR and SO_REUSEPORT while it does not listen). Only a port one of our
        # own services holds (a reload renaming a service, or swapping two ports) is bound
        # with SO_REUSEPORT at once, as our own workers listen on it.
        ours = any(s.getsockname()[1] == listen.port for s in self.reserved.values())
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((listen.host, listen.port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or not ours or listen.port == 0:
                    raise
                sock.close()
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((listen.host, listen.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError as exc:
            sock.close()
            reason = (
                "address already in use"
                if exc.errno == errno.EADDRINUSE
                else (exc.strerror or str(exc))
            )
            raise StartupError(
                f"service {service.name!r} cannot listen on {listen}: {reason.lower()}"
            ) from None
        return sock

    def commit(self, service: Service, listen: Address, sock: socket.socket) -> None:
        """Make `sock` (`bind_port`'s for `listen`) the service's reservation; its old one, if
        any, is closed (the workers, which listen beside it, move when the config reaches them)."""
        old = self.reserved.pop(service.name, None)
        if old is not None and old is not sock:
            old.close()
        self.reserved[service.name] = sock
        host, port = sock.getsockname()[:2]
        v6 = sock.family == socket.AF_INET6
        service.address = f"[{host}]:{port}" if v6 else f"{host}:{port}"
        service.bound = Address(listen.host, port)

    def worker_config(self) -> Config:
        """The config as workers run it: with the ports the supervisor reserved."""
        config = self.balancer.config
        services = tuple(
            replace(s, listen=self.balancer.services[s.name].bound or s.listen)
            for s in config.services
        )
        return replace(config, services=services)

    @staticmethod
    def check(config: Config) -> list[str]:
        """What stops `config` from running with several workers (before anything changes)."""
        if len(config.services) > MAX_SERVICES:
            return [
                f"at most {MAX_SERVICES} services with several workers, "
                f"the config has {len(config.services)}"
            ]
        return []

    def _assign(self) -> dict[str, int]:
        """Give every service a cursor (the index of one that is gone is given again) and
        every backend a slot, the same one for the same service and address for all time."""
        services = self.balancer.services
        for name in [n for n in self.service_index if n not in services]:
            del self.service_index[name]
        taken = set(self.service_index.values())
        free = (i for i in range(MAX_SERVICES) if i not in taken)
        for name, service in services.items():
            if name not in self.service_index:
                index = next(free, None)
                if index is None:  # (`check` keeps configs to MAX_SERVICES)
                    raise RuntimeError(f"at most {MAX_SERVICES} services with several workers")
                self.service_index[name] = index
                if self._shared is not None:
                    self._shared.set_cursor(index, 0)  # (a new service starts at the start)
            for backend in service.pool.backends.values():
                slot = self.slots.get((name, backend.address))
                if slot is None:
                    if len(self.slots) >= MAX_SLOTS:
                        self._no_slot(name, backend)  # (not counted across workers)
                        continue
                    slot = self.slots[(name, backend.address)] = len(self.slots)
                backend.slot = slot
        return dict(self.service_index)

    def _no_slot(self, name: str, backend: Backend) -> None:
        if (name, backend.address) not in self.unslotted:
            self.unslotted.add((name, backend.address))
            self.balancer.log.event(
                "slots_exhausted",
                f"backend {backend.key} of service {name!r}: all {MAX_SLOTS} shared-memory "
                "slots have been given (one per backend ever added, until a restart), so its "
                "connections are not counted across workers (max_connections, least "
                "connections count this worker's only)",
                service=name,
                backend=backend.key,
            )

    async def start(self) -> None:
        from balancer.service import StartupError

        errors = self.check(self.balancer.config)
        if errors:
            raise StartupError(errors[0])
        for service in self.balancer.services.values():
            service.pool.rebuild_listeners.append(self._pool_changed)
        self._assign()

        self._shared = SharedState(None, self.count)
        results = await asyncio.gather(
            *(self._spawn(w) for w in self.workers), return_exceptions=True
        )
        for worker, result in zip(self.workers, results, strict=True):
            if isinstance(result, BaseException):
                for other in self.workers:
                    if other.process is not None and other.process.returncode is None:
                        other.process.kill()
                        await other.process.wait()
                self.shared.close()
                self._shared = None
                if isinstance(result, WorkerStartError):
                    raise StartupError(f"worker {worker.index} failed to start: {result}")
                raise result
        loop = asyncio.get_running_loop()
        for worker in self.workers:
            worker.watcher = loop.create_task(self._watch(worker))

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _spawn(self, worker: Worker) -> None:
        """Start the worker's process and wait for its word that it listens; if it dies or
        says anything else first, reap it and raise WorkerStartError."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        # A SIGHUP to the process group (a reload, a terminal hanging up) that reached the new
        # process before the worker's code ignores it would kill it: it starts with SIGHUP
        # blocked, a mask kept across exec. (Here it only waits: the reload follows at once.
        # The lock: spawns that overlapped would put back each other's masks. uvloop's spawn
        # clears the mask in the child: with BALANCER_LOOP=uvloop the window stays.)
        async with self._exec_lock:
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
            try:
                worker.process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "balancer.workers",
                    str(theirs.fileno()),
                    str(worker.index),
                    pass_fds=[theirs.fileno()],
                )
            except OSError as exc:
                ours.close()
                raise WorkerStartError(f"cannot start a process: {exc}") from None
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                theirs.close()
        process = worker.process
        worker.started = loop.time()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        worker.writer = writer
        try:
            # The pools' state comes with the config: the worker routes with it from its first
            # connection (a backend in maintenance, say, gets none).
            cursors = self._assign()
            pools = {name: pool_snapshot(s.pool) for name, s in self.balancer.services.items()}
            await send(writer, (self.worker_config(), self.shared.name, cursors, pools))
            ready = await receive(reader)
            if ready[0] != "ready":
                raise WorkerStartError(f"said {ready!r} instead of ready")
        except (asyncio.IncompleteReadError, ConnectionError, WorkerStartError) as exc:
            writer.close()
            worker.writer = None
            try:  # (its end of the socket closes as it exits: give it the time to)
                async with asyncio.timeout(0 if isinstance(exc, WorkerStartError) else 5.0):
                    status = await process.wait()
            except TimeoutError:
                process.kill()
                status = await process.wait()
            if isinstance(exc, WorkerStartError):
                raise
            raise WorkerStartError(f"exited with {describe_status(status)}") from None
        self.balancer.log.event("worker", f"worker {worker.index} started, pid {process.pid}")
        worker.listener = loop.create_task(self._listen(worker, reader))

    async def _listen(self, worker: Worker, reader: asyncio.StreamReader) -> None:
        services = self.balancer.services
        while True:
            try:
                message = await receive(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            kind = message[0]
            if kind == "figures":
                worker.figures = message[1]
                self.aggregate()
            elif kind in ("failure", "answered"):
                service = services.get(message[1])
                backend = service.pool.by_key(message[2]) if service else None
                if service is None or backend is None:
                    continue
                if kind == "failure":
                    service.health.passive_failure(backend, message[3], refused=message[4])
                else:
                    service.health.passive_success(backend)

    async def _pause(self, delay: float) -> bool:
        """Sleep `delay` seconds, or less if the supervisor stops; True if it stops."""
        try:
            async with asyncio.timeout(delay):
                await self.stopped.wait()
        except TimeoutError:
            pass
        return self.stopping

    async def _watch(self, worker: Worker) -> None:
        """Wait for the worker to exit; replace it (with backoff while it keeps dying, and
        keep trying while replacements fail to start) until the supervisor stops."""
        loop = asyncio.get_running_loop()
        while True:
            assert worker.process is not None
            status = await worker.process.wait()
            if worker.listener is not None:
                try:  # read what the worker said last, up to its EOF
                    async with asyncio.timeout(2.0):
                        await worker.listener
                except TimeoutError:
                    worker.listener.cancel()
                worker.listener = None
            if worker.writer is not None:
                worker.writer.close()
                worker.writer = None
            self._retire(worker)
            if self.stopping:
                return
            quick = loop.time() - worker.started < 5.0
            worker.failures_in_a_row = worker.failures_in_a_row + 1 if quick else 0
            delay = min(RESTART_DELAY * 2**worker.failures_in_a_row, 30.0)
            self.balancer.log.event(
                "worker_died",
                f"worker {worker.index} (pid {worker.process.pid}) exited with "
                f"{describe_status(status)}; restarting in {delay:g}s",
            )
            while True:
                if await self._pause(delay):
                    return
                try:
                    await self._spawn(worker)
                    break
                except WorkerStartError as exc:
                    if self.stopping:
                        return
                    worker.failures_in_a_row += 1
                    delay = min(RESTART_DELAY * 2**worker.failures_in_a_row, 30.0)
                    pid = worker.process.pid if worker.process is not None else "none"
                    self.balancer.log.event(
                        "worker_failed",
                        f"worker {worker.index} (pid {pid}) failed to start: {exc}; "
                        f"retrying in {delay:g}s",
                    )
            if self.stopping:
                # Signalled by stop() while starting (when it may have ignored SIGINT).
                assert worker.process is not None
                if worker.process.returncode is None:
                    worker.process.send_signal(signal.SIGINT)

    def _retire(self, worker: Worker) -> None:
        """Keep a dead worker's cumulative figures in the totals."""
        if self._shared is None:
            return  # (stopped, and gave up waiting for this worker)
        for name, figures in worker.figures.items():
            self.retired_refusals.setdefault(name, Counter()).update(figures.get("refused", {}))
            kept = self.retired.setdefault(name, {})
            kept.setdefault("", Totals()).add(figures)
            for key, backend in figures["backends"].items():
                kept.setdefault(key, Totals()).add(backend)
        worker.figures = {}
        self.shared.clear_worker(worker.index)
        self.summed.clear()  # the retired figures changed: every sum is to be made again
        self.aggregate()

    def aggregate(self) -> None:
        """Sum the workers' figures into the supervisor's services, for the API and metrics.

        Workers report every STATS_INTERVAL, changed or not. A sum holds HDR histograms, dear
        to build, so only a service or backend whose figures changed since the last sum (or
        that is new) is summed again; an idle balancer with many backends stays idle."""
        summed: dict[tuple[str, str], tuple[object, tuple[Any, ...]]] = {}
        last = self.summed
        for name, service in self.balancer.services.items():
            kept = self.retired.get(name, {})
            current = [worker.figures.get(name) for worker in self.workers]
            present = [figures for figures in current if figures]
            service.remote_open = sum(figures["open"] for figures in present)
            service.remote_queued = sum(figures["queued"] for figures in present)
            refusals = Counter(self.retired_refusals.get(name, {}))
            for figures in present:
                refusals.update(figures.get("refused", {}))
            service.refusals = refusals
            signature: tuple[Any, ...] = tuple(
                (figures["accepted"], figures["stats"]) if figures else None for figures in current
            )
            seen = last.get((name, ""))
            if seen is None or seen[0] is not service or seen[1] != signature:
                whole = Totals()
                if "" in kept:
                    whole.add_totals(kept[""])
                for figures in present:
                    whole.add(figures)
                service.accepted = whole.total  # (finished connections; the open ones apart)
                service.stats = whole.stats
            summed[(name, "")] = (service, signature)
            for b in service.pool.backends.values():
                key = b.key
                signature = tuple(
                    figures["backends"].get(key) if figures else None for figures in current
                )
                seen = last.get((name, key))
                if seen is None or seen[0] is not b or seen[1] != signature:
                    t = Totals()
                    if key in kept:
                        t.add_totals(kept[key])
                    for item in signature:
                        if item is not None:
                            t.add(item)
                    b.total, b.bytes_in, b.bytes_out = t.total, t.bytes_in, t.bytes_out
                    b.connect_failures = t.connect_failures
                    b.stats = t.stats
                summed[(name, key)] = (b, signature)
                b.active = self.shared.total(b.slot) if b.slot >= 0 else 0
        self.summed = summed

    def _post(self, worker: Worker, message: object) -> None:
        if worker.writer is None or worker.writer.is_closing():
            return
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        worker.writer.write(HEADER.pack(len(data)) + data)

    def _pool_changed(self, pool: Pool) -> None:
        if self.holding:
            return  # (`reloading` sends every pool when the reload is over)
        service = self.balancer.services.get(pool.name)
        if service is None or service.pool is not pool:
            return  # a removed service's (the workers drain theirs), or one in a reload
        self._assign()
        for worker in self.workers:
            self._post(worker, ("pool", pool.name, pool_snapshot(pool)))

    @contextlib.contextmanager
    def reloading(self) -> Iterator[None]:
        """While a reload applies here, its pool changes wait; when it is over, every pool goes
        to the workers, after the new config if `broadcast_config` sent one meanwhile.

        A snapshot sent before the config would give a worker a backend the reload added
        without the settings only the config carries (send_proxy, max_connections), and the
        worker would send it clients without them until the config came."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            for service in self.balancer.services.values():
                if self._pool_changed not in service.pool.rebuild_listeners:
                    service.pool.rebuild_listeners.append(self._pool_changed)
                self._pool_changed(service.pool)

    def broadcast_config(self) -> None:
        """A reload applied here: its config to every worker (inside `reloading`)."""
        # A service the reload removed gives its port back (its workers drain and close
        # their listeners when the config reaches them).
        for name in [n for n in self.reserved if n not in self.balancer.services]:
            self.reserved.pop(name).close()
        config = self.worker_config()
        services = self._assign()
        for worker in self.workers:
            self._post(worker, ("config", config, services))

    def interrupt(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signal.SIGINT)

    async def stop(self, grace: float) -> None:
        """SIGTERM (drain for `grace`) or, with no grace, SIGINT to every worker; then wait."""
        self.stopping = True
        self.stopped.set()
        sig = signal.SIGTERM if grace > 0 else signal.SIGINT
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(sig)
        watchers = [w.watcher for w in self.workers if w.watcher is not None]
        try:
            async with asyncio.timeout(grace + 5.0):
                # (A watcher's failure must not stop the others being waited for.)
                await asyncio.gather(*watchers, return_exceptions=True)
        except TimeoutError:
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    worker.process.kill()
        for task in list(self.tasks):
            task.cancel()
        for sock in self.reserved.values():
            sock.close()
        if self._shared is not None:
            self._shared.close()
            self._shared = None


if __name__ == "__main__":
    sys.exit(run_worker(sys.argv[1:]))
