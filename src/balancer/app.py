"""The balancer process: every service of a config on one event loop, with its lifecycle.

Signals: SIGTERM drains gracefully (stop accepting, let open connections finish for up to the
grace period), SIGINT stops at once.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import IO

from balancer.config import Config
from balancer.logs import EventLog, route_python_logging
from balancer.service import Service, StartupError

FLUSH_INTERVAL = 0.5


class Balancer:
    def __init__(self, config: Config, log: EventLog) -> None:
        self.config = config
        self.log = log
        self.services = [Service(s, log) for s in config.services]
        self._stop = asyncio.Event()
        self._grace = 0.0
        self._reason = ""
        self._flusher: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        started: list[Service] = []
        try:
            for service in self.services:
                await service.start()
                started.append(service)
        except StartupError:
            for service in started:
                service.stop()
            raise
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        self.log.flush()
        loop = asyncio.get_running_loop()
        self._flusher = loop.call_later(FLUSH_INTERVAL, self._schedule_flush)

    def request_stop(self, reason: str, grace: float) -> None:
        if self._stop.is_set():
            # A second signal while draining stops at once.
            self._grace = 0.0
            for service in self.services:
                service.stop()
            return
        self._reason = reason
        self._grace = grace
        self._stop.set()

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM", self.config.grace)
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT", 0.0)

    async def serve(self) -> None:
        await self._stop.wait()
        open_sessions = sum(len(s.sessions) for s in self.services)
        self.log.event(
            "stopping",
            f"{self._reason}: stopping, {open_sessions} connections open, grace {self._grace:g}s",
        )
        await asyncio.gather(*(s.drain(self._grace) for s in self.services))
        # Let the transports closed above deliver their connection_lost callbacks.
        for _ in range(3):
            await asyncio.sleep(0)
        if self._flusher is not None:
            self._flusher.cancel()
        total = sum(s.accepted for s in self.services)
        self.log.event("stop", f"stopped after {total} connections")
        self.log.flush()


async def _main(config: Config, log: EventLog, announce: IO[str]) -> int:
    balancer = Balancer(config, log)
    try:
        await balancer.start()
    except StartupError as exc:
        log.event("error", str(exc))
        print(f"balancer: {exc}", file=sys.stderr)
        return 1
    balancer.install_signals()
    log.event("start", f"balancer started with {len(config.services)} service(s)")
    for service in balancer.services:
        print(f"service {service.name} listening on {service.address}", file=announce, flush=True)
    await balancer.serve()
    return 0


def run(config: Config, announce: IO[str] = sys.stderr) -> int:
    """Run until a signal stops it; returns the process exit status."""
    try:
        log = EventLog(config.log.file, config.log.format)
    except OSError as exc:
        print(f"balancer: cannot open log file {config.log.file}: {exc.strerror}", file=sys.stderr)
        return 1
    route_python_logging(log)
    try:
        return asyncio.run(_main(config, log, announce))
    finally:
        log.close()
