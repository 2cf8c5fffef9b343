"""The balancer process: every service of a config on one event loop, with its lifecycle.

Signals: SIGTERM drains gracefully (stop accepting, let open connections finish for up to the
grace period), SIGINT stops at once, SIGHUP reloads the config file.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any

from balancer import selection
from balancer.admin.server import Admin, AdminError
from balancer.config import Config, ConfigError, ServiceConfig, load_config
from balancer.control.limits import connection_budget, raise_descriptor_limit
from balancer.control.loop import run_loop
from balancer.control.supervisor import Supervisor
from balancer.core.address import Address
from balancer.core.errors import describe_error
from balancer.observability.logs import EventLog, route_python_logging
from balancer.pool.backend import Backend
from balancer.service.budget import Budget
from balancer.service.service import HealthFactory, Service, StartupError
from balancer.service.shared import SharedState

FLUSH_INTERVAL = 0.5
# How the supervisor starts a worker process (see control.worker).
WORKER_COMMAND = (sys.executable, "-m", "balancer.control.worker")


def read_config(path: str | Path, *, admin_table: bool = True) -> Config:
    """A config file, validated whole, with each service's algorithm made once (so that one
    that cannot be made is an error in the file, not a crash later)."""
    return load_config(path, admin_table=admin_table, check_algorithm=selection.check_algorithm)


class Balancer:
    """One process's services. With `workers` > 1 this process is the supervisor: it binds no
    listener of its own but runs checks, the admin API and reloads for its worker processes."""

    def __init__(
        self,
        config: Config,
        log: EventLog,
        config_path: str | None = None,
        *,
        worker: int | None = None,
        health: HealthFactory | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.log = log
        self.worker = worker
        self.health_factory = health
        self.supervisor: Supervisor | None = None
        self.budget = Budget(connection_budget())
        if worker is None and config.workers > 1:
            self.supervisor = Supervisor(self, config.workers, WORKER_COMMAND)
        self.services = {s.name: self._service(s) for s in config.services}
        self.background: set[asyncio.Task[object]] = set()  # reloads, removed services draining
        self.admin: Admin | None = None
        self._stop = asyncio.Event()
        self._grace = 0.0
        self._reason = ""
        self._flusher: asyncio.TimerHandle | None = None
        self._reloading = asyncio.Lock()
        self.exhausted_since: float | None = None

    def share(self, shared: SharedState, cursors: dict[str, int]) -> None:
        """A worker's services count connections and walk round-robin with the others."""
        assert self.worker is not None
        for name, service in self.services.items():
            if name in cursors:
                service.share(shared, self.worker, cursors[name])

    def open_on(self, backend: Backend) -> int:
        """A backend's open connections now. A supervisor reads its workers' counts in shared
        memory: the figures they report, and `backend.active` with them, lag by up to
        STATS_INTERVAL."""
        if self.supervisor is not None and backend.slot >= 0:
            return self.supervisor.shared.total(backend.slot)
        return backend.active

    def _service(self, config: ServiceConfig) -> Service:
        service = Service(
            config,
            self.log,
            self.health_factory,
            worker=self.worker is not None,
            budget=self.budget,
        )
        service.on_exhausted = self.accept_exhausted
        return service

    async def _open(self, service: Service) -> None:
        """Start a service: listen, or, as a supervisor, reserve its port for the workers."""
        if self.supervisor is None:
            await service.start()
        else:
            self.supervisor.reserve(service, service.config.listen)
            service.announce()
            service.health.sync()

    async def start(self) -> None:
        started: list[Service] = []
        try:
            for service in self.services.values():
                await self._open(service)
                started.append(service)
            if self.config.admin.listen is not None and self.worker is None:
                self.admin = Admin(self, self.config.admin.listen, self.config.admin.token)
                await self.admin.start()
                self.log.event("admin", f"admin API and dashboard on http://{self.admin.address}/")
            if self.supervisor is not None:
                await self.supervisor.start()
        except (StartupError, AdminError):
            for service in started:
                service.stop()
            raise
        self._schedule_flush()
        # What start-up made lives as long as the process: keep it out of every collection.
        gc.freeze()

    def accept_exhausted(self, error: str) -> None:
        if self.exhausted_since is None:
            # (Connections accepted in the same batch are still to arrive: not a recovery.)
            self.exhausted_since = time.monotonic()
            self.log.event(
                "accept_paused",
                f"cannot accept: {error}; listeners pause and retry every second",
            )
            for service in self.services.values():
                service.on_recovery = self._accept_recovered

    def _accept_recovered(self) -> None:
        if self.exhausted_since is not None:
            took = time.monotonic() - self.exhausted_since
            if took < 0.5:
                return  # accepted before the failure, in the same batch
            self.exhausted_since = None
            self.log.event("accept_resumed", f"accepting again after {took:.1f}s")
        for service in self.services.values():
            service.on_recovery = None

    def _schedule_flush(self) -> None:
        self.log.flush()
        loop = asyncio.get_running_loop()
        self._flusher = loop.call_later(FLUSH_INTERVAL, self._schedule_flush)

    def request_stop(self, reason: str, grace: float) -> None:
        if self._stop.is_set():
            # A second signal while draining stops at once.
            self._grace = 0.0
            for service in self.services.values():
                service.stop()
            if self.supervisor is not None:
                self.supervisor.interrupt()
            return
        self._reason = reason
        self._grace = grace
        self._stop.set()

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        # (the grace as it is when the signal comes: a reload may have changed it)
        loop.add_signal_handler(
            signal.SIGTERM, lambda: self.request_stop("SIGTERM", self.config.grace)
        )
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT", 0.0)
        loop.add_signal_handler(signal.SIGHUP, self._reload_soon)

    def _reload_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload("SIGHUP"))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def reload(self, trigger: str) -> list[str]:
        """Re-read the config file and apply it; on any error change nothing, return errors."""
        async with self._reloading:
            if self.config_path is None:
                errors = ["nothing to reload: the balancer was started from flags, not --config"]
            else:
                try:
                    new = read_config(self.config_path, admin_table=False)
                except ConfigError as exc:
                    errors = exc.errors
                else:
                    supervisor = self.supervisor
                    if supervisor is None:
                        errors = await self._apply(new)
                    else:
                        with supervisor.reloading():
                            errors = await self._apply(new)
                            if not errors:
                                supervisor.broadcast_config()
            if errors:
                for line in errors:
                    self.log.event("reload_failed", f"{trigger}: {line}")
                self.log.event("reload_failed", f"{trigger}: reload rejected, old config kept")
            else:
                self.log.event("reload", f"{trigger}: config {self.config_path} reloaded")
            return errors

    async def apply_config(self, new: Config) -> None:
        """A worker takes the config its supervisor has already validated and applied."""
        errors = await self._apply(new)
        for line in errors:
            self.log.event("reload_failed", f"worker {self.worker}: {line}")

    async def _apply(self, new: Config) -> list[str]:
        # Bind every new listener first; if one fails, close those and change nothing.
        supervisor = self.supervisor
        if supervisor is not None:
            errors = supervisor.check(new)
            if errors:
                return errors
        fresh = {s.name: self._service(s) for s in new.services if s.name not in self.services}
        moved = {
            s.name: s
            for s in new.services
            if s.name in self.services and s.listen != self.services[s.name].config.listen
        }
        servers = {}
        # A supervisor's new reservations, kept apart until every one of them is made.
        reservations: dict[str, tuple[Address, socket.socket]] = {}
        wanted = {s.name for s in new.services}
        # An address that a renamed, moved or removed service leaves is taken over with its
        # listener (binding it again would find it in use), once every other bind succeeded.
        holders = {}
        if supervisor is None:
            holders = {
                service.config.listen: service
                for name, service in self.services.items()
                if (name not in wanted or name in moved) and service.config.listen.port
            }
        takes = {
            name: holders.pop(listen)
            for name, listen in [
                *((s.name, s.config.listen) for s in fresh.values()),
                *((name, cfg.listen) for name, cfg in moved.items()),
            ]
            if listen in holders
        }
        try:
            for service in fresh.values():
                if supervisor is not None:
                    sock = supervisor.bind_port(service, service.config.listen)
                    reservations[service.name] = (service.config.listen, sock)
                elif service.name not in takes:
                    await self._open(service)
            for name, cfg in moved.items():
                if supervisor is not None:
                    sock = supervisor.bind_port(self.services[name], cfg.listen)
                    reservations[name] = (cfg.listen, sock)
                elif name not in takes:
                    servers[name] = await self.services[name].bind(cfg.listen)
        except StartupError as exc:
            for _, sock in reservations.values():
                sock.close()
            for service in fresh.values():
                service.stop()
                self.budget.services.remove(service)
            for server in servers.values():
                server.close()
            return [str(exc)]
        if supervisor is not None:
            # Every port is bound: now the services move (closing their old reservations).
            for name, (listen, sock) in reservations.items():
                supervisor.commit(
                    fresh[name] if name in fresh else self.services[name], listen, sock
                )
            for service in fresh.values():
                service.announce()
                service.health.sync()
        for name, holder in takes.items():
            listener = holder.give_listener()
            assert listener is not None  # (a service in the config listens)
            if name in fresh:
                await fresh[name].start(fresh[name].claim(listener))
            else:
                servers[name] = self.services[name].claim(listener)
        for name in [n for n in self.services if n not in wanted]:
            removed = self.services.pop(name)
            if self.worker is None:  # (the supervisor says it for every worker)
                self.log.event(
                    "removed", f"service {name} removed by reload, draining", service=name
                )
            task = asyncio.get_running_loop().create_task(self._drain_removed(removed))
            self.background.add(task)
            task.add_done_callback(self.background.discard)
        for cfg in new.services:
            if cfg.name in fresh:
                self.services[cfg.name] = fresh[cfg.name]
            else:
                self.services[cfg.name].apply(cfg, servers.get(cfg.name))
                self.services[cfg.name].admit_waiting()  # (a higher max_connections lets them in)
        self.config = Config(
            services=new.services,
            log=self.config.log,
            admin=self.config.admin,
            workers=self.config.workers,
            grace=new.grace,
        )
        return []

    async def _drain_removed(self, service: Service) -> None:
        """Drain a service a reload removed, then forget it."""
        try:
            await service.drain(self.config.grace)
        finally:
            if service in self.budget.services:
                self.budget.services.remove(service)

    async def serve(self) -> None:
        await self._stop.wait()
        open_sessions = sum(s.open_connections() for s in self.services.values())
        self.log.event(
            "stopping",
            f"{self._reason}: stopping, {open_sessions} connections open, grace {self._grace:g}s",
        )
        if self.admin is not None:
            await self.admin.stop()
        if self.supervisor is not None:
            await self.supervisor.stop(self._grace)
            for service in self.services.values():
                service.stop()
        else:
            await asyncio.gather(*(s.drain(self._grace) for s in self.services.values()))
        for task in list(self.background):
            task.cancel()
        # Let the transports closed above deliver their connection_lost callbacks.
        for _ in range(3):
            await asyncio.sleep(0)
        if self._flusher is not None:
            self._flusher.cancel()
        total = sum(s.accepted for s in self.services.values())
        who = "stopped" if self.worker is None else f"worker {self.worker} stopped"
        self.log.event("stop", f"{who} after {total} connections")
        self.log.flush()


