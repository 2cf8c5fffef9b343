"""The config parser: pure, every error named by key and value, nothing passed silently."""

from __future__ import annotations

import ipaddress
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer.config import (
    ConfigError,
    load_config,
    parse_config,
    parse_duration,
    parse_port_range,
)
from balancer.core.address import Address, parse_address
from balancer.selection import check_algorithm

FULL = """
grace = "10s"
workers = 2
[admin]
listen = "127.0.0.1:8405"
token = "t"
[log]
file = "x.log"
format = "json"
[[services]]
name = "web"
listen = "0.0.0.0:8000"
algorithm = "least_connections"
retry_replay = true
ejection_time = "500ms"
client_rate = 10
allow = ["10.0.0.0/8", "127.0.0.1"]
send_proxy = "v2"
backends = [
  { address = "127.0.0.1:9001" },
  { address = "[::1]:9002", weight = 2, max_connections = 5 },
]
[services.timeouts]
connect = "3s"
idle = "5m"
client_first_byte = "2s"
[services.health_check]
type = "http"
path = "/health"
expect_status = "200,204"
[[services]]
name = "cache"
listen = "127.0.0.1:6380"
backends = ["127.0.0.1:6379"]
health_check = { type = "send_expect", send = "PING\\r\\n", expect = "PONG" }
"""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("3s", 3.0), ("5m", 300.0), ("1h", 3600.0), ("2.5s", 2.5), (7, 7.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad",
    ["5 minutes", "-1s", "", "s", True, None, "1d", float("inf"), float("nan"), 1e12,
     "1" + "0" * 400 + "s", "2147484s"],
)
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_addresses_and_ranges() -> None:
    assert parse_address("127.0.0.1:80") == Address("127.0.0.1", 80)
    assert parse_address("[::1]:9000") == Address("::1", 9000)
    assert str(parse_address("[::1]:9000")) == "[::1]:9000"
    assert parse_address("example.com:443").host == "example.com"
    for bad, message in [
        ("127.0.0.1", "expected HOST:PORT"),
        ("::1:80", "need brackets"),
        ("127.0.0.1:0", "port must be 1-65535"),
        ("127.0.0.1:x", "port must be a number"),
        ("bad_host!:80", "not a valid host"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_address(bad)
    assert parse_port_range("9001-9009") == (9001, 9009)
    with pytest.raises(ValueError):
        parse_port_range("9009-9001")


@given(st.ip_addresses(), st.integers(1, 65535))
def test_any_ip_and_port_round_trip(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    text = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    assert str(parse_address(text)) == text


def test_full_config() -> None:
    config = parse_config(tomllib.loads(FULL))
    assert config.grace == 10.0 and config.workers == 2
    assert config.admin.listen == Address("127.0.0.1", 8405) and config.admin.token == "t"
    assert config.log.file == "x.log" and config.log.format == "json"
    web, cache = config.services
    assert web.algorithm == "least_connections"
    assert [b.address for b in web.backends] == [Address("127.0.0.1", 9001), Address("::1", 9002)]
    assert web.backends[1].weight == 2 and web.backends[1].max_connections == 5
    assert web.timeouts.connect == 3.0 and web.timeouts.idle == 300.0
    assert web.timeouts.client_first_byte == 2.0
    assert web.health_check.type == "http" and web.health_check.expect_status == (
        (200, 200),
        (204, 204),
    )
    assert web.passive.retry_replay and web.passive.ejection_time == 0.5
    assert web.limits.client_rate == 10.0 and web.limits.client_burst == 10
    assert len(web.limits.allow) == 2 and web.send_proxy == "v2"
    assert cache.health_check.send == b"PING\r\n" and cache.health_check.expect == "PONG"
    assert cache.algorithm == "round_robin"


def test_every_error_named_at_once() -> None:
    data = tomllib.loads(
        FULL.replace('idle = "5m"', 'idel = "5m"').replace("weight = 2", "weight = 0")
    )
    data["services"].append({"name": "web", "listen": "nope"})
    data["log"]["format"] = "xml"
    data["colour"] = "blue"
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    errors = caught.value.errors
    expected = [
        "services[0].timeouts.idel: unknown key",
        "services[0].backends[1].weight: expected a whole number from 1 to 256, got 0",
        "services[2].listen: expected HOST:PORT, got 'nope'",
        "services[2].backends: a service needs backends or discover",
        "log.format: expected one of text, json, got 'xml'",
        "colour: unknown key",
    ]
    for line in expected:
        assert any(line in e for e in errors), (line, errors)


def test_health_check_host_cannot_inject_header_lines() -> None:
    data = tomllib.loads(FULL)
    data["services"][0]["health_check"]["host"] = "example.com\r\nX-Injected: 1"
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert caught.value.errors == [
        "services[0].health_check.host: expected a host name in ASCII (IDNA for others) "
        "without spaces or control characters, got 'example.com\\r\\nX-Injected: 1'"
    ]
    data["services"][0]["health_check"]["host"] = ""  # (the backend's own address)
    assert parse_config(data).services[0].health_check.host is None


def test_values_toml_allows_but_no_setting_can_use(tmp_path: Path) -> None:
    # Each once passed the check and failed later: a traceback, every connection refused, or
    # health checks that stopped without a word. Now each is named where it is.
    (tmp_path / "needs_args.py").write_text(
        "class Picker:\n"
        "    def __init__(self, seed):\n        self.seed = seed\n"
        "    def update(self, backends):\n        pass\n"
        "    def candidates(self, client):\n        return iter(())\n"
    )
    data = tomllib.loads(FULL)
    web, cache = data["services"][0], data["services"][1]
    web["timeouts"]["idle"] = float("inf")
    web["client_rate"] = float("nan")
    web["health_check"]["path"] = "/\u20ac"
    web["health_check"]["host"] = "b\u00fccher.example"
    cache["health_check"]["expect"] = "a{4294967296}"
    cache["algorithm"] = "needs_args.Picker"
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ConfigError) as caught:
            parse_config(data, check_algorithm=check_algorithm)
    finally:
        sys.path.remove(str(tmp_path))
    errors = caught.value.errors
    expected = [
        "services[0].timeouts.idle: duration must be at most 2147483647ms (about 24.8 days), "
        "got inf",
        "services[0].client_rate: expected a number from 0 to 10000000, got nan",
        "services[0].health_check.path: expected a path starting with /, in ASCII",
        "services[0].health_check.host: expected a host name in ASCII",
        "services[1].health_check.expect: not a valid regular expression: the repetition "
        "number is too large",
        "services[1].algorithm: algorithm 'needs_args.Picker' cannot be made (it is called "
        "with no arguments): TypeError",
    ]
    for line in expected:
        assert any(e.startswith(line) for e in errors), (line, errors)
    assert len(errors) == len(expected), errors  # (no follow-on "expect: required")


def test_duplicates() -> None:
    data = tomllib.loads(FULL)
    data["services"][1]["listen"] = "0.0.0.0:8000"
    data["services"].append(dict(data["services"][1], listen="127.0.0.1:1", name="web"))
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert caught.value.errors == [
        "services[1].listen: 0.0.0.0:8000 is already used by service 'web'",
        "services[2].name: duplicate service name 'web'",
    ]


DISCOVERY = """
[[services]]
name = "web"
listen = "127.0.0.1:8000"
backends = ["127.0.0.1:9000"]
discover = { host = "127.0.0.1", ports = "9001-9009" }
"""


def test_discovery_without_health_checks_is_an_error() -> None:
    """Discovered backends start down and only a passed active check brings one up: without
    checks the service would refuse every client for ever, so the config says so instead."""
    for checks_off in ("[services.health_check]\nenabled = false", "health_check.enabled = false"):
        with pytest.raises(ConfigError) as caught:
            parse_config(tomllib.loads(DISCOVERY + checks_off))
        assert caught.value.errors == [
            "services[0].discover: needs active health checks, but "
            "services[0].health_check.enabled = false: discovered backends start down and only "
            "a passed check brings one up, so none would ever take a connection (turn the "
            "checks on, or list the backends instead)"
        ]
    # Either alone is fine: discovery with checks, a static list without them.
    assert parse_config(tomllib.loads(DISCOVERY)).services[0].discover is not None
    static = DISCOVERY.replace('discover = { host = "127.0.0.1", ports = "9001-9009" }\n', "")
    config = parse_config(tomllib.loads(static + "health_check.enabled = false"))
    assert not config.services[0].health_check.enabled


def test_discovery_without_health_checks_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lb.toml"
    path.write_text(DISCOVERY + "health_check.enabled = false")
    with pytest.raises(ConfigError, match=r"lb\.toml: services\[0\]\.discover: needs active"):
        load_config(path)


def test_files(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(FULL)
    assert load_config(good).services[0].name == "web"
    broken = tmp_path / "broken.toml"
    broken.write_text("[[services]\nname = 1")
    with pytest.raises(ConfigError, match=r"broken\.toml: TOML syntax error"):
        load_config(broken)
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read"):
        load_config(tmp_path / "missing.toml")
