"""The command line as a user meets it: bad flags, bad configs, busy ports, dead backends."""

from __future__ import annotations

import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from conftest import (
    Cluster,
    Process,
    balancer_cmd,
    exchange,
    free_port,
    read_log,
    served_by,
    wait_for_log,
)
from support.config import service


def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(balancer_cmd(*args), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--listen", "127.0.0.1:99999", "--backend", "127.0.0.1:9001"],
            "argument --listen: port must be",
        ),
        (
            ["--listen", "nohost", "--backend", "127.0.0.1:9001"],
            "argument --listen: expected HOST:PORT, got 'nohost'",
        ),
        (
            ["--backend", "127.0.0.1:9001,weight=0"],
            "argument --backend: weight must be 1-256, got '0'",
        ),
        (
            ["--backend", "127.0.0.1:9001,wieght=2"],
            "argument --backend: unknown backend option 'wieght=2'",
        ),
        (["--backend", "127.0.0.1:abc"], "argument --backend: port must be a number, got 'abc'"),
        (
            ["--backend", "127.0.0.1:9001", "--algorithm", "fastest"],
            "argument --algorithm: unknown algorithm 'fastest'",
        ),
        (
            ["--backend", "127.0.0.1:9001", "--connect-timeout", "soon"],
            "argument --connect-timeout: expected a duration",
        ),
        (
            ["--backend-range", "127.0.0.1:9009-9001"],
            "argument --backend-range: expected 1 <= FIRST <= LAST",
        ),
        ([], "no backends: give --backend"),
        (
            ["--backend", "127.0.0.1:9001", "--name", "web\nevent up forged"],
            "argument --name: expected 1-64 letters, digits",
        ),
        (
            ["--config", "lb.toml", "--no-health-check", "--retries", "0", "--name", "web"],
            "--name, --retries, --no-health-check cannot be combined with --config",
        ),
        (
            ["--config", "lb.toml", "--connect-timeout", "1s", "--idle-timeout", "1m"],
            "--connect-timeout, --idle-timeout cannot be combined with --config",
        ),
        (
            ["--config", "lb.toml", "--no-backend-message", "busy"],
            "--no-backend-message cannot be combined with --config",
        ),
        (
            ["--backend", "127.0.0.1:9001", "--backend", "127.0.0.1:9001"],
            "duplicate backend 127.0.0.1:9001",
        ),
    ],
)
def test_bad_flags_exit_nonzero_with_one_clear_line(args: list[str], expected: str) -> None:
    result = run_cli("run", *args)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr


def test_backend_range_without_health_checks_is_refused(tmp_path: Path) -> None:
    """Discovered backends start down and only a passed check brings one up: with checks off
    every client would be refused, so the command line refuses the combination (usage: 2)."""
    result = run_cli(
        "run",
        "--listen",
        "127.0.0.1:0",
        "--backend-range",
        "127.0.0.1:9001-9003",
        "--no-health-check",
        "--log-file",
        str(tmp_path / "lb.log"),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert "--backend-range cannot be combined with --no-health-check" in errors[0]


def test_discovery_without_health_checks_in_a_config_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "lb.toml"
    config.write_text(
        """
[[services]]
name = "web"
listen = "127.0.0.1:0"
discover = { host = "127.0.0.1", ports = "9001-9003" }
[services.health_check]
enabled = false
"""
    )
    for command in (["check", str(config)], ["run", "--config", str(config)]):
        result = run_cli(*command)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert "services[0].discover: needs active health checks, but " in result.stderr
        assert "services[0].health_check.enabled = false" in result.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "run",
            "--listen",
            f"127.0.0.1:{port}",
            "--backend",
            "127.0.0.1:9001",
            "--log-file",
            str(tmp_path / "lb.log"),
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"balancer: service 'default' cannot listen on 127.0.0.1:{port}: address already in use"
    ]


