"""Real clients of real protocols through the balancer, unchanged."""

from __future__ import annotations

import re
import subprocess

from conftest import Cluster, Process, free_port, require_tool, wait_for_log


def test_curl_http_keep_alive(cluster: Cluster) -> None:
    curl = require_tool("curl")
    backends = [cluster.backend("http") for _ in range(2)]
    _, port = cluster.balancer(*[f"--backend=127.0.0.1:{p}" for p in backends])
    url = f"http://127.0.0.1:{port}/"
    # Three requests on one connection (curl reuses it): one backend serves them all.
    result = subprocess.run(
        [curl, "-sS", "--fail", url, url, f"http://127.0.0.1:{port}/health"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == lines[1] and lines[0].startswith("Hello from Server ")
    assert lines[2] == "ok"


def test_wrk_http_load(cluster: Cluster) -> None:
    wrk = require_tool("wrk")
    backends = [cluster.backend("http") for _ in range(3)]
    _, port = cluster.balancer(*[f"--backend=127.0.0.1:{p}" for p in backends])
    result = subprocess.run(
        [wrk, "-t1", "-c20", "-d2s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    requests = int(re.search(r"(\d+) requests in", result.stdout).group(1))  # type: ignore[union-attr]
    assert requests > 100, result.stdout
    assert "Non-2xx" not in result.stdout and "Socket errors" not in result.stdout, result.stdout
    # wrk holds its 20 connections to the end; each was relayed to one of the backends.
    for p in backends:
        wait_for_log(cluster.tmp / "lb.log", rf"backend=127\.0\.0\.1:{p} ")


def test_redis_client_and_benchmark(cluster: Cluster) -> None:
    server = require_tool("redis-server")
    cli = require_tool("redis-cli")
    bench = require_tool("redis-benchmark")
    redis_port = free_port()
    redis = Process(
        [
            server,
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(cluster.tmp),
        ]
    )
    cluster.processes.append(redis)
    redis.expect(r"Ready to accept connections")
    _, port = cluster.balancer(f"--backend=127.0.0.1:{redis_port}")

    def redis_cli(*args: str) -> str:
        result = subprocess.run(
            [cli, "-p", str(port), *args], capture_output=True, text=True, timeout=20
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert redis_cli("PING") == "PONG"
    value = "x" * 100_000
    assert redis_cli("SET", "big", value) == "OK"
    assert redis_cli("GET", "big") == value
    result = subprocess.run(
        [bench, "-p", str(port), "-n", "20000", "-c", "20", "-t", "set,get", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"SET: [\d.]+ requests per second", result.stdout), result.stdout
    assert re.search(r"GET: [\d.]+ requests per second", result.stdout), result.stdout
    assert redis_cli("DBSIZE") not in ("", "0")
