"""The configuration's shape: frozen dataclasses, each field with its default.

A `Config` is made once (from a TOML file or from flags), validated whole, and never changed;
a reload builds a new one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from balancer.core.address import Address

MAX_WEIGHT = 256
MAX_WORKERS = 64


@dataclass(frozen=True)
class BackendConfig:
    address: Address
    weight: int = 1
    max_connections: int = 0  # 0: no limit; beyond it connections queue (see Limits)
    send_proxy: str | None = None  # v1 or v2: overrides the service's


@dataclass(frozen=True)
class DiscoveryConfig:
    """Backends are whichever ports of a range on one host answer health checks."""

    host: str
    first_port: int
    last_port: int

    def addresses(self) -> list[Address]:
        return [Address(self.host, p) for p in range(self.first_port, self.last_port + 1)]


@dataclass(frozen=True)
class Timeouts:
    connect: float = 3.0
    idle: float = 300.0  # nothing either way for this long ends a connection
    client: float = 0.0  # nothing from the client for this long (0: off)
    server: float = 0.0  # nothing from the backend for this long (0: off)
    client_first_byte: float = 0.0  # a client that sends nothing for this long after connecting


@dataclass(frozen=True)
class Limits:
    """What one service admits: HAProxy's maxconn, queue and ACLs, nginx's limit_conn/req."""

    max_connections: int = 0  # open client connections; beyond it clients wait in the backlog
    queue_size: int = 1024  # connections waiting for a backend below its max_connections
    queue_timeout: float = 5.0
    client_max_connections: int = 0  # open connections per client address
    client_rate: float = 0.0  # new connections per second per client address (token bucket)
    client_burst: int = 0  # bucket size; default: the rate, at least 1
    # New connections per second a client named as causing most of a backend's failures may
    # make, for a failure_window after it is named (0: no limit).
    suspect_rate: float = 0.0
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # empty: everyone
    deny: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class HealthCheckConfig:
    enabled: bool = True
    type: str = "tcp"  # tcp, http or send_expect
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    path: str = "/"  # http
    host: str | None = None  # http: Host header, default the backend's address
    expect_status: tuple[tuple[int, int], ...] = ((200, 399),)  # http
    send: bytes = b""  # send_expect
    expect: str = ""  # send_expect: a regex the response must match


@dataclass(frozen=True)
class PassiveConfig:
    """Passive ejection, retries and recovery of a service's backends."""

    max_fails: int = 3  # consecutive timeouts or resets before ejection
    max_fails_refused: int = 1  # consecutive refused connects before ejection
    ejection_time: float = 10.0  # doubled on each repeated ejection ...
    max_ejection_time: float = 300.0  # ... up to this
    retry_replay: bool = False  # replay the client's first bytes when a backend dies unanswered
    replay_limit: int = 16384
    slow_start: float = 0.0  # seconds over which a returning backend's weight ramps up
    # Passive ejection takes out at most this share of the enabled backends: at least one,
    # never all (Envoy's max_ejection_percent).
    max_ejection_percent: int = 10
    # Below this share of enabled backends eligible, spread over those the active checks hold
    # up, passive ejections or not (Envoy's panic threshold).
    panic: bool = True
    panic_threshold: int = 50
    # A failure after the client's bytes reached the backend may be the client's doing: it
    # counts only once this many client addresses have failed alike within the window.
    failure_clients: int = 3
    failure_window: float = 10.0


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    listen: Address
    backends: tuple[BackendConfig, ...] = ()
    algorithm: str = "round_robin"
    discover: DiscoveryConfig | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    health_check: HealthCheckConfig = field(default_factory=HealthCheckConfig)
    retries: int = 3
    no_backend_message: bytes | None = None
    passive: PassiveConfig = field(default_factory=PassiveConfig)
    limits: Limits = field(default_factory=Limits)
    send_proxy: str | None = None  # v1 or v2: tell backends the client's address
    accept_proxy: bool = False  # clients arrive through another proxy that sends the header


@dataclass(frozen=True)
class LogConfig:
    file: str | None = "load_balancer.log"
    format: str = "text"


DEFAULT_ADMIN = Address("127.0.0.1", 8404)


@dataclass(frozen=True)
class AdminConfig:
    listen: Address | None = None
    token: str | None = None


@dataclass(frozen=True)
class Config:
    services: tuple[ServiceConfig, ...]
    log: LogConfig = field(default_factory=LogConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    workers: int = 1
    grace: float = 30.0