def test_bad_config_names_every_key_and_value(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        """
[log]
format = "xml"
[[services]]
name = "web"
listen = "0.0.0.0:80000"
algorithm = "least_connections"
backends = [{ address = "127.0.0.1:9001", weight = -1 }]
[services.timeouts]
conect = "3s"
"""
    )
    for command in (["check", str(config)], ["run", "--config", str(config)]):
        result = run_cli(*command)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert "log.format: expected one of text, json, got 'xml'" in result.stderr
        assert "services[0].listen: port must be 0-65535, got 80000" in result.stderr
        assert (
            "services[0].backends[0].weight: expected a whole number from 1 to 256, got -1"
            in result.stderr
        )
        assert "services[0].timeouts.conect: unknown key" in result.stderr


def test_config_file_runs_several_services(cluster: Cluster) -> None:
    a, b = cluster.backend(), cluster.backend()
    port_a, port_b = free_port(), free_port()
    two = f'[{{ address = "127.0.0.1:{b}", weight = 2 }}]'
    timeouts = '[services.timeouts]\nconnect = "500ms"\nidle = "5m"'
    config = cluster.config(
        service("one", port_a, [a]),
        service("two", port_b, two, f'algorithm = "least_connections"\n{timeouts}'),
    )
    assert run_cli("check", str(config)).returncode == 0
    cluster.balancer("--config", str(config))
    assert served_by(exchange(port_a)) == a
    assert served_by(exchange(port_b)) == b


def test_unreachable_backends_do_not_stop_startup(cluster: Cluster) -> None:
    dead = free_port()
    _, port = cluster.balancer(f"--backend=127.0.0.1:{dead}")
    # The client is closed cleanly: nothing to relay, and the balancer keeps running.
    assert exchange(port) == b""
    live = cluster.backend()
    assert live != dead


def test_demo_starts_backends_balancer_and_dashboard(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    backends = [free_port() for _ in range(3)]
    demo = Process(
        balancer_cmd(
            "demo", "--port", str(port), "--admin-port", str(admin),
            "--backend-ports", *map(str, backends),
        ),
        cwd=tmp_path,
    )  # fmt: skip
    try:
        demo.expect(rf"balancer +http://127\.0\.0\.1:{port}")
        demo.expect(rf"dashboard +http://127\.0\.0\.1:{admin}/")
        request = b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n"
        answers = {served_by(exchange(port, request)) for _ in range(6)}
        assert answers == set(backends)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/", timeout=10) as page:
            assert b"balancer" in page.read()
    finally:
        demo.stop()
    assert demo.proc.returncode == 0
    assert (tmp_path / "load_balancer.log").exists()


def test_check_refuses_what_run_refuses_and_reload_skips_the_admin_table(
    cluster: Cluster,
) -> None:
    backend = cluster.backend()
    port, log = free_port(), cluster.tmp / "lb.log"
    web = service("web", port, [backend])
    # An admin API open to the network without a token: `check` warns that `run` will refuse
    # it unless a token comes by flag or environment (it may, so it is not an error).
    config = cluster.config(web, top='[admin]\nlisten = "0.0.0.0:0"')
    result = run_cli("check", str(config))
    assert result.returncode == 0
    assert "warning: admin.listen: the admin API on non-loopback address 0.0.0.0:0 needs a" in (
        result.stderr
    )

    # The token file is read at start only: a reload does not need it any more.
    token = cluster.tmp / "token"
    token.write_text("s3cret\n")
    cluster.config(web, top=f'[admin]\nlisten = "127.0.0.1:0"\ntoken_file = "{token}"')
    assert run_cli("check", str(config)).returncode == 0
    proc, _ = cluster.balancer("--config", str(config))
    token.unlink()
    proc.signal(signal.SIGHUP)
    wait_for_log(log, r"event reload ")
    assert "reload_failed" not in read_log(log)
    assert served_by(exchange(port)) == backend
