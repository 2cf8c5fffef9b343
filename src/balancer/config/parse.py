"""The config reader: a TOML document (what `tomllib` returns) in, a `Config` out.

Parsing is pure: it takes a dict and gives a `Config` or a `ConfigError` listing every
problem, each naming its key and the bad value. Algorithms named by dotted path are not
imported here; the caller passes `check_algorithm` (the selection's) to have them made once.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from balancer.config import values
from balancer.config.model import (
    DEFAULT_ADMIN,
    MAX_WEIGHT,
    AdminConfig,
    BackendConfig,
    Config,
    DiscoveryConfig,
    HealthCheckConfig,
    Limits,
    LogConfig,
    PassiveConfig,
    ServiceConfig,
    Timeouts,
)
from balancer.config.values import (
    check_service_name,
    parse_duration,
    parse_port_range,
    parse_status_ranges,
    parse_workers,
    read_token_file,
)
from balancer.core.address import parse_address, valid_host

T = TypeVar("T")

# Checks that an algorithm can be made: raises ValueError saying why not.
AlgorithmCheck = Callable[[str], object]


class ConfigError(Exception):
    """One or more problems in a configuration; `errors` names each key and value."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class _Table:
    """A TOML table being read: records every error with its key path, and unknown keys."""

    # While `known_keys` runs: every key path asked for, with list indices as [].
    asked: ClassVar[set[str] | None] = None

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
        self.mark(name)
        if name not in self.data:
            return default
        value = self.data[name]
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            self.errors.append(f"{self.key(name)}: {exc}")
            return default

    def mark(self, *names: str) -> None:
        """Keys read here, or as tables of their own."""
        self.seen.update(names)
        if _Table.asked is not None:
            _Table.asked.update(re.sub(r"\[\d+\]", "[]", self.key(name)) for name in names)

    def finish(self) -> None:
        for name in self.data:
            if name not in self.seen:
                close = difflib.get_close_matches(str(name), sorted(self.seen), n=1, cutoff=0.75)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.errors.append(
                    f"{self.key(name)}: unknown key (value {self.data[name]!r}){hint}"
                )


def _backend(item: object, path: str, errors: list[str]) -> BackendConfig | None:
    if isinstance(item, str):
        item = {"address": item}
    table = _Table(item, path, errors)
    address = table.get("address", None, parse_address)
    weight = table.get("weight", 1, values.int_in(1, MAX_WEIGHT))
    max_connections = table.get("max_connections", 0, values.int_in(0, 1_000_000))
    send_proxy = table.get("send_proxy", None, values.choice("v1", "v2"))
    table.finish()
    if "address" not in table.data and isinstance(item, dict):
        errors.append(f"{path}.address: required")
    if not address:
        return None
    return BackendConfig(address, weight, max_connections, send_proxy)


def _discovery(value: object, path: str, errors: list[str]) -> DiscoveryConfig | None:
    table = _Table(value, path, errors)
    host = table.get("host", "127.0.0.1", values.string)
    ports = table.get("ports", None, parse_port_range)
    table.finish()
    if ports is None:
        if "ports" not in table.data:
            errors.append(f'{path}.ports: required, as "9001-9009"')
        return None
    if not valid_host(host):
        errors.append(f"{path}.host: not a valid host name or IP address: {host!r}")
        return None
    return DiscoveryConfig(host, ports[0], ports[1])


def _timeouts(value: object, path: str, errors: list[str]) -> Timeouts:
    table = _Table(value, path, errors)
    defaults = Timeouts()
    result = Timeouts(
        connect=table.get("connect", defaults.connect, values.positive_duration),
        idle=table.get("idle", defaults.idle, values.positive_duration),
        client=table.get("client", defaults.client, parse_duration),
        server=table.get("server", defaults.server, parse_duration),
        client_first_byte=table.get(
            "client_first_byte", defaults.client_first_byte, parse_duration
        ),
    )
    table.finish()
    return result


def _limits(table: _Table) -> Limits:
    """Limit keys, read from the service table itself."""
    d = Limits()
    rate = table.get("client_rate", d.client_rate, values.rate)
    return Limits(
        max_connections=table.get(
            "max_connections", d.max_connections, values.int_in(0, 10_000_000)
        ),
        queue_size=table.get("queue_size", d.queue_size, values.int_in(0, 10_000_000)),
        queue_timeout=table.get("queue_timeout", d.queue_timeout, values.positive_duration),
        client_max_connections=table.get(
            "client_max_connections", d.client_max_connections, values.int_in(0, 10_000_000)
        ),
        client_rate=rate,
        client_burst=table.get("client_burst", max(1, round(rate)), values.int_in(1, 10_000_000)),
        suspect_rate=table.get("suspect_rate", d.suspect_rate, values.rate),
        allow=table.get("allow", d.allow, values.networks),
        deny=table.get("deny", d.deny, values.networks),
    )


