"""The configuration: read once from TOML or flags, validated whole, then immutable.

Parsing is pure: it takes a dict (what `tomllib` returns) and gives a `Config` or a
`ConfigError` listing every problem, each naming its key and the bad value.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

MAX_WEIGHT = 256


class ConfigError(Exception):
    """One or more problems in a configuration; `errors` names each key and value."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True, order=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_address(text: str, *, allow_zero_port: bool = False) -> Address:
    """Parse `HOST:PORT` (IPv6 as `[::1]:PORT`); raise ValueError saying what is wrong."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"expected [IPV6]:PORT, got {text!r}")
        host, port_text = text[1:end], text[end + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        if ":" in host:
            raise ValueError(f"IPv6 addresses need brackets, as [::1]:PORT, got {text!r}")
    if not port_text.isdigit():
        raise ValueError(f"port must be a number, got {port_text!r} in {text!r}")
    port = int(port_text)
    low = 0 if allow_zero_port else 1
    if not low <= port <= 65535:
        raise ValueError(f"port must be {low}-65535, got {port} in {text!r}")
    if not _valid_host(host):
        raise ValueError(f"not a valid host name or IP address: {host!r} in {text!r}")
    return Address(host, port)


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
MAX_DURATION = (2**31 - 1) / 1000  # seconds: HAProxy's limit, 2^31-1 ms (about 24.8 days)


def parse_duration(value: object) -> float:
    """Seconds from `500ms`, `3s`, `5m`, `1h`, or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 500ms, 3s or 5m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a duration such as 500ms, 3s or 5m, got {value!r}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {value!r}")
    if not seconds <= MAX_DURATION:  # (also NaN)
        raise ValueError(f"duration must be at most 2147483647ms (about 24.8 days), got {value!r}")
    return seconds


def parse_port_range(text: str) -> tuple[int, int]:
    """`9001-9009` as (9001, 9009)."""
    match = re.fullmatch(r"(\d+)-(\d+)", text.strip()) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"expected FIRST-LAST, as 9001-9009, got {text!r}")
    first, last = int(match.group(1)), int(match.group(2))
    if not (1 <= first <= last <= 65535):
        raise ValueError(f"expected 1 <= FIRST <= LAST <= 65535, got {text!r}")
    if last - first >= 1024:
        raise ValueError(f"a port range may hold at most 1024 ports, got {text!r}")
    return first, last


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


def parse_status_ranges(value: object) -> tuple[tuple[int, int], ...]:
    """`200-399`, `200`, `"200,204,300-302"` or a list of those, as inclusive ranges."""
    items = value if isinstance(value, list) else [value]
    ranges = []
    for item in items:
        for part in str(item).split(",") if isinstance(item, str | int) else [item]:
            match = re.fullmatch(r"\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?", str(part))
            if isinstance(part, bool) or not match:
                raise ValueError(
                    f"expected HTTP statuses such as 200-399 or 200,204, got {value!r}"
                )
            low = int(match.group(1))
            high = int(match.group(2) or low)
            if not 100 <= low <= high <= 599:
                raise ValueError(f"expected statuses from 100 to 599, low first, got {value!r}")
            ranges.append((low, high))
    if not ranges:
        raise ValueError(f"expected at least one status, got {value!r}")
    return tuple(ranges)


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
    panic: bool = False  # when no backend is up, spread over all instead of refusing


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


class _Table:
    """A TOML table being read: records every error with its key path, and unknown keys."""

    def __init__(self, data: object, path: str, errors: list[str]) -> None:
        self.path = path
        self.errors = errors
        self.seen: set[str] = set()
        if isinstance(data, dict):
            self.data: dict[str, Any] = data
        else:
            self.data = {}
            errors.append(f"{path}: expected a table, got {data!r}")

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(
        self,
        name: str,
        default: T,
        convert: Callable[[Any], T],
    ) -> T:
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            self.errors.append(f"{self.key(name)}: {exc}")
            return default

    def finish(self) -> None:
        for name in self.data:
            if name not in self.seen:
                self.errors.append(f"{self.key(name)}: unknown key (value {self.data[name]!r})")


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _choice(*options: str) -> Callable[[object], str]:
    def convert(value: object) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return str(value)

    return convert


