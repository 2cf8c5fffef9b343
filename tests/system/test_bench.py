"""`balancer bench`: the report's format, and one real quick run against nginx and HAProxy."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import balancer_cmd, require_tool

from balancer.tools.bench.clients import parse_wrk
from balancer.tools.bench.options import STREAM_MODULE, TARGETS, Params
from balancer.tools.bench.report import Results, metrics, render

WRK_OUTPUT = """\
Running 5s test @ http://127.0.0.1:40000/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   680.12us  120.50us   5.10ms   90.00%
    Req/Sec    73.50k     2.10k   76.00k    80.00%
  Latency Distribution
     50%  650.00us
     75%    0.90ms
     90%    1.20ms
     99%    2.50ms
  365432 requests in 5.00s, 55.10MB read
  Socket errors: connect 0, read 12, write 0, timeout 0
  Non-2xx or 3xx responses: 3
Requests/sec:  73086.40
Transfer/sec:     11.02MB
"""

ROW_KEYS = (
    "keep-alive relay",
    "new connections",
    "bulk download",
    "latency p50",
    "latency p99",
    "CPU per request",
    "of which in user space",
    "RSS before idle connections",
    "RSS with",
    "RSS per idle connection",
)


def test_parse_wrk() -> None:
    parsed = parse_wrk(WRK_OUTPUT)
    assert parsed["requests_per_s"] == 73086.40
    assert parsed["requests"] == 365432
    assert parsed["seconds"] == 5.0
    assert parsed["latency_ms"] == {"50": 0.65, "75": 0.9, "90": 1.2, "99": 2.5}
    assert parsed["socket_errors"] == {"connect": 0, "read": 12, "write": 0, "timeout": 0}
    assert parsed["non_2xx"] == 3


def test_report_format_is_stable() -> None:
    params = Params()
    results = Results()
    results.samples = [
        {
            "run": 1,
            "workload": "keepalive",
            "target": target,
            "metrics": {"keepalive_rps": rps, "cpu_us_per_request": cpu},
        }
        for target, rps, cpu in (
            ("direct", 40000.0, None),
            ("haproxy", 20000.0, 20.0),
            ("nginx", 10000.0, 30.0),
            ("balancer", 10000.0, 40.0),
        )
    ]
    meta = {"cpus": 2, "kernel": "6.1", "python": "3.11.2", "versions": {}, "nofile": 20000}
    text = render(results, params, meta, {})
    lines = text.splitlines()
    assert lines[0] == "## balancer bench"
    assert "| workload | unit | better | direct | haproxy | nginx | balancer |" in lines
    assert (
        "| keep-alive relay (wrk -t1 -c50) | requests/s | higher | 40,000 | 20,000 | 10,000 "
        "| 10,000 |" in lines
    )
    assert "| CPU per request (keep-alive run) | us | lower | - | 20.0 | 30.0 | 40.0 |" in lines
    assert (
        "| workload | haproxy / direct | nginx / direct | balancer / direct | nginx / haproxy "
        "| balancer / haproxy |" in lines
    )
    assert "| keep-alive relay (wrk -t1 -c50) | 0.50 | 0.25 | 0.25 | 0.50 | 0.50 |" in lines
    assert "| RSS with 8,000 idle connections | MiB | lower | - | - | - | - |" in lines
    assert len(metrics(params)) == len(ROW_KEYS)


def test_floor_column_only_when_asked_for() -> None:
    results = Results()
    results.samples = [
        {"run": 1, "workload": "keepalive", "target": t, "metrics": {"keepalive_rps": rps}}
        for t, rps in (("direct", 40000.0), ("haproxy", 20000.0), ("balancer", 15000.0))
    ] + [
        {
            "run": 1,
            "workload": "keepalive",
            "target": "floor",
            "metrics": {"keepalive_rps": 20000.0},
        }
    ]
    meta = {"cpus": 2, "kernel": "6.1", "python": "3.11.2", "versions": {}, "nofile": 20000}
    default = render(results, Params(), meta, {}).splitlines()
    assert "| workload | unit | better | direct | haproxy | nginx | balancer |" in default
    assert not any("floor" in line for line in default)

    lines = render(results, Params(targets=TARGETS[:5]), meta, {}).splitlines()
    assert "| workload | unit | better | direct | haproxy | nginx | balancer | floor |" in lines
    assert (
        "| keep-alive relay (wrk -t1 -c50) | requests/s | higher | 40,000 | 20,000 | - | 15,000 "
        "| 20,000 |" in lines
    )
    assert any(
        line.startswith("| workload | ") and line.endswith("| floor / haproxy | balancer / floor |")
        for line in lines
    )
    assert "| keep-alive relay (wrk -t1 -c50) | 0.50 | - | 0.38 | - | 0.75 | 1.00 | 0.75 |" in lines

    # With the C floor too: its column, its ratio to HAProxy, and the Python floor's to it.
    results.samples.append(
        {
            "run": 1,
            "workload": "keepalive",
            "target": "cfloor",
            "metrics": {"keepalive_rps": 25000.0},
        }
    )
    lines = render(results, Params(targets=TARGETS[:6]), meta, {}).splitlines()
    assert (
        "| workload | unit | better | direct | haproxy | nginx | balancer | floor | cfloor |"
        in lines
    )
    assert any(
        line.endswith("| floor / haproxy | balancer / floor | cfloor / haproxy | floor / cfloor |")
        for line in lines
    )
    assert (
        "| keep-alive relay (wrk -t1 -c50) | 0.50 | - | 0.38 | - | 0.75 | 1.00 | 0.75 | 1.25 "
        "| 0.80 |" in lines
    )
    assert any("- cfloor: the same relay in C" in line for line in lines)
    assert not any("rfloor" in line for line in lines)

    # With the Rust floor: its column, and its ratios to HAProxy and to the C floor.
    results.samples.append(
        {
            "run": 1,
            "workload": "keepalive",
            "target": "rfloor",
            "metrics": {"keepalive_rps": 27500.0},
        }
    )
    lines = render(results, Params(targets=(*TARGETS[:6], "rfloor")), meta, {}).splitlines()
    assert any(line.endswith("| floor | cfloor | rfloor |") for line in lines)
    assert any(
        line.endswith("| rfloor / haproxy | rfloor / cfloor | balancer / rfloor |")
        for line in lines
    )
    assert any(line.endswith("| 1.38 | 1.10 | 0.55 |") for line in lines)


def test_soak_report_format() -> None:
    results = Results()
    results.soak = {
        "balancer": {
            "seconds": 60,
            "requests_per_s": 2192.4,
            "socket_errors": 0,
            "alive": True,
            "fds_before": 8,
            "fds_after": 8,
            "rss_before_kib": 40960,
            "rss_after_kib": 43008,
        },
        "nginx": {
            "seconds": 60,
            "requests_per_s": None,
            "socket_errors": 3,
            "alive": False,
            "fds_before": 7,
            "fds_after": None,
            "rss_before_kib": 14336,
            "rss_after_kib": None,
        },
    }
    meta = {"cpus": 2, "kernel": "6.1", "python": "3.11.2", "versions": {}, "nofile": 20000}
    lines = render(results, Params(soak=60), meta, {}).splitlines()
    assert lines[0] == "## balancer bench: connection-churn soak"
    assert "| balancer | 2,192 | 0 | yes | 8 | 8 | 40.0 | 42.0 | +5.0% |" in lines
    assert "| nginx | - | 3 | NO | 7 | - | 14.0 | - | - |" in lines


def _stream_module_or_skip(nginx: str) -> None:
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr + " "
    if "--with-stream " in built or STREAM_MODULE.exists():
        return
    message = "nginx's stream module is missing (Debian package libnginx-mod-stream)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.mark.timeout(90)
def test_quick_bench_reports_every_workload(tmp_path: Path) -> None:
    nginx = require_tool("nginx")
    require_tool("haproxy")
    require_tool("wrk")
    _stream_module_or_skip(nginx)
    raw = tmp_path / "bench.json"
    args = ("bench", "--runs", "1", "--duration", "1s", "--quick", "--no-install")
    done = subprocess.run(
        balancer_cmd(*args, "--json", str(raw)), capture_output=True, text=True, timeout=80
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "skipped" not in done.stdout, done.stdout

    rows = {}
    for line in done.stdout.splitlines():
        if line.startswith("| ") and "| better |" not in line:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == 7:  # the medians table: workload, unit, better, four targets
                rows[cells[0]] = cells
    for key in ROW_KEYS:
        matching = [label for label in rows if label.startswith(key)]
        assert len(matching) == 1, f"no row for {key!r} in\n{done.stdout}"
        balancer = rows[matching[0]][6]
        assert re.fullmatch(r"[\d,]+(\.\d+)?", balancer), f"{matching[0]}: {balancer!r}"
    assert re.search(r"\| balancer / haproxy \|", done.stdout)

    data = json.loads(raw.read_text())
    medians = data["medians"]
    for target in ("direct", "haproxy", "nginx", "balancer"):
        assert medians[target]["keepalive_rps"] > 0, target
        assert medians[target]["close_rps"] > 0, target
        assert medians[target]["bulk_mbps"] > 0, target
    assert data["memory"]["balancer"]["held"] == data["params"]["idle_connections"]
    assert medians["balancer"]["cpu_us_per_request"] > 0
    # (the balancer is Python: some of its time is its own, not only the kernel's)
    assert (
        0
        < medians["balancer"]["cpu_user_us_per_request"]
        < medians["balancer"]["cpu_us_per_request"]
    )
    # Every process it started is gone: nothing listens on the ports it used.
    for target in data["meta"]["targets"].values():
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", target["port"]), timeout=1).close()


@pytest.mark.timeout(60)
def test_short_soak_through_the_balancer_and_the_c_floor(tmp_path: Path) -> None:
    require_tool("nginx")
    require_tool("wrk")
    require_tool("cc")  # (the harness builds floor.c)
    raw = tmp_path / "soak.json"
    targets = "balancer,cfloor"
    args = ("bench", "--soak", "2s", "--targets", targets, "--no-install", "--json", str(raw))
    done = subprocess.run(balancer_cmd(*args), capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "## balancer bench: connection-churn soak" in done.stdout
    assert "skipping" not in done.stderr, done.stderr
    for target in ("balancer", "cfloor"):
        soak = json.loads(raw.read_text())["soak"][target]
        assert soak["alive"] and soak["requests_per_s"] > 0, soak
        assert soak["socket_errors"] == 0, soak
        assert soak["fds_before"] > 0 and soak["fds_after"] == soak["fds_before"], soak
        assert soak["rss_after_kib"] > 0, soak


def test_selection_bench_reports_every_algorithm() -> None:
    """`balancer bench --selection --quick`: a row of figures for every registered algorithm,
    and round robin as a worker, for each pool size and weighting; the relay harness's flags
    are refused with it rather than ignored."""
    from balancer.selection import REGISTRY
    from balancer.tools.bench.selection import QUICK_SIZES, WEIGHTS

    done = subprocess.run(
        balancer_cmd("bench", "--selection", "--quick"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^\| (.+?) \| ([\d,]+) \| ([\d-]+) \| ([\d.]+) \| ([\d.]+) \|$",
                      done.stdout, re.MULTILINE)  # fmt: skip
    seen = {(name, int(size.replace(",", "")), weights) for name, size, weights, _, _ in rows}
    names = [*REGISTRY, "round_robin (workers)"]
    assert seen == {(n, s, w) for n in names for s in QUICK_SIZES for w in WEIGHTS}
    assert len(rows) == len(seen)
    assert all(float(pick) > 0 for *_, pick in rows)
    refused = subprocess.run(
        balancer_cmd("bench", "--selection", "--soak", "5s", "--json", "x.json"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and not refused.stdout
    assert "--soak, --json do not apply" in refused.stderr


def test_instructions_per_connection_are_counted_with_callgrind() -> None:
    """The callgrind counter runs the relay twice and gives the difference per connection:
    a figure of the size a Python relay costs (tens to hundreds of thousands)."""
    require_tool("valgrind")
    done = subprocess.run(
        [sys.executable, "-m", "balancer.tools.bench.instructions", "--few", "20", "--many", "60"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    match = re.search(r"^([\d,]+) user-space instructions per new connection", done.stdout, re.M)
    assert match, done.stdout
    assert 10_000 < int(match.group(1).replace(",", "")) < 5_000_000
