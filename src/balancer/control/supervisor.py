"""The supervisor of several worker processes that share the listening ports.

The supervisor owns every decision about backends: it runs the health checks, the passive
ejection logic, the admin API and reloads, and pushes each pool's state to the workers after
every change. Workers only relay (see `worker`): they accept on the service ports
(SO_REUSEPORT, so the kernel spreads new connections over them), report passive failures and
their figures back, and read each other's open connections from shared memory, so
least-connections counts them all. A worker that dies is replaced; only its own open
connections are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from balancer.config.model import Config
from balancer.control.figures import Totals
from balancer.control.snapshot import pool_snapshot
from balancer.control.wire import encode, receive, send
from balancer.core.address import Address
from balancer.observability.logs import EventLog
from balancer.pool.backend import Backend
from balancer.pool.pool import Pool
from balancer.service.service import Service, StartupError
from balancer.service.shared import MAX_SERVICES, MAX_SLOTS, SharedState

RESTART_DELAY = 0.5  # before a dead worker is replaced; doubled while replacements keep dying


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


class Supervised(Protocol):
    """What the supervisor needs of the process it runs in (control.app's Balancer)."""

    config: Config
    log: EventLog
    services: dict[str, Service]


class Supervisor:
    def __init__(self, balancer: Supervised, count: int, command: Sequence[str]) -> None:
        """`command` starts one worker process, given the socket's descriptor and the
        worker's index as two more arguments."""
        self.balancer = balancer
        self.command = list(command)
        self.workers = [Worker(i) for i in range(count)]
        self.count = count
        # Made when the workers start (not before the ports are reserved: a balancer that
        # exits for a port in use has no shared memory to leave behind).
        self._shared: SharedState | None = None
        self.slots: dict[tuple[str, Address], int] = {}
        self.unslotted: set[tuple[str, Address]] = set()  # logged: no slot was left for them
        self.service_index: dict[str, int] = {}
        self.reserved: dict[str, socket.socket] = {}
        self.dead_figures: dict[str, dict[str, Totals]] = {}  # of workers that died, kept
        self.dead_refusals: dict[str, Counter[str]] = {}
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
                    *self.command,
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
            self._keep_figures(worker)
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

    def _keep_figures(self, worker: Worker) -> None:
        """Keep a dead worker's cumulative figures in the totals."""
        if self._shared is None:
            return  # (stopped, and gave up waiting for this worker)
        for name, figures in worker.figures.items():
            self.dead_refusals.setdefault(name, Counter()).update(figures.get("refused", {}))
            kept = self.dead_figures.setdefault(name, {})
            kept.setdefault("", Totals()).add(figures)
            for key, backend in figures["backends"].items():
                kept.setdefault(key, Totals()).add(backend)
        worker.figures = {}
        self.shared.clear_worker(worker.index)
        self.summed.clear()  # the dead workers' figures changed: every sum is to be made again
        self.aggregate()

    def aggregate(self) -> None:
        """Sum the workers' figures into the supervisor's services, for the API and metrics.

        Workers report every STATS_INTERVAL, changed or not. A sum holds HDR histograms, dear
        to build, so only a service or backend whose figures changed since the last sum (or
        that is new) is summed again; an idle balancer with many backends stays idle."""
        summed: dict[tuple[str, str], tuple[object, tuple[Any, ...]]] = {}
        last = self.summed
        for name, service in self.balancer.services.items():
            kept = self.dead_figures.get(name, {})
            current = [worker.figures.get(name) for worker in self.workers]
            present = [figures for figures in current if figures]
            service.remote_open = sum(figures["open"] for figures in present)
            service.remote_queued = sum(figures["queued"] for figures in present)
            refusals = Counter(self.dead_refusals.get(name, {}))
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
                    b.failures = t.failures
                    b.stats = t.stats
                summed[(name, key)] = (b, signature)
                b.active = self.shared.total(b.slot) if b.slot >= 0 else 0
        self.summed = summed

    def _post(self, worker: Worker, message: object) -> None:
        if worker.writer is None or worker.writer.is_closing():
            return
        worker.writer.write(encode(message))

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