def install_exception_handler(balancer: Balancer) -> None:
    """Turn asyncio's report of accept() failing for lack of descriptors (on the admin API's
    listener; services report their own) into one line per episode; asyncio itself pauses
    that listener and retries every second."""
    loop = asyncio.get_running_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            exc = context.get("exception")
            balancer.accept_exhausted(describe_error(exc) if exc else "out of resources")
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


async def _main(config: Config, log: EventLog, config_path: str | None, announce: IO[str]) -> int:
    raise_descriptor_limit(log)
    balancer = Balancer(config, log, config_path)
    install_exception_handler(balancer)
    try:
        await balancer.start()
    except (StartupError, AdminError) as exc:
        log.event("error", str(exc))
        print(f"balancer: {exc}", file=sys.stderr)
        return 1
    balancer.install_signals()
    workers = f", {config.workers} workers" if balancer.supervisor is not None else ""
    log.event("start", f"balancer started with {len(config.services)} service(s){workers}")
    for service in balancer.services.values():
        print(f"service {service.name} listening on {service.address}", file=announce, flush=True)
    if balancer.admin is not None:
        print(f"admin listening on http://{balancer.admin.address}/", file=announce, flush=True)
    await balancer.serve()
    return 0


def run(config: Config, config_path: str | None = None, announce: IO[str] = sys.stderr) -> int:
    """Run until a signal stops it; returns the process exit status."""
    try:
        log = EventLog(config.log.file, config.log.format)
    except OSError as exc:
        print(f"balancer: cannot open log file {config.log.file}: {exc.strerror}", file=sys.stderr)
        return 1
    route_python_logging(log)
    path = str(Path(config_path).resolve()) if config_path else None
    try:
        return run_loop(_main(config, log, path, announce))
    finally:
        log.close()
