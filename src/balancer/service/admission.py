"""Admission: whether a client may connect at all, before any backend is touched.

HAProxy's ACLs and nginx's `limit_conn` and `limit_req`, per client address: an allow and a
deny list of networks, a cap on open connections, and a token bucket on new connections per
second. `check` returns a verdict and never logs or closes anything; the service does that.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from balancer.config.model import Limits
from balancer.core.termination import Termination

MAX_BUCKETS = 100_000  # client addresses with a bucket, past which full buckets are dropped


class Refusal(NamedTuple):
    reason: Termination
    detail: str  # for the log line, as "3 connections already open"


class Admission:
    """The admission state of one service: open connections and rate buckets per address."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits  # (a reload sets the new ones; counts and buckets carry on)
        self.per_client: dict[str, int] = {}  # open connections per client address
        self.buckets: dict[str, tuple[float, float]] = {}  # client address: (tokens, when)
        # Clients named as causing most of a backend's failures: until when, and their bucket.
        self.suspects: dict[str, tuple[float, float, float]] = {}  # (until, tokens, when)

    def check(self, ip: str, now: float) -> Refusal | None:
        """None if a client at `ip` may go on (it is then counted until `left`), else why not.
        `now` is a monotonic clock's reading, for the rate buckets."""
        limits = self.limits
        if limits.allow or limits.deny:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                address = None
            allowed = address is not None and (
                not limits.allow or any(address in net for net in limits.allow)
            )
            if address is not None and any(address in net for net in limits.deny):
                allowed = False
            if not allowed:
                return Refusal(Termination.DENIED, "address not allowed")
        if self.suspects and not self._suspect_may(ip, now):
            return Refusal(
                Termination.RATE_LIMITED,
                f"named as causing most of a backend's failures: over {limits.suspect_rate:g} "
                "connections/s",
            )
        if limits.client_max_connections and (
            self.per_client.get(ip, 0) >= limits.client_max_connections
        ):
            return Refusal(
                Termination.CLIENT_LIMIT,
                f"{limits.client_max_connections} connections already open",
            )
        if limits.client_rate and not self._take_token(ip, now):
            return Refusal(Termination.RATE_LIMITED, f"over {limits.client_rate:g} connections/s")
        self.per_client[ip] = self.per_client.get(ip, 0) + 1
        return None

    def suspect(self, ip: str, until: float) -> None:
        """Hold `ip` to `suspect_rate` new connections per second until `until`."""
        if self.limits.suspect_rate and (ip in self.suspects or len(self.suspects) < MAX_BUCKETS):
            burst = max(1.0, self.limits.suspect_rate)
            self.suspects[ip] = (until, burst, 0.0)

    def _suspect_may(self, ip: str, now: float) -> bool:
        entry = self.suspects.get(ip)
        if entry is None:
            return True
        until, tokens, last = entry
        rate = self.limits.suspect_rate
        if now >= until or not rate:
            del self.suspects[ip]
            return True
        tokens = min(max(1.0, rate), tokens + (now - last) * rate if last else tokens)
        if tokens < 1.0:
            self.suspects[ip] = (until, tokens, now)
            return False
        self.suspects[ip] = (until, tokens - 1.0, now)
        return True

    def left(self, ip: str) -> None:
        """A client that `check` let in has closed."""
        count = self.per_client.get(ip, 0) - 1
        if count > 0:
            self.per_client[ip] = count
        else:
            self.per_client.pop(ip, None)

    def _take_token(self, ip: str, now: float) -> bool:
        """A token bucket per client address: `client_rate` per second, `client_burst` deep."""
        limits = self.limits
        burst = float(limits.client_burst)
        tokens, last = self.buckets.get(ip, (burst, now))
        tokens = min(burst, tokens + (now - last) * limits.client_rate)
        if len(self.buckets) > MAX_BUCKETS:
            self._prune(now)
        if tokens < 1.0:
            self.buckets[ip] = (tokens, now)
            return False
        self.buckets[ip] = (tokens - 1.0, now)
        return True

    def _prune(self, now: float) -> None:
        """Forget the buckets that have filled up again: they hold nothing a new one would not."""
        refill = self.limits.client_burst / self.limits.client_rate
        self.buckets = {ip: b for ip, b in self.buckets.items() if now - b[1] < refill}