def _health(value: object, path: str, errors: list[str]) -> HealthCheckConfig:
    table = _Table(value, path, errors)
    defaults = HealthCheckConfig()
    result = HealthCheckConfig(
        enabled=table.get("enabled", defaults.enabled, values.boolean),
        type=table.get("type", defaults.type, values.choice("tcp", "http", "send_expect")),
        interval=table.get("interval", defaults.interval, values.positive_duration),
        timeout=table.get("timeout", defaults.timeout, values.positive_duration),
        rise=table.get("rise", defaults.rise, values.int_in(1, 100)),
        fall=table.get("fall", defaults.fall, values.int_in(1, 100)),
        path=table.get("path", defaults.path, values.http_path),
        host=table.get("host", defaults.host, values.http_host),
        expect_status=table.get("expect_status", defaults.expect_status, parse_status_ranges),
        send=table.get("send", defaults.send, values.message),
        expect=table.get("expect", defaults.expect, values.regex),
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
        max_fails=table.get("max_fails", d.max_fails, values.int_in(1, 1000)),
        max_fails_refused=table.get(
            "max_fails_refused", d.max_fails_refused, values.int_in(1, 1000)
        ),
        ejection_time=table.get("ejection_time", d.ejection_time, values.positive_duration),
        max_ejection_time=table.get(
            "max_ejection_time", d.max_ejection_time, values.positive_duration
        ),
        retry_replay=table.get("retry_replay", d.retry_replay, values.boolean),
        replay_limit=table.get("replay_limit", d.replay_limit, values.int_in(1, 1 << 20)),
        slow_start=table.get("slow_start", d.slow_start, parse_duration),
        max_ejection_percent=table.get(
            "max_ejection_percent", d.max_ejection_percent, values.int_in(0, 100)
        ),
        panic=table.get("panic", d.panic, values.boolean),
        panic_threshold=table.get("panic_threshold", d.panic_threshold, values.int_in(0, 100)),
        failure_clients=table.get("failure_clients", d.failure_clients, values.int_in(1, 100)),
        failure_window=table.get("failure_window", d.failure_window, values.positive_duration),
    )


def _algorithm(check: AlgorithmCheck | None) -> Callable[[object], str]:
    def convert(value: object) -> str:
        name = values.algorithm_name(value)
        if check is not None:
            check(name)
        return name

    return convert


def _service(
    item: object, path: str, errors: list[str], check: AlgorithmCheck | None
) -> ServiceConfig | None:
    table = _Table(item, path, errors)
    before = len(errors)
    name = table.get("name", "", check_service_name)
    listen = table.get("listen", None, lambda v: parse_address(v, allow_zero_port=True))
    algorithm = table.get("algorithm", "round_robin", _algorithm(check))
    retries = table.get("retries", 3, values.int_in(0, 100))
    message = table.get("no_backend_message", None, values.message)
    passive = _passive(table)
    limits = _limits(table)
    send_proxy = table.get("send_proxy", None, values.choice("v1", "v2"))
    accept_proxy = table.get("accept_proxy", False, values.boolean)
    table.mark("backends", "discover", "timeouts", "health_check")
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
        file=table.get("file", LogConfig.file, values.string) or None,
        format=table.get("format", LogConfig.format, values.choice("text", "json")),
    )
    table.finish()
    return result


def _admin(value: object, errors: list[str]) -> AdminConfig:
    table = _Table(value, "admin", errors)
    token = table.get("token", None, values.string)
    token_file = table.get("token_file", None, lambda v: read_token_file(values.string(v)))
    result = AdminConfig(
        listen=table.get("listen", DEFAULT_ADMIN, lambda v: parse_address(v, allow_zero_port=True)),
        token=token or token_file,
    )
    table.finish()
    if token and token_file:
        errors.append("admin.token_file: give token or token_file, not both")
    return result


def parse_config(
    data: dict[str, Any],
    *,
    admin_table: bool = True,
    check_algorithm: AlgorithmCheck | None = None,
) -> Config:
    """Validate a whole configuration; raise ConfigError listing every problem.

    Without `admin_table` (a reload: the admin API is set up at start only), [admin] is left
    unread, so that a token file moved away since does not stop a reload. `check_algorithm`
    is called with each service's algorithm name; what it raises is that key's error."""
    errors: list[str] = []
    top = _Table(data, "", errors)
    workers = top.get("workers", 1, parse_workers)
    grace = top.get("grace", 30.0, parse_duration)
    top.mark("services", "log", "admin")
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
        service = _service(raw, f"services[{index}]", errors, check_algorithm)
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


def load_config(
    path: str | Path,
    *,
    admin_table: bool = True,
    check_algorithm: AlgorithmCheck | None = None,
) -> Config:
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
        return parse_config(data, admin_table=admin_table, check_algorithm=check_algorithm)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {e}" for e in exc.errors) from None


# A document with every table present, so that the parser asks for every key there is.
_EVERY_TABLE: dict[str, Any] = {
    "admin": {},
    "log": {},
    "services": [
        {
            "name": "s",
            "listen": "127.0.0.1:1",
            "backends": [{"address": "127.0.0.1:2"}],
            "discover": {"ports": "3-4"},
            "timeouts": {},
            "health_check": {},
        }
    ],
}


def known_keys() -> set[str]:
    """Every key the reader knows, as dotted paths with `[]` for list items
    (`services[].health_check.interval`), tables included."""
    _Table.asked = set()
    try:
        parse_config(_EVERY_TABLE)
        return set(_Table.asked)
    finally:
        _Table.asked = None
