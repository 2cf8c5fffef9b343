"""Blame: whether a failed backend connection is the backend's fault, or may be the client's.

Passive detection must not let a client take a healthy backend out. So each failure is judged
by one rule, named in the access line and in the metrics:

- `refused`, `connect`: the connect was refused, or timed out or failed otherwise. No client
  can cause that: it counts against the backend.
- `before_request`: the backend closed or reset before any of the client's bytes reached it.
  It counts too.
- `one_client`, `several_clients`: it closed or reset after the client's bytes reached it. A
  backend does that to a request it rejects, and a reset can destroy an answer it did send
  before the balancer reads it, so the client may be the cause. It counts (`several_clients`)
  only once connections from `failure_clients` different client addresses have failed that
  way within `failure_window`; until then it does not (`one_client`).

One address that causes most of a backend's failures is named once per window (`close_window`),
so the operator can limit it with the admission limits (`client_rate`,
`client_max_connections`). Nothing here does I/O or keeps time itself: callers pass `now`.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from balancer.config.model import PassiveConfig

REFUSED = "refused"
CONNECT = "connect"
BEFORE_REQUEST = "before_request"
SEVERAL_CLIENTS = "several_clients"
ONE_CLIENT = "one_client"
COUNTED = frozenset({REFUSED, CONNECT, BEFORE_REQUEST, SEVERAL_CLIENTS})
RULES = (REFUSED, CONNECT, BEFORE_REQUEST, SEVERAL_CLIENTS, ONE_CLIENT)

MAX_CLIENTS = 4096  # client addresses remembered per backend, the least recent dropped first
SUSPECT_SHARE = 0.5  # of a backend's failures in a window, from one address
SUSPECT_LEAST = 10  # failures in a window before an address is named at all


class Verdict(NamedTuple):
    rule: str
    counted: bool  # against the backend, toward max_fails


class Suspect(NamedTuple):
    backend: str
    client: str
    failures: int  # the client's, in the window
    total: int  # the backend's after a request, in the window
    window: float


class Blame:
    """The judgement of one service's backend failures (in one process)."""

    def __init__(self, passive: PassiveConfig) -> None:
        self.passive = passive  # (a reload sets the new one; what was seen carries on)
        # Per backend: the client addresses whose requests it failed, with when, oldest first.
        self.recent: dict[str, dict[str, float]] = {}
        # Per backend: failures after a request in the current window, by client address.
        self.by_client: dict[str, Counter[str]] = {}
        self.window_start: float | None = None

    @staticmethod
    def connect_failed(*, refused: bool) -> Verdict:
        return Verdict(REFUSED if refused else CONNECT, True)

    def closed_early(self, backend: str, client: str, *, forwarded: bool, now: float) -> Verdict:
        """A backend that closed or reset a connection before it answered."""
        if not forwarded:
            return Verdict(BEFORE_REQUEST, True)
        if self.window_start is None:
            self.window_start = now
        counts = self.by_client.setdefault(backend, Counter())
        if client in counts or len(counts) < MAX_CLIENTS:
            counts[client] += 1
        seen = self.recent.setdefault(backend, {})
        seen.pop(client, None)
        seen[client] = now  # (most recent last)
        horizon = now - self.passive.failure_window
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] >= horizon and len(seen) <= MAX_CLIENTS:
                break
            del seen[oldest]
        if len(seen) >= self.passive.failure_clients:
            return Verdict(SEVERAL_CLIENTS, True)
        return Verdict(ONE_CLIENT, False)

    @property
    def window_open(self) -> bool:
        """Failures after a request have been seen since the last `close_window`."""
        return self.window_start is not None

    def close_window(self, now: float) -> list[Suspect]:
        """End the window (the caller calls this failure_window after it opened): the
        addresses that caused most of a backend's failures after a request in it."""
        if self.window_start is None:
            return []
        window = now - self.window_start
        found = []
        for backend, counts in self.by_client.items():
            total = sum(counts.values())
            client, failures = counts.most_common(1)[0]
            if failures >= SUSPECT_LEAST and failures > SUSPECT_SHARE * total:
                found.append(Suspect(backend, client, failures, total, window))
        self.by_client.clear()
        self.window_start = None
        return found

    def forget(self, backend: str) -> None:
        """A backend removed: nothing of it is kept."""
        self.recent.pop(backend, None)
        self.by_client.pop(backend, None)