def _int_in(low: int, high: int) -> Callable[[object], int]:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {value!r}")
        return value

    return convert


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"duration must be more than zero, got {value!r}")
    return seconds


def check_algorithm(name: object) -> str:
    """An algorithm's registered name, or a dotted path to a class that imports and can be
    made with no arguments."""
    from balancer.algorithms import create

    if not isinstance(name, str):
        raise TypeError(f"expected an algorithm name, got {name!r}")
    create(name)  # (made once here, so that one that cannot be made is a config error)
    return name


_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_service_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"expected 1-64 letters, digits, '_', '.' or '-', got {value!r}")
    return value


def _backend(item: object, path: str, errors: list[str]) -> BackendConfig | None:
    if isinstance(item, str):
        item = {"address": item}
    table = _Table(item, path, errors)
    address = table.get("address", None, parse_address)
    weight = table.get("weight", 1, _int_in(1, MAX_WEIGHT))
    max_connections = table.get("max_connections", 0, _int_in(0, 1_000_000))
    send_proxy = table.get("send_proxy", None, _choice("v1", "v2"))
    table.finish()
    if "address" not in table.data and isinstance(item, dict):
        errors.append(f"{path}.address: required")
    if not address:
        return None
    return BackendConfig(address, weight, max_connections, send_proxy)


def _discovery(value: object, path: str, errors: list[str]) -> DiscoveryConfig | None:
    table = _Table(value, path, errors)
    host = table.get("host", "127.0.0.1", _string)
    ports = table.get("ports", None, parse_port_range)
    table.finish()
    if ports is None:
        if "ports" not in table.data:
            errors.append(f'{path}.ports: required, as "9001-9009"')
        return None
    if not _valid_host(host):
        errors.append(f"{path}.host: not a valid host name or IP address: {host!r}")
        return None
    return DiscoveryConfig(host, ports[0], ports[1])


def _timeouts(value: object, path: str, errors: list[str]) -> Timeouts:
    table = _Table(value, path, errors)
    defaults = Timeouts()
    result = Timeouts(
        connect=table.get("connect", defaults.connect, _positive_duration),
        idle=table.get("idle", defaults.idle, _positive_duration),
        client=table.get("client", defaults.client, parse_duration),
        server=table.get("server", defaults.server, parse_duration),
        client_first_byte=table.get(
            "client_first_byte", defaults.client_first_byte, parse_duration
        ),
    )
    table.finish()
    return result


def _networks(value: object) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    if not isinstance(value, list):
        raise TypeError(f'expected a list of CIDRs such as ["10.0.0.0/8"], got {value!r}')
    networks = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(_string(item), strict=False))
        except (ValueError, TypeError):
            raise ValueError(f"not an address or CIDR: {item!r}") from None
    return tuple(networks)


def _limits(table: _Table) -> Limits:
    """Limit keys, read from the service table itself."""
    d = Limits()
    rate = table.get("client_rate", d.client_rate, _rate)
    return Limits(
        max_connections=table.get("max_connections", d.max_connections, _int_in(0, 10_000_000)),
        queue_size=table.get("queue_size", d.queue_size, _int_in(0, 10_000_000)),
        queue_timeout=table.get("queue_timeout", d.queue_timeout, _positive_duration),
        client_max_connections=table.get(
            "client_max_connections", d.client_max_connections, _int_in(0, 10_000_000)
        ),
        client_rate=rate,
        client_burst=table.get("client_burst", max(1, round(rate)), _int_in(1, 10_000_000)),
        allow=table.get("allow", d.allow, _networks),
        deny=table.get("deny", d.deny, _networks),
    )


def _rate(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= 10_000_000  # (also NaN)
    ):
        raise ValueError(f"expected a number from 0 to 10000000, got {value!r}")
    return float(value)


def _regex(value: object) -> str:
    text = _string(value)
    try:
        re.compile(text.encode())
    except (re.error, OverflowError, RecursionError) as exc:  # (a{4294967296}; deep nesting)
        raise ValueError(f"not a valid regular expression: {exc}, in {text!r}") from None
    return text


def _http_path(value: object) -> str:
    text = _string(value)
    if not text.startswith("/") or not text.isascii() or any(c in text for c in " \r\n"):
        raise ValueError(
            "expected a path starting with /, in ASCII (percent-encode other characters) and "
            f"without spaces, got {text!r}"
        )
    return text


