"""The admin API, metrics, `balancer status` and reload, against a real balancer process."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Cluster,
    balancer_cmd,
    exchange,
    free_port,
    read_log,
    served_by,
    wait_for_log,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families
from support.clients import call
from support.config import service, write_config


def test_add_drain_remove_through_the_api(cluster: Cluster) -> None:
    a, b, c = cluster.backend("echo"), cluster.backend(), cluster.backend()
    port, admin = cluster.with_admin([a, b])

    status, body = call(
        admin, "POST", "/api/backends", {"service": "default", "address": f"127.0.0.1:{c}"}
    )
    assert status == 201 and body["address"] == f"127.0.0.1:{c}" and body["health"] == "up"
    # In rotation at once: round robin over the echo, b and c; the hello ones answer by name.
    answers = Counter(exchange(port, half_close=True) for _ in range(9))
    assert answers[b"hi"] == 3
    assert {served_by(x) for x in answers if x != b"hi"} == {b, c}

    # Drain the echo backend while a connection to it stays open.
    held = None
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"x")
        if s.recv(10) == b"x":
            held = s
            break
        s.close()
    assert held is not None, "no connection reached the echo backend"
    status, body = call(admin, "PATCH", f"/api/backends/default/127.0.0.1:{a}", {"state": "drain"})
    assert status == 200 and body["state"] == "drain" and body["active"] == 1
    assert all(
        exchange(port, half_close=True) != b"hi" for _ in range(6)
    )  # no new connections to it
    held.sendall(b"still here")
    assert held.recv(100) == b"still here"  # the open one keeps working

    # Remove it: 202 while the held connection is open, gone once that closes.
    status, body = call(admin, "DELETE", f"/api/backends/default/127.0.0.1:{a}")
    assert status == 202 and body["active"] == 1
    held.close()
    wait_until(
        lambda: (
            f"127.0.0.1:{a}" not in [x["address"] for x in call(admin, "GET", "/api/backends")[1]]
        ),
        what="the drained backend removed",
    )
    log = cluster.tmp / "lb.log"
    wait_for_log(log, rf"event drain .*backend=127\.0\.0\.1:{a} .*admin API")
    wait_for_log(log, rf"event removed .*backend=127\.0\.0\.1:{a} .*drained")
    wait_for_log(log, rf"event added .*backend=127\.0\.0\.1:{c} .*admin API")

    status, body = call(admin, "PATCH", f"/api/backends/default/127.0.0.1:{b}", {"weight": 3})
    assert status == 200 and body["weight"] == 3
    counts = Counter(served_by(exchange(port)) for _ in range(8))
    assert counts == {b: 6, c: 2}

    # Added in drain: out of rotation from the start, and one event that says so.
    d = cluster.backend()
    status, body = call(
        admin,
        "POST",
        "/api/backends",
        {"service": "default", "address": f"127.0.0.1:{d}", "state": "drain"},
    )
    assert status == 201 and body["state"] == "drain" and not body["eligible"]
    assert d not in {served_by(exchange(port)) for _ in range(8)}
    line = wait_for_log(log, rf"event \w+ .*backend=127\.0\.0\.1:{d} .*").group(0)
    assert "event added" in line and "drain" in line, line  # (the first of its events)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        (
            "POST",
            "/api/backends",
            {"service": "default", "address": "nonsense"},
            400,
            "address: expected HOST:PORT",
        ),
        (
            "POST",
            "/api/backends",
            {"service": "default", "address": "127.0.0.1:1", "weight": 0},
            400,
            "weight must be",
        ),
        (
            "POST",
            "/api/backends",
            {"service": "nope", "address": "127.0.0.1:1"},
            400,
            "unknown service 'nope'",
        ),
        (
            "POST",
            "/api/backends",
            {"service": "default", "address": "127.0.0.1:1", "colour": 1},
            400,
            "unknown field(s) 'colour'",
        ),
        ("POST", "/api/backends", [1, 2], 400, "body must be a JSON object"),
        (
            "PATCH",
            "/api/backends/default/127.0.0.1:1",
            {"weight": 2},
            404,
            "has no backend 127.0.0.1:1",
        ),
        ("PATCH", "/api/backends/nope/127.0.0.1:1", {"weight": 2}, 404, "unknown service 'nope'"),
        ("DELETE", "/api/backends/default/127.0.0.1:1", None, 404, "has no backend"),
        ("GET", "/api/backends?service=nope", None, 404, "unknown service"),
        ("GET", "/api/nothing", None, 404, "Not Found"),
    ],
)
def test_bad_requests_get_json_errors(
    cluster: Cluster, method: str, path: str, body: object, status: int, message: str
) -> None:
    backend = cluster.backend()
    _, admin = cluster.with_admin([backend])
    got, payload = call(admin, method, path, body)
    assert got == status
    assert message in payload["error"]
    # Nothing changed.
    assert [x["address"] for x in call(admin, "GET", "/api/backends")[1]] == [
        f"127.0.0.1:{backend}"
    ]


def test_bad_patch_changes_nothing_and_duplicates_conflict(cluster: Cluster) -> None:
    backend = cluster.backend()
    _, admin = cluster.with_admin([backend])
    path = f"/api/backends/default/127.0.0.1:{backend}"
    for state in ("sleeping", None, ["drain"]):
        status, body = call(admin, "PATCH", path, {"weight": 5, "state": state})
        expected = f"state must be one of enabled, drain, maintenance, got {state!r}"
        assert status == 400 and expected in body["error"], body
    status, body = call(admin, "PATCH", path, raw=b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]
    # Valid JSON that Python will not read: a 5,000-digit number, arrays 30,000 deep.
    for raw in (b'{"weight": ' + b"9" * 5000 + b"}", b"[" * 30000 + b"]" * 30000):
        status, body = call(admin, "PATCH", path, raw=raw)
        assert status == 400 and "not valid JSON" in body["error"], (status, body)
    assert call(admin, "GET", "/api/backends")[1][0]["weight"] == 1
    status, body = call(
        admin, "POST", "/api/backends", {"service": "default", "address": f"127.0.0.1:{backend}"}
    )
    assert status == 409 and "already has backend" in body["error"]
    status, body = call(admin, "POST", "/api/backends", raw=b"x" * (65 * 1024))
    assert status == 413 and "larger than" in body["error"]


def test_metrics_parse_with_series_per_backend(cluster: Cluster) -> None:
    backends = [cluster.backend() for _ in range(2)]
    port, admin = cluster.with_admin(backends)
    for _ in range(4):
        exchange(port)
    status, text = call(admin, "GET", "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "balancer_backend_connections", "balancer_backend_active_connections",
        "balancer_backend_up", "balancer_backend_received_bytes", "balancer_backend_sent_bytes",
        "balancer_backend_failures", "balancer_connection_terminations",
        "balancer_backend_connect_seconds", "balancer_connection_duration_seconds",
    ):  # fmt: skip
        assert name in families, name
    totals = {
        s.labels["backend"]: s.value
        for s in families["balancer_backend_connections"].samples
        if s.name == "balancer_backend_connections_total"
    }
    assert totals == {f"127.0.0.1:{p}": 2.0 for p in backends}
    counts = [
        s for s in families["balancer_connection_duration_seconds"].samples
        if s.name.endswith("_count")
    ]  # fmt: skip
    assert sorted(s.value for s in counts) == [2.0, 2.0]
    reasons = [s.labels["reason"] for s in families["balancer_connection_terminations"].samples]
    assert "backend_closed" in reasons


def test_token_auth_and_non_loopback_refusal(cluster: Cluster) -> None:
    backend = cluster.backend()
    _, admin = cluster.with_admin([backend], "--admin-token", "s3cret")
    assert call(admin, "GET", "/api/services")[0] == 401
    status, body = call(admin, "GET", "/api/services", token="wrong")
    assert status == 401 and "wrong token" in body["error"]
    status, body = call(admin, "GET", "/api/services", token="s3cret")
    assert status == 200 and body[0]["name"] == "default"
    assert call(admin, "GET", "/metrics")[0] == 401
    assert call(admin, "GET", "/")[0] == 200  # the page itself holds no data

    result = subprocess.run(
        balancer_cmd(
            "run", "--admin", f"0.0.0.0:{free_port()}", "--backend", f"127.0.0.1:{backend}",
            "--listen", "127.0.0.1:0", "--log-file", str(cluster.tmp / "x.log"),
        ),
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode == 1
    assert "needs a token" in result.stderr and "Traceback" not in result.stderr


def test_status_command_and_openapi(cluster: Cluster) -> None:
    backends = [cluster.backend() for _ in range(2)]
    port, admin = cluster.with_admin(backends)
    exchange(port)
    result = subprocess.run(
        balancer_cmd("status", "--admin", f"127.0.0.1:{admin}"),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    for p in backends:
        assert f"127.0.0.1:{p}" in result.stdout
    assert "service default" in result.stdout
    status, spec = call(admin, "GET", "/api/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    assert {"/api/backends", "/api/backends/{service}/{address}", "/api/stats", "/metrics"} <= set(
        spec["paths"]
    )
    unreachable = subprocess.run(
        balancer_cmd("status", "--admin", f"127.0.0.1:{free_port()}"),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert unreachable.returncode == 1 and "cannot reach the admin API" in unreachable.stderr


def write_services(
    cluster: Cluster,
    path: Path,
    ports: tuple[int, int],
    web: list[int],
    other: list[int],
    admin: int,
) -> None:
    write_config(
        path,
        service("web", ports[0], web),
        service("other", ports[1], other),
        log=cluster.tmp / "lb.log",
        admin=admin,
    )


def test_sighup_reload_swaps_backends_and_keeps_open_connections(cluster: Cluster) -> None:
    e1, e2, h1, h2 = (
        cluster.backend("echo"),
        cluster.backend("echo"),
        cluster.backend(),
        cluster.backend(),
    )
    ports = (free_port(), free_port())
    admin = free_port()
    config = cluster.tmp / "lb.toml"
    write_services(cluster, config, ports, [e1], [e2], admin)
    proc, _ = cluster.balancer("--config", str(config))
    with socket.create_connection(("127.0.0.1", ports[0]), timeout=10) as same, \
            socket.create_connection(("127.0.0.1", ports[1]), timeout=10) as other:  # fmt: skip
        same.sendall(b"a")
        other.sendall(b"b")
        assert same.recv(10) == b"a" and other.recv(10) == b"b"
        # Swap the backends of "other" for a hello backend, and of "web" too.
        write_services(cluster, config, ports, [h1], [h2], admin)
        proc.signal(signal.SIGHUP)
        wait_for_log(cluster.tmp / "lb.log", r"event reload .*SIGHUP")
        assert served_by(exchange(ports[0])) == h1
        assert served_by(exchange(ports[1])) == h2
        # The connections opened before the reload keep working, on their old backends.
        same.sendall(b"still")
        other.sendall(b"going")
        assert same.recv(10) == b"still" and other.recv(10) == b"going"

        # A broken config changes nothing.
        config.write_text(
            config.read_text().replace('name = "other"', 'name = "other"\nalgoritm = "x"')
        )
        proc.signal(signal.SIGHUP)
        wait_for_log(cluster.tmp / "lb.log", r"reload_failed .*unknown key")
        wait_for_log(cluster.tmp / "lb.log", r"reload rejected, old config kept")
        assert served_by(exchange(ports[1])) == h2
        status, body = call(admin, "POST", "/api/reload")
        assert status == 400 and any("algoritm" in e for e in body["errors"])
        same.sendall(b"ok")
        assert same.recv(10) == b"ok"
    log = read_log(cluster.tmp / "lb.log")
    assert f"127.0.0.1:{e1} removed" in log and f"127.0.0.1:{h1} added" in log


def listed(admin: int) -> dict[str, dict[str, Any]]:
    return {b["address"]: b for b in call(admin, "GET", "/api/backends")[1]}


def test_cross_site_requests_and_foreign_hosts_are_refused(cluster: Cluster) -> None:
    """A web page the operator visits must not drive the API (CSRF), nor a DNS name rebound
    to 127.0.0.1 read it; the same-origin dashboard, `balancer status` and curl still work."""
    backend, spare = cluster.backend(), cluster.backend()
    _, admin = cluster.with_admin([backend])
    new = {"service": "default", "address": f"127.0.0.1:{spare}"}
    evil = {"Origin": "https://evil.example"}

    # What an HTML form or a no-cors fetch can send without a preflight: refused.
    status, body = call(admin, "POST", "/api/backends", raw=json.dumps(new).encode(),
                        content_type="text/plain", headers=evil)  # fmt: skip
    assert status in (403, 415) and body["error"]
    status, body = call(admin, "POST", "/api/backends", raw=json.dumps(new).encode(),
                        content_type="text/plain")  # fmt: skip
    assert status == 415 and "Content-Type: application/json" in body["error"]
    status, body = call(admin, "POST", "/api/backends", raw=b"service=default", content_type=None)
    assert status == 415 and "application/json" in body["error"]
    status, body = call(admin, "POST", "/api/reload", content_type=None)
    assert status == 415 and "application/json" in body["error"]
    status, body = call(admin, "POST", "/api/reload", content_type="text/plain", headers=evil)
    assert status in (403, 415) and body["error"]
    status, body = call(
        admin, "PATCH", f"/api/backends/default/127.0.0.1:{backend}", {"weight": 2},
        content_type="text/plain",
    )  # fmt: skip
    assert status == 415
    # A JSON body from another origin: refused too, and an Origin of "null" is not ours.
    status, body = call(admin, "POST", "/api/backends", new, headers=evil)
    assert status == 403 and "Origin 'https://evil.example'" in body["error"]
    status, body = call(admin, "POST", "/api/backends", new, headers={"Origin": "null"})
    assert status == 403
    status, body = call(admin, "GET", "/api/stats", headers=evil)
    assert status == 403
    assert list(listed(admin)) == [f"127.0.0.1:{backend}"]  # nothing changed
    # No CORS preflight is ever granted.
    status, _ = call(admin, "OPTIONS", "/api/backends", headers={
        **evil, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    })  # fmt: skip
    assert status >= 400

    # DNS rebinding: the page's own name comes as Host.
    for host in ("evil.example", f"evil.example:{admin}", "127.0.0.1.evil.example", "[::2]"):
        status, body = call(admin, "GET", "/api/backends", headers={"Host": host})
        assert status == 421 and "Host" in body["error"], host
        status, body = call(admin, "GET", "/", headers={"Host": host})
        assert status == 421, host
    status, _ = call(admin, "POST", "/api/backends", new, headers={"Host": "evil.example"})
    assert status == 421
    assert list(listed(admin)) == [f"127.0.0.1:{backend}"]

    # Loopback names, with or without the port, and the page's own origin are served.
    for host in ("localhost", f"localhost:{admin}", "127.0.0.1", f"[::1]:{admin}", "LOCALHOST"):
        assert call(admin, "GET", "/api/services", headers={"Host": host})[0] == 200, host
    status, body = call(
        admin, "POST", "/api/backends", new, headers={"Origin": f"http://127.0.0.1:{admin}"}
    )
    assert status == 201, body
    status, body = call(
        admin, "PATCH", f"/api/backends/default/127.0.0.1:{spare}", {"weight": 2},
        content_type="application/json; charset=utf-8",
        headers={"Host": f"localhost:{admin}", "Origin": f"http://localhost:{admin}"},
    )  # fmt: skip
    assert status == 200 and body["weight"] == 2
    # A DELETE cannot be sent cross-site without a preflight: it needs no Content-Type.
    status, body = call(admin, "DELETE", f"/api/backends/default/127.0.0.1:{spare}",
                        content_type=None)  # fmt: skip
    assert status == 200 and body["removed"] == f"127.0.0.1:{spare}"
    status, body = call(admin, "POST", "/api/reload")  # (started from flags: nothing to reload)
    assert status == 400 and "nothing to reload" in body["errors"][0]
    result = subprocess.run(
        balancer_cmd("status", "--admin", f"http://localhost:{admin}"),
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert result.returncode == 0 and f"127.0.0.1:{backend}" in result.stdout, result.stderr


def test_foreign_host_is_served_with_the_token(cluster: Cluster) -> None:
    backend = cluster.backend()
    _, admin = cluster.with_admin([backend], "--admin-token", "s3cret")
    host = {"Host": f"lb.internal.example:{admin}"}
    status, body = call(admin, "GET", "/api/services", headers=host)
    assert status in (401, 421) and body["error"]
    status, body = call(admin, "GET", "/api/services", token="wrong", headers=host)
    assert status in (401, 421)
    status, body = call(admin, "GET", "/api/services", token="s3cret", headers=host)
    assert status == 200 and body[0]["name"] == "default"
    assert call(admin, "GET", "/", headers=host)[0] == 200  # the page holds no data
    # Its own origin, by the name it was reached at, may change things; another may not.
    path = f"/api/backends/default/127.0.0.1:{backend}"
    headers = {**host, "Origin": f"http://lb.internal.example:{admin}"}
    assert call(admin, "PATCH", path, {"weight": 2}, token="s3cret", headers=headers)[0] == 200
    headers["Origin"] = "http://evil.example"
    assert call(admin, "PATCH", path, {"weight": 3}, token="s3cret", headers=headers)[0] == 403


@pytest.mark.parametrize("name", ["a\r\nb", "x\ny", "\r", "Set-Cookie: x=1\r\n"])
def test_field_names_with_line_breaks_get_a_json_400(cluster: Cluster, name: str) -> None:
    backend = cluster.backend()
    _, admin = cluster.with_admin([backend])
    raw = json.dumps({"service": "default", "address": "127.0.0.1:1", name: 1}).encode()
    status, body = call(admin, "POST", "/api/backends", raw=raw)
    assert status == 400 and f"unknown field(s) {name!r}" in body["error"], body
    path = f"/api/backends/default/127.0.0.1:{backend}"
    status, body = call(admin, "PATCH", path, raw=json.dumps({name: 1}).encode())
    assert status == 400 and repr(name) in body["error"], body
    # A value with line breaks too, anywhere a message quotes it.
    for raw in (
        json.dumps({"service": "no\r\npe", "address": "127.0.0.1:1"}).encode(),
        json.dumps({"service": "default", "address": "1.2.3.4:5\r\n"}).encode(),
        json.dumps({"service": "default", "address": "h\r\nx:1"}).encode(),
        json.dumps({"service": "default", "address": "127.0.0.1:1", "state": "a\r\nb"}).encode(),
        json.dumps({"service": "default", "address": "127.0.0.1:1", "weight": "1\r\n"}).encode(),
        b'{"service": "default", "address": "127.0.0.1:1"\r\n x',
    ):
        status, body = call(admin, "POST", "/api/backends", raw=raw)
        assert status == 400 and body["error"], (raw, body)
    for path in ("/api/backends/de%0D%0Afault/127.0.0.1:1", "/api/backends/default/a%0D%0Ab:1"):
        status, body = call(admin, "PATCH", path, {"weight": 2})
        assert status in (400, 404) and body["error"], (path, body)
    status, body = call(admin, "GET", "/api/backends?service=x%0D%0Ay")
    assert status == 404 and body["error"]
    assert list(listed(admin)) == [f"127.0.0.1:{backend}"]


def hold_connection(port: int, admin: int, echo: int) -> socket.socket:
    """A connection to the echo backend, kept open, once the API counts it."""
    for _ in range(6):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"x")
        if s.recv(10) == b"x":
            wait_until(
                lambda: listed(admin)[f"127.0.0.1:{echo}"]["active"] == 1,
                what="the held connection counted",
            )
            return s
        s.close()
    raise AssertionError("no connection reached the echo backend")


def removal_settled(admin: int, log, address: str) -> bool:  # type: ignore[no-untyped-def]
    """The pending removal has ended one way or the other: removed, or logged as cancelled."""
    backends = listed(admin)
    if address not in backends:
        return True
    return backends[address]["active"] == 0 and bool(
        re.search(rf"event removal_cancelled .*backend={re.escape(address)}", read_log(log))
    )


@pytest.mark.parametrize("trigger", ["api", "sighup"])
def test_reload_resets_admin_changes_and_ends_a_pending_removal(
    any_cluster: Cluster, trigger: str
) -> None:
    cluster = any_cluster
    a, b = cluster.backend("echo"), cluster.backend()
    port, admin = free_port(), free_port()
    log = cluster.tmp / "lb.log"
    config = cluster.config(service("web", port, [a, b]), admin=admin)
    proc, _ = cluster.balancer("--config", str(config))
    ka, kb = f"127.0.0.1:{a}", f"127.0.0.1:{b}"
    held = hold_connection(port, admin, a)
    with held:
        status, body = call(admin, "DELETE", f"/api/backends/web/{ka}")
        assert status == 202 and body == {"draining": ka, "active": 1}
        status, body = call(admin, "PATCH", f"/api/backends/web/{kb}", {"state": "maintenance"})
        assert status == 200 and body["state"] == "maintenance" and not body["eligible"]
        if trigger == "api":
            assert call(admin, "POST", "/api/reload") == (200, {"reloaded": True})
        else:
            proc.signal(signal.SIGHUP)
            wait_for_log(log, r"event reload .*SIGHUP")
        # The file lists both: both back to enabled and in rotation, the reason logged.
        backends = listed(admin)
        assert [(backends[k]["state"], backends[k]["eligible"]) for k in (ka, kb)] == [
            ("enabled", True),
            ("enabled", True),
        ], backends
        wait_for_log(log, rf"event enabled .*backend=127\.0\.0\.1:{a} .*reload")
        wait_for_log(log, rf"event enabled .*backend=127\.0\.0\.1:{b} .*reload")
        held.sendall(b"still")
        assert held.recv(10) == b"still"
    # The held connection closes: the backend the file lists stays.
    wait_until(lambda: removal_settled(admin, log, ka), what="the pending removal settled")
    backends = listed(admin)
    assert ka in backends, "a backend the file lists was removed after the reload"
    assert backends[ka]["state"] == "enabled" and backends[ka]["eligible"]
    answers = {exchange(port, half_close=True) for _ in range(6)}  # a echoes, b says hello
    assert b"hi" in answers and {served_by(x) for x in answers if x != b"hi"} == {b}
    assert not re.search(rf"event removed .*backend={re.escape(ka)}", read_log(log))


def test_patch_back_to_enabled_cancels_a_pending_removal(cluster: Cluster) -> None:
    a, b = cluster.backend("echo"), cluster.backend()
    port, admin = cluster.with_admin([a, b])
    ka = f"127.0.0.1:{a}"
    log = cluster.tmp / "lb.log"
    with hold_connection(port, admin, a):
        assert call(admin, "DELETE", f"/api/backends/default/{ka}")[0] == 202
        # A weight change alone keeps the removal pending.
        status, body = call(admin, "PATCH", f"/api/backends/default/{ka}", {"weight": 2})
        assert status == 200 and body["state"] == "drain"
        status, body = call(admin, "PATCH", f"/api/backends/default/{ka}", {"state": "enabled"})
        assert status == 200 and body["state"] == "enabled" and body["eligible"]
    wait_until(lambda: removal_settled(admin, log, ka), what="the pending removal settled")
    backends = listed(admin)
    assert ka in backends, "the re-enabled backend was removed once idle"
    assert backends[ka]["state"] == "enabled" and backends[ka]["weight"] == 2
    wait_for_log(log, rf"event removal_cancelled .*backend={re.escape(ka)} .*enabled")

    # Without a change of state, the removal goes ahead once idle (a DELETE again: one task).
    with hold_connection(port, admin, a):
        assert call(admin, "DELETE", f"/api/backends/default/{ka}")[0] == 202
        assert call(admin, "DELETE", f"/api/backends/default/{ka}")[0] == 202
    wait_until(lambda: ka not in listed(admin), what="the drained backend removed")
    wait_for_log(log, rf"event removed .*backend={re.escape(ka)} .*drained")
