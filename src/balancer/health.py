"""Health: which backends may take traffic. Active probes run here; the relay reports
passive failures here. Health never picks a backend and never moves bytes.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from balancer.config import HealthCheckConfig
from balancer.pool import DOWN, UP, Backend, Pool
from balancer.relay import describe_error

JITTER = 0.1  # each interval is stretched or shrunk by up to 10%, so checks do not fire together


@dataclass
class Streak:
    ok: int = 0
    failed: int = 0
    last_error: str = ""


async def probe_tcp(backend: Backend, timeout: float) -> str | None:
    """None when a TCP connect succeeds within the timeout, else what went wrong."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(
                asyncio.Protocol, backend.address.host, backend.address.port
            )
    except (OSError, TimeoutError) as exc:
        return describe_error(exc).replace("connect timeout", f"no answer within {timeout:g}s")
    transport.abort()
    return None


class HealthChecker:
    """Runs one probe loop per backend of a pool, concurrently, and applies rise and fall."""

    def __init__(self, pool: Pool, config: HealthCheckConfig) -> None:
        self.pool = pool
        self.config = config
        self.streaks: dict[Backend, Streak] = {}
        self.tasks: dict[Backend, asyncio.Task[None]] = {}

    def sync(self) -> None:
        """Start probing new backends and stop probing removed ones."""
        if not self.config.enabled:
            return
        current = set(self.pool.backends.values())
        for backend in list(self.tasks):
            if backend not in current:
                self.tasks.pop(backend).cancel()
                self.streaks.pop(backend, None)
        for backend in current - self.tasks.keys():
            self.streaks[backend] = Streak()
            self.tasks[backend] = asyncio.get_running_loop().create_task(self._watch(backend))

    def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    def passive_failure(self, backend: Backend) -> None:
        """A live connection failed: the backend must pass `rise` checks again to return."""
        streak = self.streaks.get(backend)
        if streak is not None:
            streak.ok = 0

    async def _watch(self, backend: Backend) -> None:
        interval = self.config.interval
        await asyncio.sleep(random.uniform(0, min(interval, 0.2)))
        while True:
            error = await probe_tcp(backend, self.config.timeout)
            self.record(backend, error)
            await asyncio.sleep(interval * random.uniform(1 - JITTER, 1 + JITTER))

    def record(self, backend: Backend, error: str | None) -> None:
        streak = self.streaks.setdefault(backend, Streak())
        first = not backend.checked
        if error is None:
            streak.ok += 1
            streak.failed = 0
            if backend.health == DOWN and (first or streak.ok >= self.config.rise):
                self.pool.set_health(backend, UP, self._up_reason(streak, first))
        else:
            streak.failed += 1
            streak.ok = 0
            streak.last_error = error
            if backend.health == UP and streak.failed >= self.config.fall:
                reason = f"{streak.failed} consecutive tcp check failures, {error}"
                self.pool.set_health(backend, DOWN, reason)
        backend.checked = True

    def _up_reason(self, streak: Streak, first: bool) -> str:
        if first:
            return "tcp check passed"
        return f"{streak.ok} consecutive tcp checks passed"