def _http_host(value: object) -> str | None:
    """The Host header of an http check; empty: the backend's address."""
    text = _string(value)
    if not text.isascii() or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(
            "expected a host name in ASCII (IDNA for others) without spaces or control "
            f"characters, got {text!r}"
        )
    return text or None


def _health(value: object, path: str, errors: list[str]) -> HealthCheckConfig:
    table = _Table(value, path, errors)
    defaults = HealthCheckConfig()
    result = HealthCheckConfig(
        enabled=table.get("enabled", defaults.enabled, _boolean),
        type=table.get("type", defaults.type, _choice("tcp", "http", "send_expect")),
        interval=table.get("interval", defaults.interval, _positive_duration),
        timeout=table.get("timeout", defaults.timeout, _positive_duration),
        rise=table.get("rise", defaults.rise, _int_in(1, 100)),
        fall=table.get("fall", defaults.fall, _int_in(1, 100)),
        path=table.get("path", defaults.path, _http_path),
        host=table.get("host", defaults.host, _http_host),
        expect_status=table.get("expect_status", defaults.expect_status, parse_status_ranges),
        send=table.get("send", defaults.send, _message),
        expect=table.get("expect", defaults.expect, _regex),
    )
    table.finish()
    if (
        result.type == "send_expect"
        and not result.expect
        and not any(e.startswith(f"{path}.expect:") for e in errors)  # (given, but invalid)
    ):
        errors.append(f'{path}.expect: required for type = "send_expect"')
    if "timeout" not in table.data and result.timeout > result.interval:
        result = replace(result, timeout=result.interval)  # a short interval bounds the default
    if result.timeout > result.interval:
        errors.append(
            f"{path}.timeout: must not exceed interval ({result.interval:g}s), "
            f"got {result.timeout:g}s"
        )
    return result


def _passive(table: _Table) -> PassiveConfig:
    """Passive-ejection keys, read from the service table itself."""
    d = PassiveConfig()
    return PassiveConfig(
        max_fails=table.get("max_fails", d.max_fails, _int_in(1, 1000)),
        max_fails_refused=table.get("max_fails_refused", d.max_fails_refused, _int_in(1, 1000)),
        ejection_time=table.get("ejection_time", d.ejection_time, _positive_duration),
        max_ejection_time=table.get("max_ejection_time", d.max_ejection_time, _positive_duration),
        retry_replay=table.get("retry_replay", d.retry_replay, _boolean),
        replay_limit=table.get("replay_limit", d.replay_limit, _int_in(1, 1 << 20)),
        slow_start=table.get("slow_start", d.slow_start, parse_duration),
        panic=table.get("panic", d.panic, _boolean),
    )


def _message(value: object) -> bytes:
    text = _string(value)
    return text.encode().decode("unicode_escape").encode("latin-1")


def _service(item: object, path: str, errors: list[str]) -> ServiceConfig | None:
    table = _Table(item, path, errors)
    before = len(errors)
    name = table.get("name", "", check_service_name)
    listen = table.get("listen", None, lambda v: parse_address(v, allow_zero_port=True))
    algorithm = table.get("algorithm", "round_robin", check_algorithm)
    retries = table.get("retries", 3, _int_in(0, 100))
    message = table.get("no_backend_message", None, _message)
    passive = _passive(table)
    limits = _limits(table)
    send_proxy = table.get("send_proxy", None, _choice("v1", "v2"))
    accept_proxy = table.get("accept_proxy", False, _boolean)
    table.seen.update({"backends", "discover", "timeouts", "health_check"})
    backends: list[BackendConfig] = []
    raw_backends = table.data.get("backends", [])
    if not isinstance(raw_backends, list):
        errors.append(f"{table.key('backends')}: expected a list, got {raw_backends!r}")
        raw_backends = []
    for index, raw in enumerate(raw_backends):
        backend = _backend(raw, f"{table.key('backends')}[{index}]", errors)
        if backend is None:
            continue
        if any(b.address == backend.address for b in backends):
            errors.append(f"{table.key('backends')}[{index}].address: duplicate {backend.address}")
            continue
        backends.append(backend)
    discover = None
    if "discover" in table.data:
        discover = _discovery(table.data["discover"], table.key("discover"), errors)
    timeouts = _timeouts(table.data.get("timeouts", {}), table.key("timeouts"), errors)
    health = _health(table.data.get("health_check", {}), table.key("health_check"), errors)
    table.finish()
    if "name" not in table.data:
        errors.append(f"{table.key('name')}: required")
    if "listen" not in table.data:
        errors.append(f'{table.key("listen")}: required, as "0.0.0.0:8000"')
    if not raw_backends and "discover" not in table.data:
        errors.append(f"{table.key('backends')}: a service needs backends or discover")
    if discover is not None and not health.enabled:
        errors.append(
            f"{table.key('discover')}: needs active health checks, but "
            f"{table.key('health_check')}.enabled = false: discovered backends start down "
            "and only a passed check brings one up, so none would ever take a connection "
            "(turn the checks on, or list the backends instead)"
        )
    if len(errors) > before or listen is None:
        return None
    return ServiceConfig(
        name=name,
        listen=listen,
        backends=tuple(backends),
        algorithm=algorithm,
        discover=discover,
        timeouts=timeouts,
        health_check=health,
        retries=retries,
        no_backend_message=message,
        passive=passive,
        limits=limits,
        send_proxy=send_proxy,
        accept_proxy=accept_proxy,
    )


