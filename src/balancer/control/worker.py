"""A worker process: it relays the connections the kernel gives it on the shared ports.

Started by the supervisor as `python -m balancer.control.worker FD INDEX`, with one end of a
socketpair as FD. It takes its config and the pools' state from the supervisor before it
listens, reports passive failures and figures back, and applies each pool snapshot and
reloaded config the supervisor sends. Health, the admin API and reloads are the supervisor's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

from balancer.config.model import HealthCheckConfig, PassiveConfig
from balancer.control.app import Balancer, install_exception_handler
from balancer.control.figures import worker_figures
from balancer.control.loop import run_loop
from balancer.control.snapshot import BackendObjects, apply_snapshot
from balancer.control.wire import receive, send
from balancer.observability.logs import EventLog, route_python_logging
from balancer.pool.backend import Backend
from balancer.service.shared import SharedState

STATS_INTERVAL = 0.5  # how often a worker reports its figures


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
    return run_loop(worker_main(fd, index))


if __name__ == "__main__":
    sys.exit(run_worker(sys.argv[1:]))
