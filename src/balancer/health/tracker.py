"""Health: which backends may take traffic.

Active probes (tcp, http, send_expect) run here, one loop per backend, concurrently and with
jitter. The data plane reports passive failures and successes here; enough consecutive
failures eject a backend for a time that doubles on repeated ejections. A returning backend
may slow-start. Health never picks a backend and never moves bytes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from balancer.config.model import HealthCheckConfig, PassiveConfig
from balancer.health.probe import SKIPPED, probe
from balancer.pool.backend import DOWN, ENABLED, UP, Backend
from balancer.pool.pool import Pool

JITTER = 0.1  # each interval is stretched or shrunk by up to 10%, so checks do not fire together
SLOW_START_STEPS = 10


@dataclass
class Tracking:
    """What health knows of one backend beyond its state in the pool."""

    ok: int = 0  # consecutive passed checks
    failed: int = 0  # consecutive failed checks
    fails: int = 0  # consecutive passive failures (timeouts, resets)
    refused: int = 0  # consecutive refused connects
    ejections: int = 0  # ejections in a row, for the doubling
    ejection_time: float = 0.0
    ejected_until: float = 0.0
    returned_at: float = 0.0
    refusal_logged: float = -1e9  # when a refusal by the ejection cap was last logged
    refusals_unlogged: int = 0
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None
    ramp: asyncio.TimerHandle | None = None


# Told of what health did that is no state change of a backend: notice(event, backend, text).
Notice = Callable[[str, Backend, str], None]


def ejection_cap(enabled: int, percent: int) -> int:
    """How many of `enabled` backends passive ejection may hold down at once: `percent` of
    them, at least one and never all (Envoy's max_ejection_percent); 0% none, 100% all."""
    if percent <= 0 or enabled == 0:
        return 0
    if percent >= 100:
        return enabled
    return min(enabled - 1, max(1, enabled * percent // 100))


class Health:
    def __init__(
        self,
        pool: Pool,
        check: HealthCheckConfig,
        passive: PassiveConfig,
        send_proxy: str | None = None,
        notice: Notice | None = None,
    ) -> None:
        self.pool = pool
        self.check = check
        self.passive = passive
        self.send_proxy = send_proxy  # the service's: the PROXY header its backends expect
        self.notice = notice
        self.tracking: dict[Backend, Tracking] = {}

    def _track(self, backend: Backend) -> Tracking:
        tracking = self.tracking.get(backend)
        if tracking is None:
            tracking = self.tracking[backend] = Tracking()
        return tracking

    def sync(self) -> None:
        """Start watching new backends and forget removed ones."""
        current = set(self.pool.backends.values())
        for backend in list(self.tracking):
            if backend not in current:
                self._cancel(self.tracking.pop(backend))
        loop = asyncio.get_running_loop()
        for backend in current:
            tracking = self._track(backend)
            if self.check.enabled and tracking.task is None:
                tracking.task = loop.create_task(self._watch(backend))

    def stop(self) -> None:
        for tracking in self.tracking.values():
            self._cancel(tracking)
        self.tracking.clear()

    def reconfigure(
        self, check: HealthCheckConfig, passive: PassiveConfig, send_proxy: str | None
    ) -> None:
        """A reload's settings. Checks restart with the new ones (`sync` starts them), and
        their counts start afresh; ejections, slow starts and failure counts carry on. With
        checks turned off, a backend they held down (and no ejection holds) comes back."""
        self.send_proxy = send_proxy  # (the next check of each backend sends the new header)
        if check != self.check:
            for tracking in self.tracking.values():
                if tracking.task is not None:
                    tracking.task.cancel()
                    tracking.task = None
                tracking.ok = tracking.failed = 0
        self.check, self.passive = check, passive
        if not check.enabled:
            for backend in list(self.pool.backends.values()):
                backend.checks_up = True  # (no check holds anything down)
                tracking = self._track(backend)
                if backend.health == DOWN and tracking.timer is None:
                    self._up(backend, "health checks turned off")
            self.pool.rebuild()

    @staticmethod
    def _cancel(tracking: Tracking) -> None:
        for handle in (tracking.task, tracking.timer, tracking.ramp):
            if handle is not None:
                handle.cancel()

    # -- active checks ---------------------------------------------------------------------

    async def _watch(self, backend: Backend) -> None:
        interval = self.check.interval
        await asyncio.sleep(random.uniform(0, min(interval, 0.2)))
        while True:
            try:
                error = await probe(backend, self.check, self.send_proxy)
            except Exception as exc:  # (a defect of ours, not the backend's: say so, go on)
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"health check of {backend.key} failed", "exception": exc}
                )
                error = SKIPPED
            self.record(backend, error)
            await asyncio.sleep(interval * random.uniform(1 - JITTER, 1 + JITTER))

    def record(self, backend: Backend, error: str | None) -> None:
        """Apply one check result, with rise and fall."""
        if error is SKIPPED:
            return
        tracking = self._track(backend)
        # A backend that has never been up nor down (a discovered port) needs one pass.
        first = not backend.transitions.get(UP) and not backend.transitions.get(DOWN)
        kind = self.check.type
        verdict, health = backend.checks_up, backend.health
        if error is None:
            tracking.ok += 1
            tracking.failed = 0
            if first or tracking.ok >= self.check.rise:
                backend.checks_up = True
            if backend.health == DOWN and time.monotonic() >= tracking.ejected_until:
                if first:
                    self._up(backend, f"{kind} check passed")
                elif tracking.ok >= self.check.rise:
                    self._up(backend, f"{tracking.ok} consecutive {kind} checks passed")
        else:
            tracking.failed += 1
            tracking.ok = 0
            if tracking.failed >= self.check.fall:
                backend.checks_up = False
            if backend.health == UP and tracking.failed >= self.check.fall:
                plural = "s" if tracking.failed > 1 else ""
                self.pool.set_health(
                    backend,
                    DOWN,
                    f"{tracking.failed} consecutive {kind} check failure{plural}, {error}",
                )
        if backend.checks_up != verdict and backend.health == health and self.pool.panic:
            # The checks' verdict on an ejected backend decides whether a panic may use it.
            self.pool.rebuild()

    # -- passive detection -----------------------------------------------------------------

    def passive_failure(self, backend: Backend, error: str, *, refused: bool) -> None:
        """A failure the data plane judged the backend's (see service.blame): a refused or
        timed-out connect, or a close or reset before it answered."""
        tracking = self._track(backend)
        tracking.ok = 0  # a live failure outweighs earlier passed checks
        if refused:
            tracking.refused += 1
            count, limit, what = tracking.refused, self.passive.max_fails_refused, "refused connect"
        else:
            tracking.fails += 1
            count, limit, what = tracking.fails, self.passive.max_fails, "failure"
        if count >= limit and backend.health == UP:
            why = f"{count} consecutive {what}{'s' if count > 1 else ''} ({error})"
            if self._may_eject(backend):
                self._eject(backend, tracking, why)
            else:
                self._refuse_ejection(backend, tracking, why)

    def passive_success(self, backend: Backend) -> None:
        tracking = self.tracking.get(backend)
        if tracking is not None:
            tracking.fails = tracking.refused = 0

    def _may_eject(self, backend: Backend) -> bool:
        enabled = [b for b in self.pool.backends.values() if b.state == ENABLED]
        if backend.state != ENABLED:
            return True  # (it takes no new connection: its ejection costs no capacity)
        # Down while the checks say up: ejected, or out of an ejection and waiting for `rise`
        # passes (the checks' own verdict, once they find it down, is no ejection's doing).
        held = sum(1 for b in enabled if b.health == DOWN and b.checks_up)
        return held < ejection_cap(len(enabled), self.passive.max_ejection_percent)

    def _refuse_ejection(self, backend: Backend, tracking: Tracking, why: str) -> None:
        """The cap holds: the backend stays in, its count starts again, and the refusal is
        counted, and logged at most once per failure_window for each backend."""
        tracking.fails = tracking.refused = 0
        backend.ejections_refused += 1
        tracking.refusals_unlogged += 1
        now = time.monotonic()
        if self.notice is not None and now - tracking.refusal_logged >= self.passive.failure_window:
            enabled = sum(1 for b in self.pool.backends.values() if b.state == ENABLED)
            cap = ejection_cap(enabled, self.passive.max_ejection_percent)
            more = tracking.refusals_unlogged - 1
            self.notice(
                "ejection_refused",
                backend,
                f"not ejected after {why}: {cap} of {enabled} enabled backends may be ejected at "
                f"once (max_ejection_percent {self.passive.max_ejection_percent})"
                + (f"; {more} more refused since the last line" if more else ""),
            )
            tracking.refusal_logged = now
            tracking.refusals_unlogged = 0

    def _eject(self, backend: Backend, tracking: Tracking, why: str) -> None:
        now = time.monotonic()
        # A backend that stayed up twice its last ejection time starts the doubling afresh.
        if tracking.returned_at and now - tracking.returned_at >= 2 * tracking.ejection_time:
            tracking.ejections = 0
        tracking.ejections += 1
        duration = min(
            self.passive.ejection_time * 2 ** (tracking.ejections - 1),
            self.passive.max_ejection_time,
        )
        tracking.ejection_time = duration
        tracking.ejected_until = now + duration
        tracking.fails = tracking.refused = 0
        if tracking.timer is not None:
            tracking.timer.cancel()
        tracking.timer = asyncio.get_running_loop().call_later(
            duration, self._ejection_over, backend
        )
        backend.ejected = True
        backend.ejections += 1
        self.pool.set_health(backend, DOWN, f"ejected for {duration:g}s after {why}")

    def _ejection_over(self, backend: Backend) -> None:
        tracking = self._track(backend)
        tracking.timer = None
        backend.ejected = False
        if backend.health == UP:
            return
        if not self.check.enabled:
            self._up(backend, f"ejection of {tracking.ejection_time:g}s over")
        elif tracking.ok >= self.check.rise:
            self._up(backend, f"ejection over and {tracking.ok} consecutive checks passed")
        # else: the active check brings it back after `rise` passes

    # -- returning ---------------------------------------------------------------------------

    def _up(self, backend: Backend, reason: str) -> None:
        tracking = self._track(backend)
        tracking.returned_at = time.monotonic()
        backend.ejected = False
        if tracking.ramp is not None:
            tracking.ramp.cancel()
            tracking.ramp = None
        was_checked_before = backend.transitions.get(DOWN, 0) > 0
        slow = self.passive.slow_start
        if slow > 0 and was_checked_before:
            backend.effective_weight = backend.weight / SLOW_START_STEPS
            reason += f", slow start over {slow:g}s"
            self.pool.set_health(backend, UP, reason)
            self._schedule_ramp(backend, tracking, 1)
        else:
            backend.effective_weight = backend.weight
            self.pool.set_health(backend, UP, reason)

    def _schedule_ramp(self, backend: Backend, tracking: Tracking, step: int) -> None:
        """Step 1 (a tenth of the weight) is at the return, step 10 `slow_start` after it."""
        loop = asyncio.get_running_loop()
        tracking.ramp = loop.call_later(
            self.passive.slow_start / (SLOW_START_STEPS - 1), self._ramp, backend, step + 1
        )

    def _ramp(self, backend: Backend, step: int) -> None:
        tracking = self._track(backend)
        tracking.ramp = None
        if backend.health != UP:
            return
        weight = backend.weight * min(step, SLOW_START_STEPS) / SLOW_START_STEPS
        self.pool.set_effective_weight(backend, weight)
        if step < SLOW_START_STEPS:
            self._schedule_ramp(backend, tracking, step)