def _log(value: object, errors: list[str]) -> LogConfig:
    table = _Table(value, "log", errors)
    result = LogConfig(
        file=table.get("file", LogConfig.file, _string) or None,
        format=table.get("format", LogConfig.format, _choice("text", "json")),
    )
    table.finish()
    return result


def read_token_file(path: str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
    if not token:
        raise ValueError(f"{path!r} is empty")
    return token


def _admin(value: object, errors: list[str]) -> AdminConfig:
    table = _Table(value, "admin", errors)
    token = table.get("token", None, _string)
    token_file = table.get("token_file", None, lambda v: read_token_file(_string(v)))
    result = AdminConfig(
        listen=table.get("listen", DEFAULT_ADMIN, lambda v: parse_address(v, allow_zero_port=True)),
        token=token or token_file,
    )
    table.finish()
    if token and token_file:
        errors.append("admin.token_file: give token or token_file, not both")
    return result


MAX_WORKERS = 64


def parse_workers(value: object) -> int:
    """A number of worker processes, or "auto" for one per CPU."""
    if value == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ValueError(
            f"expected a number of workers from 1 to {MAX_WORKERS} or auto, got {value!r}"
        )
    return value


def parse_config(data: dict[str, Any], *, admin_table: bool = True) -> Config:
    """Validate a whole configuration; raise ConfigError listing every problem.

    Without `admin_table` (a reload: the admin API is set up at start only), [admin] is left
    unread, so that a token file moved away since does not stop a reload."""
    errors: list[str] = []
    top = _Table(data, "", errors)
    workers = top.get("workers", 1, parse_workers)
    grace = top.get("grace", 30.0, parse_duration)
    top.seen.update({"services", "log", "admin"})
    log = _log(data.get("log", {}), errors)
    admin = AdminConfig()
    if admin_table and "admin" in data:
        admin = _admin(data["admin"], errors)
    services: list[ServiceConfig] = []
    raw_services = data.get("services")
    if not isinstance(raw_services, list) or not raw_services:
        errors.append("services: at least one [[services]] table is required")
        raw_services = []
    for index, raw in enumerate(raw_services):
        service = _service(raw, f"services[{index}]", errors)
        if service is None:
            continue
        for other in services:
            if other.name == service.name:
                errors.append(f"services[{index}].name: duplicate service name {service.name!r}")
            elif other.listen == service.listen and service.listen.port != 0:
                errors.append(
                    f"services[{index}].listen: {service.listen} is already used by "
                    f"service {other.name!r}"
                )
        services.append(service)
    top.finish()
    if errors:
        raise ConfigError(errors)
    return Config(services=tuple(services), log=log, admin=admin, workers=workers, grace=grace)


def load_config(path: str | Path, *, admin_table: bool = True) -> Config:
    """Read and validate a TOML file; errors are prefixed with the file name."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"]) from None
    try:
        return parse_config(data, admin_table=admin_table)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {e}" for e in exc.errors) from None
