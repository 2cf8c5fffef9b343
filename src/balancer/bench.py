"""`balancer bench`: the balancer against HAProxy and nginx stream, and against no proxy at all.

Everything runs on 127.0.0.1 with ports from the OS, in a temporary directory removed afterwards:

- backends: one nginx (worker_processes 1) listening on two ports, answering `/` with
  "hello\\n" and `/big` with a 100 MiB file;
- targets: `direct` (wrk straight to one backend port), `haproxy` (mode tcp, nbthread 1,
  roundrobin), `nginx` (stream module, worker_processes 1) and `balancer` (`balancer run`,
  one process unless `--balancer-args` says otherwise), each balancing over both ports;
  and, only when asked for, `floor` (`balancer.floor`: the least work a relay written in Python
  can do, no features, to show how much of a gap is Python's own cost) and `cfloor` (the same
  relay in C, `floor.c`, built with the machine's C compiler: what any relay can reach here);
- workloads, each run against each target, interleaved run by run: keep-alive relay (wrk
  -t1 -c50), new connections (wrk -t1 -c50 with `Connection: close`), bulk download (one
  connection reading the big file), latency percentiles (wrk -t1 -c10 --latency), CPU time
  per request (the target's utime+stime over the keep-alive run), and resident memory with
  8,000 idle relayed connections (measured once per target, after the timed runs);
- or, with `--soak`, only a connection-churn soak through each relay, reporting whether it
  survived, and its descriptors and resident memory before and after;
- or, with `--selection`, only what each algorithm's rebuild and pick cost (selection_bench).

The report (stdout) is a markdown table of medians plus a table of ratios; progress goes to
stderr. Missing tools are installed from Debian packages when running as root; a target whose
tool is still missing is skipped. Child processes run in their own process groups and are
killed on the way out, whatever the way out is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import IO, Any

HOST = "127.0.0.1"
TARGETS = ("direct", "haproxy", "nginx", "balancer", "floor", "cfloor")
DEFAULT_TARGETS = TARGETS[:4]  # (the report always has their columns; the floors' when asked for)
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

KEEPALIVE_CONNECTIONS = 50
CLOSE_CONNECTIONS = 50
LATENCY_CONNECTIONS = 10
BIG_SIZE = 100 * 1024 * 1024
QUICK_BIG_SIZE = 8 * 1024 * 1024
DOWNLOADS = 3  # bulk downloads per target per run
IDLE_CONNECTIONS = 8000
QUICK_IDLE_CONNECTIONS = 200
HOLD_BATCH = 250  # idle connections opened at a time
SOAK_CONNECTIONS = 200
SOAK_SETTLE = 2.0  # seconds for closed connections to drain before counting
BODY = b"hello\n"
PAUSE = 0.2  # between measurements, to let closed connections drain
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
NOFILE_NGINX = 20000  # worker_rlimit_nofile; at most the hard limit, checked at start
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A problem that stops the whole benchmark (no backends, no client)."""


# --------------------------------------------------------------------------------------------
# The report's rows


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: str
    digits: int


def metrics(params: Params) -> tuple[Metric, ...]:
    size = f"{params.big_size // (1024 * 1024)} MiB file"
    idle = f"{params.idle_connections:,}"
    return (
        Metric(
            "keepalive_rps",
            f"keep-alive relay (wrk -t1 -c{KEEPALIVE_CONNECTIONS})",
            "requests/s",
            "higher",
            0,
        ),
        Metric(
            "close_rps",
            f"new connections (wrk -t1 -c{CLOSE_CONNECTIONS}, Connection: close)",
            "requests/s",
            "higher",
            0,
        ),
        Metric("bulk_mbps", f"bulk download ({size}, 1 connection)", "MB/s", "higher", 0),
        Metric(
            "latency_p50_ms",
            f"latency p50 (wrk -t1 -c{LATENCY_CONNECTIONS})",
            "ms",
            "lower",
            3,
        ),
        Metric(
            "latency_p99_ms",
            f"latency p99 (wrk -t1 -c{LATENCY_CONNECTIONS})",
            "ms",
            "lower",
            3,
        ),
        Metric("cpu_us_per_request", "CPU per request (keep-alive run)", "us", "lower", 1),
        Metric("cpu_user_us_per_request", "of which in user space", "us", "lower", 1),
        Metric("rss_idle_mib", "RSS before idle connections", "MiB", "lower", 1),
        Metric("rss_held_mib", f"RSS with {idle} idle connections", "MiB", "lower", 1),
        Metric("rss_per_connection_kib", "RSS per idle connection", "KiB", "lower", 2),
    )


# --------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Params:
    runs: int = 3
    duration: int = 5
    quick: bool = False
    targets: tuple[str, ...] = DEFAULT_TARGETS
    balancer_args: tuple[str, ...] = ()
    idle_connections: int = IDLE_CONNECTIONS
    big_size: int = BIG_SIZE
    downloads: int = DOWNLOADS
    install: bool = True
    keep: bool = False
    json_path: str | None = None
    soak: int = 0  # seconds of connection churn instead of the workloads; 0: none


def _seconds(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*(s|m)?\s*", text)
    if not match or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(
            f"expected whole seconds of at least 1, as 5s or 1m, got {text!r}"
        )
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def _targets(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(TARGETS)}, got {text!r}"
        )
    return tuple(t for t in TARGETS if t in names)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs", type=_positive, default=3, metavar="N", help="interleaved runs (default 3)"
    )
    parser.add_argument(
        "--duration",
        type=_seconds,
        default=5,
        metavar="SECONDS",
        help="length of each wrk run, as 5s (default 5s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke mode: {QUICK_BIG_SIZE // (1024 * 1024)} MiB bulk file, one download, "
        f"{QUICK_IDLE_CONNECTIONS} idle connections, no warm-up",
    )
    parser.add_argument(
        "--targets",
        type=_targets,
        default=DEFAULT_TARGETS,
        metavar="LIST",
        help=f"comma-separated subset of {','.join(TARGETS)} (default {','.join(DEFAULT_TARGETS)})",
    )
    parser.add_argument(
        "--balancer-args",
        default="",
        metavar="ARGS",
        help='extra arguments for `balancer run`, as "--workers 2" '
        "(a single flag needs =: --balancer-args=--flag)",
    )
    parser.add_argument(
        "--soak",
        type=_seconds,
        default=0,
        metavar="SECONDS",
        help="instead of the workloads, a connection-churn soak of this length as 60s "
        f"(wrk, {SOAK_CONNECTIONS} connections, Connection: close) through each relay: "
        "descriptors and resident memory before and after",
    )
    parser.add_argument(
        "--idle-connections",
        type=_positive,
        metavar="N",
        help=f"idle connections held for the memory measurement (default {IDLE_CONNECTIONS:,})",
    )
    parser.add_argument(
        "--selection",
        action="store_true",
        help="instead, what each algorithm's rebuild and pick cost for pools of 10 to 1,000 "
        "backends (pure Python, no network; --quick: up to 100)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here as JSON")
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="never apt-get install a missing tool; skip what needs it",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (configs, logs)"
    )


def params_from_args(args: argparse.Namespace) -> Params:
    quick = bool(args.quick)
    idle = args.idle_connections or (QUICK_IDLE_CONNECTIONS if quick else IDLE_CONNECTIONS)
    return Params(
        runs=args.runs,
        duration=args.duration,
        quick=quick,
        targets=tuple(args.targets),
        balancer_args=tuple(shlex.split(args.balancer_args)),
        idle_connections=idle,
        big_size=QUICK_BIG_SIZE if quick else BIG_SIZE,
        downloads=1 if quick else DOWNLOADS,
        install=not args.no_install,
        keep=bool(args.keep),
        json_path=args.json,
        soak=args.soak,
    )


# --------------------------------------------------------------------------------------------
# Tools


@dataclass
class Tools:
    nginx: str | None = None
    wrk: str | None = None
    haproxy: str | None = None
    stream_module: Path | None = None  # None: not available
    stream_static: bool = False  # built into the nginx binary: no load_module needed
    versions: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # target or tool -> why it is missing


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", "")
    return shutil.which(name, path=f"{path}:{SBIN_PATH}" if path else SBIN_PATH)


def _command_output(args: list[str]) -> str:
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout + done.stderr


def _find_tools() -> Tools:
    tools = Tools(nginx=_which("nginx"), wrk=_which("wrk"), haproxy=_which("haproxy"))
    if tools.nginx:
        built = _command_output([tools.nginx, "-V"])
        if match := re.search(r"nginx/(\S+)", built):
            tools.versions["nginx"] = match.group(1)
        if re.search(r"--with-stream(\s|$)", built):
            tools.stream_static = True
        elif STREAM_MODULE.exists():
            tools.stream_module = STREAM_MODULE
    if tools.haproxy and (
        match := re.search(r"HAProxy version (\S+)", _command_output([tools.haproxy, "-v"]))
    ):
        tools.versions["haproxy"] = match.group(1)
    if tools.wrk and (match := re.search(r"wrk (\S+)", _command_output([tools.wrk, "-v"]))):
        tools.versions["wrk"] = match.group(1)
    return tools


def _missing_packages(tools: Tools) -> list[str]:
    packages = []
    if not tools.nginx:
        packages.append("nginx")
    if not tools.stream_static and tools.stream_module is None:
        packages.append("libnginx-mod-stream")
    if not tools.haproxy:
        packages.append("haproxy")
    if not tools.wrk:
        packages.append("wrk")
    return packages


def find_or_install_tools(install: bool) -> Tools:
    tools = _find_tools()
    missing = _missing_packages(tools)
    if missing and install:
        apt = _which("apt-get")
        if os.geteuid() != 0 or apt is None:
            why = "not running as root" if os.geteuid() != 0 else "no apt-get on this machine"
            log(f"missing Debian packages {' '.join(missing)}; cannot install them: {why}")
        else:
            log(f"installing missing Debian packages: {' '.join(missing)}")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            command = [apt, "install", "-y", "-q", *missing]
            try:
                done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, timeout=600)
                if done.returncode != 0:
                    subprocess.run([apt, "update", "-q"], env=env, timeout=300, check=False)
                    subprocess.run(command, env=env, stdin=subprocess.DEVNULL, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as exc:
                log(f"apt-get failed: {exc}")
            tools = _find_tools()
    if not tools.nginx:
        tools.problems["nginx"] = "nginx is not installed (Debian package nginx)"
    if not tools.wrk:
        tools.problems["wrk"] = "wrk is not installed (Debian package wrk)"
    if not tools.haproxy:
        tools.problems["haproxy"] = "haproxy is not installed (Debian package haproxy)"
    if tools.nginx and not tools.stream_static and tools.stream_module is None:
        tools.problems["nginx"] = (
            f"nginx's stream module is missing: no {STREAM_MODULE} "
            "(Debian package libnginx-mod-stream)"
        )
    return tools


# --------------------------------------------------------------------------------------------
# Processes


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Children:
    """Every process the harness starts, each in its own process group, stopped on exit."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """A long-running child; its output goes to NAME.out in the temporary directory."""
        with open(self.tmp / f"{name}.out", "wb") as out:
            proc = subprocess.Popen(
                args,
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def output(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.tmp / f"{name}.out").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def run(self, args: list[str], timeout: float) -> tuple[int, str]:
        """A short child (wrk): its exit status and output; killed if it overruns."""
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            return -1, f"timed out after {timeout:.0f}s"
        finally:
            if proc.poll() is None:
                self.stop(proc)
            with suppress(ValueError):
                self.procs.remove(proc)
        return proc.returncode, out.decode(errors="replace")

    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        """SIGINT the process group (every peer stops at once on it), then SIGKILL it."""
        if proc.poll() is None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGINT)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT)
        # Whatever is left of the group (workers of a leader that exited), and the leader.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()


def free_ports(count: int) -> list[int]:
    """Ports the OS hands out on 127.0.0.1, all different."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            sockets.append(s)
            s.bind((HOST, 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> bytes:
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def wait_ready(port: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> str | None:
    """None once `GET /` through `port` answers hello; otherwise why not."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return f"exited with status {proc.returncode}"
        try:
            answer = http_get(port)
            if answer.startswith(b"HTTP/1.1 200") and answer.endswith(BODY):
                return None
            last = f"unexpected answer {answer[:60]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    return f"not ready after {timeout:.0f}s: {last}"


# --------------------------------------------------------------------------------------------
# /proc accounting


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_cpu_seconds(pid: int) -> tuple[float, float]:
    """utime and stime of the process and its descendants: user space and kernel."""
    user = system = 0
    for p in process_tree(pid):
        with suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(p)
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def tree_fds(pid: int) -> int:
    """Open descriptors of the process and its descendants."""
    total = 0
    for p in process_tree(pid):
        with suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total


def tree_rss_kib(pid: int) -> int:
    """VmRSS of the process and its descendants, in KiB."""
    total = 0
    for p in process_tree(pid):
        with suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


# --------------------------------------------------------------------------------------------
# Configs


def _nginx_main(prefix: Path, as_root: bool) -> str:
    """The top of an nginx config: one foreground process, its files under `prefix`."""
    return f"""{"user root;" if as_root else ""}
worker_processes 1;
daemon off;
master_process off;
worker_rlimit_nofile {NOFILE_NGINX};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections {NOFILE_NGINX - 1000};
}}"""


def nginx_backend_conf(tmp: Path, ports: Sequence[int], root: Path, as_root: bool) -> str:
    prefix = tmp / "backend"
    listens = "\n".join(f"        listen {HOST}:{p} backlog=4096;" for p in ports)
    return f"""# nginx backends for balancer bench
{_nginx_main(prefix, as_root)}
http {{
    access_log off;
    default_type text/plain;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_header_timeout 600s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
{listens}
        root {root};
        location = / {{
            return 200 "hello\\n";
        }}
    }}
}}
"""


def nginx_stream_conf(
    tmp: Path, port: int, backends: Sequence[int], tools: Tools, as_root: bool
) -> str:
    prefix = tmp / "stream"
    load = f"load_module {tools.stream_module};" if tools.stream_module else ""
    servers = "\n".join(f"        server {HOST}:{p};" for p in backends)
    return f"""# nginx stream load balancer for balancer bench
{load}
{_nginx_main(prefix, as_root)}
stream {{
    upstream backends {{
{servers}
    }}
    server {{
        listen {HOST}:{port} backlog=4096;
        proxy_pass backends;
        proxy_timeout 600s;
    }}
}}
"""


def haproxy_conf(port: int, backends: Sequence[int]) -> str:
    servers = "\n".join(f"    server s{i} {HOST}:{p}" for i, p in enumerate(backends, 1))
    return f"""# HAProxy for balancer bench
global
    nbthread 1
    maxconn 9000

defaults
    mode tcp
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    maxconn 9000

frontend bench
    bind {HOST}:{port}
    default_backend backends

backend backends
    balance roundrobin
{servers}
"""


# --------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None  # None for direct: nothing between wrk and nginx
    status: str = "ok"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None


_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def parse_wrk(text: str) -> dict[str, Any]:
    """The numbers in wrk's report: requests/s, requests, latency percentiles (ms), errors."""
    result: dict[str, Any] = {}
    if match := re.search(r"Requests/sec:\s*([\d.]+)", text):
        result["requests_per_s"] = float(match.group(1))
    if match := re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h)", text):
        result["requests"] = int(match.group(1))
        result["seconds"] = float(match.group(2)) * _TIME_UNITS[match.group(3)] / 1000
    percentiles = {}
    for match in re.finditer(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M):
        percentiles[match.group(1)] = float(match.group(2)) * _TIME_UNITS[match.group(3)]
    if percentiles:
        result["latency_ms"] = percentiles
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    ):
        keys = ("connect", "read", "write", "timeout")
        result["socket_errors"] = dict(zip(keys, map(int, match.groups()), strict=True))
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        result["non_2xx"] = int(match.group(1))
    return result


def build_cfloor(directory: Path) -> tuple[Path | None, str]:
    """Compile floor.c (shipped with the package) into `directory`: the binary, or None and why."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "no C compiler (cc) to build floor.c"
    source = resources.files("balancer") / "floor.c"
    binary = directory / "cfloor"
    with resources.as_file(source) as path:
        try:
            built = subprocess.run(
                [compiler, "-O2", "-o", str(binary), str(path)],
                capture_output=True,
                text=True,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"floor.c could not be built: {exc}"
    if built.returncode != 0:
        return None, f"floor.c could not be built: {built.stderr.strip()[-500:]}"
    return binary, ""


def download(port: int, path: str, size: int, timeout: float = 60.0) -> float:
    """Seconds to fetch `path` (at least `size` bytes of body) over one new connection."""
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()
    buffer = bytearray(1 << 20)
    received = 0
    start = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(request)
        first = s.recv(65536)
        if not first.startswith(b"HTTP/1.1 200"):
            raise OSError(f"unexpected answer {first[:60]!r}")
        received = len(first) - (first.find(b"\r\n\r\n") + 4)
        while n := s.recv_into(buffer):
            received += n
    elapsed = time.perf_counter() - start
    if received < size:
        raise OSError(f"connection closed after {received} of {size} bytes")
    return elapsed


def hold_connections(port: int, count: int, timeout: float) -> tuple[list[socket.socket], int]:
    """Open `count` connections, each proven relayed by one request and its answer, then
    left idle (keep-alive); returns the open sockets and how many failed."""
    held: list[socket.socket] = []
    failed = 0
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for first in range(0, count, HOLD_BATCH):
            if time.monotonic() > deadline:
                failed += count - first
                break
            pending: dict[socket.socket, bytes] = {}
            for _ in range(min(HOLD_BATCH, count - first)):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    s.settimeout(5.0)
                    s.connect((HOST, port))
                    s.sendall(request)
                    s.setblocking(False)
                except OSError:
                    s.close()
                    failed += 1
                    continue
                pending[s] = b""
                selector.register(s, selectors.EVENT_READ, s)
            while pending and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.5):
                    sock: socket.socket = key.data
                    try:
                        data = sock.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    answer = pending[sock] + data
                    done = b"\r\n\r\n" in answer and answer.endswith(BODY)
                    if not data or done:
                        selector.unregister(sock)
                        del pending[sock]
                        if done:
                            held.append(sock)
                        else:
                            sock.close()
                            failed += 1
                    else:
                        pending[sock] = answer
            for sock in pending:
                selector.unregister(sock)
                sock.close()
                failed += 1
    return held, failed


@dataclass
class Results:
    samples: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)
    soak: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def values(self, target: str, key: str) -> list[float]:
        found = [
            float(s["metrics"][key])
            for s in self.samples
            if s["target"] == target and s["metrics"].get(key) is not None
        ]
        memory = self.memory.get(target, {}).get(key)
        if memory is not None:
            found.append(float(memory))
        return found

    def median(self, target: str, key: str) -> float | None:
        found = self.values(target, key)
        return statistics.median(found) if found else None


class Bench:
    def __init__(self, params: Params, tools: Tools, tmp: Path, children: Children) -> None:
        self.params = params
        self.tools = tools
        self.tmp = tmp
        self.children = children
        self.results = Results()
        self.targets: dict[str, Target] = {}
        self.skipped: dict[str, str] = {}
        self.backend_ports: list[int] = []
        self.as_root = os.geteuid() == 0

    # -- setup

    def start(self) -> None:
        assert self.tools.nginx is not None
        www = self.tmp / "www"
        www.mkdir()
        (www / "big").touch()
        os.truncate(www / "big", self.params.big_size)  # sparse: all zeros, no disk
        for sub in ("backend", "stream"):
            (self.tmp / sub).mkdir()
        ports = free_ports(len(TARGETS) + 1)
        self.backend_ports = ports[:2]
        conf = self.tmp / "backend" / "nginx.conf"
        conf.write_text(nginx_backend_conf(self.tmp, self.backend_ports, www, self.as_root))
        backend = self.children.start("backend", self._nginx_args(self.tmp / "backend", conf))
        for port in self.backend_ports:
            if why := wait_ready(port, backend, READY_TIMEOUT):
                raise BenchError(
                    f"the nginx backends did not start: {why}\n{self.children.output('backend')}"
                )
        log(f"nginx backends on {HOST}:{self.backend_ports[0]} and {HOST}:{self.backend_ports[1]}")
        try:  # the first read of the big file fills the page cache: keep it out of the runs
            download(self.backend_ports[0], "/big", self.params.big_size)
        except OSError as exc:
            raise BenchError(f"the nginx backends cannot serve the big file: {exc}") from None
        starters: dict[str, Callable[[int], subprocess.Popen[bytes] | None]] = {
            "direct": lambda port: None,
            "haproxy": self._start_haproxy,
            "nginx": self._start_stream,
            "balancer": self._start_balancer,
            "floor": self._start_floor,
            "cfloor": self._start_cfloor,
        }
        for name, port in zip(TARGETS, [self.backend_ports[0], *ports[2:]], strict=True):
            if name not in self.params.targets:
                continue
            if name in ("haproxy", "nginx") and name in self.tools.problems:
                self.skip(name, self.tools.problems[name])
                continue
            proc = starters[name](port)
            if name in self.skipped:
                continue
            if why := wait_ready(port, proc, READY_TIMEOUT):
                output = self.children.output(name)
                self.skip(name, f"did not start: {why}" + (f"\n{output}" if output else ""))
                if proc is not None:
                    self.children.stop(proc)
                continue
            self.targets[name] = Target(name, port, proc)
            log(f"{name} on {HOST}:{port}" + (f" (pid {proc.pid})" if proc else ""))
        if not self.targets:
            raise BenchError("no target could be started")

    def _nginx_args(self, prefix: Path, conf: Path) -> list[str]:
        assert self.tools.nginx is not None
        return [self.tools.nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "err")]

    def _start_haproxy(self, port: int) -> subprocess.Popen[bytes]:
        assert self.tools.haproxy is not None
        conf = self.tmp / "haproxy.cfg"
        conf.write_text(haproxy_conf(port, self.backend_ports))
        return self.children.start("haproxy", [self.tools.haproxy, "-db", "-f", str(conf)])

    def _start_stream(self, port: int) -> subprocess.Popen[bytes]:
        prefix = self.tmp / "stream"
        conf = prefix / "nginx.conf"
        conf.write_text(
            nginx_stream_conf(self.tmp, port, self.backend_ports, self.tools, self.as_root)
        )
        return self.children.start("nginx", self._nginx_args(prefix, conf))

    def _start_balancer(self, port: int) -> subprocess.Popen[bytes]:
        backends = [arg for p in self.backend_ports for arg in ("--backend", f"{HOST}:{p}")]
        args = [
            sys.executable,
            "-m",
            "balancer",
            "run",
            "--listen",
            f"{HOST}:{port}",
            *backends,
            "--log-file",
            str(self.tmp / "lb.log"),
            "--no-health-check",
            *self.params.balancer_args,
        ]
        return self.children.start("balancer", args)

    def _start_floor(self, port: int) -> subprocess.Popen[bytes]:
        ports = [str(p) for p in self.backend_ports]
        return self.children.start(
            "floor", [sys.executable, "-m", "balancer.floor", str(port), *ports]
        )

    def _start_cfloor(self, port: int) -> subprocess.Popen[bytes] | None:
        binary, error = build_cfloor(self.tmp)
        if binary is None:
            self.skip("cfloor", error)
            return None
        ports = [str(p) for p in self.backend_ports]
        return self.children.start("cfloor", [str(binary), str(port), *ports])

    def skip(self, name: str, why: str) -> None:
        self.skipped[name] = why.splitlines()[0]
        log(f"skipping {name}: {why}")

    # -- workloads

    def wrk(
        self, target: Target, path: str, connections: int, close: bool, seconds: int = 0
    ) -> dict[str, Any]:
        """One wrk run of `seconds` (default: the run length); its parsed report."""
        assert self.tools.wrk is not None
        seconds = seconds or self.params.duration
        args = [
            self.tools.wrk,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "5s",
        ]
        if close:
            args += ["-H", "Connection: close"]
        args.append(f"http://{HOST}:{target.port}{path}")
        status, output = self.children.run(args, timeout=seconds + 30)
        parsed = parse_wrk(output)
        parsed["exit_status"] = status
        if status != 0 or "requests_per_s" not in parsed:
            parsed["output"] = output[-2000:]
        return parsed

    def warm_up(self) -> None:
        for target in self.targets.values():
            self.wrk(target, "/", KEEPALIVE_CONNECTIONS, close=False, seconds=1)

    def measure(self, run: int, workload: str, target: Target) -> None:
        if not target.alive():
            target.status = f"exited with status {target.proc and target.proc.returncode}"
            note = f"{target.name} {target.status}: no further measurements"
            if note not in self.results.notes:
                self.results.notes.append(note)
                log(note)
            return
        sample: dict[str, Any] = {"run": run, "workload": workload, "target": target.name}
        values: dict[str, float | None] = {}
        if workload == "keepalive":
            pid = target.pid
            user_before, system_before = tree_cpu_seconds(pid) if pid else (0.0, 0.0)
            wrk = self.wrk(target, "/", KEEPALIVE_CONNECTIONS, close=False)
            values["keepalive_rps"] = wrk.get("requests_per_s")
            requests = wrk.get("requests")
            if pid and requests:
                user_after, system_after = tree_cpu_seconds(pid)
                user = user_after - user_before
                cpu = user + system_after - system_before
                values["cpu_us_per_request"] = cpu * 1e6 / requests
                values["cpu_user_us_per_request"] = user * 1e6 / requests
                wrk["cpu_seconds"] = cpu
                wrk["cpu_user_seconds"] = user
            sample["wrk"] = wrk
        elif workload == "close":
            wrk = self.wrk(target, "/", CLOSE_CONNECTIONS, close=True)
            values["close_rps"] = wrk.get("requests_per_s")
            sample["wrk"] = wrk
        elif workload == "latency":
            wrk = self.wrk(target, "/", LATENCY_CONNECTIONS, close=False)
            latency = wrk.get("latency_ms", {})
            values["latency_p50_ms"] = latency.get("50")
            values["latency_p99_ms"] = latency.get("99")
            sample["wrk"] = wrk
        elif workload == "bulk":
            times = []
            for _ in range(self.params.downloads):
                try:
                    times.append(download(target.port, "/big", self.params.big_size))
                except OSError as exc:
                    sample["error"] = str(exc)
                    break
            sample["download_seconds"] = times
            if times and "error" not in sample:
                values["bulk_mbps"] = self.params.big_size * len(times) / sum(times) / 1e6
        sample["metrics"] = values
        self.results.samples.append(sample)
        if "wrk" in sample:
            self._note_errors(sample)
        shown = ", ".join(
            f"{k} {v:,.3f}" if v < 100 else f"{k} {v:,.0f}"
            for k, v in values.items()
            if v is not None
        )
        log(f"run {run}/{self.params.runs} {workload:<9} {target.name:<8} {shown or 'failed'}")

    def _note_errors(self, sample: dict[str, Any]) -> None:
        wrk = sample["wrk"]
        errors = {k: v for k, v in wrk.get("socket_errors", {}).items() if v}
        where = f"{sample['target']} {sample['workload']} run {sample['run']}"
        if errors:
            text = ", ".join(f"{k} {v}" for k, v in errors.items())
            self.results.notes.append(f"{where}: wrk socket errors: {text}")
        if wrk.get("non_2xx"):
            self.results.notes.append(f"{where}: {wrk['non_2xx']} non-2xx answers")
        if "requests_per_s" not in wrk:
            last = wrk.get("output", "").strip().splitlines()[-1:] or ["no output"]
            self.results.notes.append(
                f"{where}: wrk failed (status {wrk['exit_status']}): {last[0]}"
            )

    def soak(self, target: Target) -> None:
        """Churn connections through `target`; compare its descriptors and memory after."""
        pid = target.pid
        assert pid is not None
        self.wrk(target, "/", 10, close=True, seconds=1)  # warm-up
        time.sleep(SOAK_SETTLE)
        fds, rss = tree_fds(pid), tree_rss_kib(pid)
        seconds = self.params.soak
        log(f"soak {target.name}: {seconds}s, {SOAK_CONNECTIONS} connections")
        wrk = self.wrk(target, "/", SOAK_CONNECTIONS, close=True, seconds=seconds)
        time.sleep(SOAK_SETTLE)
        alive = target.alive()
        result: dict[str, Any] = {
            "seconds": seconds,
            "requests_per_s": wrk.get("requests_per_s"),
            "socket_errors": sum(wrk.get("socket_errors", {}).values()),
            "alive": alive,
            "fds_before": fds,
            "fds_after": tree_fds(pid) if alive else None,
            "rss_before_kib": rss,
            "rss_after_kib": tree_rss_kib(pid) if alive else None,
        }
        if "output" in wrk:
            result["wrk_output"] = wrk["output"]
        self.results.soak[target.name] = result
        log(
            f"soak {target.name}: {'alive' if alive else 'DIED'}, descriptors {fds} -> "
            f"{result['fds_after']}, RSS {rss} -> {result['rss_after_kib']} KiB"
        )

    def measure_memory(self, target: Target) -> None:
        pid = target.pid
        if pid is None or not target.alive():
            return
        count = self.params.idle_connections
        time.sleep(1.0)
        before = tree_rss_kib(pid)
        started = time.monotonic()
        held, failed = hold_connections(target.port, count, timeout=max(60.0, count / 100))
        opened = time.monotonic() - started
        try:
            time.sleep(1.0)
            after = tree_rss_kib(pid)
        finally:
            for s in held:
                s.close()
        entry: dict[str, Any] = {
            "requested": count,
            "held": len(held),
            "failed": failed,
            "open_seconds": round(opened, 3),
            "rss_before_kib": before,
            "rss_after_kib": after,
            "rss_idle_mib": before / 1024,
            "rss_held_mib": after / 1024,
            "rss_per_connection_kib": (after - before) / len(held) if held else None,
        }
        self.results.memory[target.name] = entry
        if failed:
            self.results.notes.append(
                f"{target.name} memory: held {len(held):,} of {count:,} idle connections"
            )
        processes = len(process_tree(pid))
        entry["processes"] = processes
        if processes > 1:
            self.results.notes.append(
                f"{target.name} memory: RSS summed over {processes} processes "
                "(pages they share are counted once per process)"
            )
        per = entry["rss_per_connection_kib"]
        log(
            f"memory    {target.name:<8} {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB with "
            f"{len(held):,} idle connections (opened in {opened:.1f}s)"
            + (f", {per:.2f} KiB each" if per is not None else "")
        )
        time.sleep(1.0)

    def run(self) -> None:
        if self.params.soak:
            for target in self.targets.values():
                if target.name != "direct":
                    self.soak(target)
            return
        if not self.params.quick:
            self.warm_up()
        for run in range(1, self.params.runs + 1):
            for workload in ("keepalive", "close", "latency", "bulk"):
                for target in self.targets.values():
                    self.measure(run, workload, target)
                    time.sleep(PAUSE)
        for target in self.targets.values():
            if target.name != "direct":
                self.measure_memory(target)


# --------------------------------------------------------------------------------------------
# Report


def _format(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


RATIOS = (
    ("haproxy", "direct"),
    ("nginx", "direct"),
    ("balancer", "direct"),
    ("nginx", "haproxy"),
    ("balancer", "haproxy"),
)
FLOOR_RATIOS = (  # (each when its floor was asked for)
    ("floor", "haproxy"),
    ("balancer", "floor"),
    ("cfloor", "haproxy"),
    ("floor", "cfloor"),
)


def columns(params: Params) -> list[str]:
    """The targets the report has a column for."""
    return [t for t in TARGETS if t in DEFAULT_TARGETS or t in params.targets]


def ratio_pairs(params: Params) -> tuple[tuple[str, str], ...]:
    return RATIOS + tuple(
        pair for pair in FLOOR_RATIOS if all(t in params.targets for t in pair if "floor" in t)
    )


def ratios(results: Results, params: Params) -> dict[str, dict[str, float | None]]:
    table: dict[str, dict[str, float | None]] = {}
    for metric in metrics(params):
        row: dict[str, float | None] = {}
        for top, bottom in ratio_pairs(params):
            a, b = results.median(top, metric.key), results.median(bottom, metric.key)
            row[f"{top}/{bottom}"] = a / b if a is not None and b else None
        table[metric.key] = row
    return table


def render(
    results: Results,
    params: Params,
    meta: dict[str, Any],
    skipped: dict[str, str],
) -> str:
    versions = meta["versions"]
    tools = ", ".join(
        f"{name} {versions[key]}"
        for name, key in (("nginx", "nginx"), ("HAProxy", "haproxy"), ("wrk", "wrk"))
        if key in versions
    )
    balancer = " ".join(["balancer run --no-health-check", *params.balancer_args])
    if params.soak:
        return render_soak(results, params, meta, balancer, skipped)
    lines = [
        "## balancer bench",
        "",
        f"- machine: {meta['cpus']} CPUs, Linux {meta['kernel']}, Python {meta['python']}",
        f"- tools: {tools}",
        f"- runs: {params.runs}, interleaved; {params.duration}s per wrk run; medians shown"
        + ("; quick mode" if params.quick else ""),
        "- backends: one nginx (worker_processes 1) on two ports; direct = wrk straight to one",
        f"- peers: HAProxy (mode tcp, nbthread 1), nginx stream (worker_processes 1), `{balancer}`",
        *(
            ["- floor: `python -m balancer.floor`, a relay with no features, Python's own cost"]
            if "floor" in params.targets
            else []
        ),
        *(
            ["- cfloor: the same relay in C (`floor.c`), what any relay can reach on this machine"]
            if "cfloor" in params.targets
            else []
        ),
        f"- memory: {params.idle_connections:,} idle relayed connections, once per target after "
        f"the timed runs; open-file limit {meta['nofile']}",
        "",
        "| workload | unit | better | " + " | ".join(columns(params)) + " |",
        "|---|---|---|" + "---:|" * len(columns(params)),
    ]
    for metric in metrics(params):
        cells = [_format(results.median(t, metric.key), metric.digits) for t in columns(params)]
        lines.append(
            f"| {metric.label} | {metric.unit} | {metric.better} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        "| workload | " + " | ".join(f"{a} / {b}" for a, b in ratio_pairs(params)) + " |",
        "|---|" + "---:|" * len(ratio_pairs(params)),
    ]
    table = ratios(results, params)
    for metric in metrics(params):
        cells = [_format(table[metric.key][f"{a}/{b}"], 2) for a, b in ratio_pairs(params)]
        lines.append(f"| {metric.label} | " + " | ".join(cells) + " |")
    notes = [f"{name} skipped: {why}" for name, why in skipped.items()] + results.notes
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def render_soak(
    results: Results, params: Params, meta: dict[str, Any], balancer: str, skipped: dict[str, str]
) -> str:
    lines = [
        "## balancer bench: connection-churn soak",
        "",
        f"- machine: {meta['cpus']} CPUs, Linux {meta['kernel']}, Python {meta['python']}",
        f"- load: wrk -t1 -c{SOAK_CONNECTIONS} -H 'Connection: close' for {params.soak}s; "
        f"counted {SOAK_SETTLE:g}s after a 1s warm-up and {SOAK_SETTLE:g}s after the soak",
        f"- balancer: `{balancer}`",
        "",
        "| target | requests/s | socket errors | survived | descriptors before | after "
        "| RSS before, MiB | after, MiB | RSS change |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.soak.items():
        before, after = r["rss_before_kib"], r["rss_after_kib"]
        change = f"{(after - before) / before:+.1%}" if after is not None and before else "-"
        lines.append(
            f"| {name} | {_format(r['requests_per_s'], 0)} | {r['socket_errors']:,} | "
            f"{'yes' if r['alive'] else 'NO'} | {r['fds_before']} | "
            f"{r['fds_after'] if r['fds_after'] is not None else '-'} | "
            f"{_format(before / 1024, 1)} | "
            f"{_format(after / 1024 if after is not None else None, 1)} | {change} |"
        )
    notes = [f"{name} skipped: {why}" for name, why in skipped.items()] + results.notes
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def to_json(
    results: Results, params: Params, meta: dict[str, Any], skipped: dict[str, str]
) -> dict[str, Any]:
    return {
        "meta": meta,
        "params": {
            "runs": params.runs,
            "duration_s": params.duration,
            "quick": params.quick,
            "targets": list(params.targets),
            "balancer_args": list(params.balancer_args),
            "idle_connections": params.idle_connections,
            "big_size": params.big_size,
            "downloads": params.downloads,
            "keepalive_connections": KEEPALIVE_CONNECTIONS,
            "close_connections": CLOSE_CONNECTIONS,
            "latency_connections": LATENCY_CONNECTIONS,
            "soak_s": params.soak,
        },
        "skipped": skipped,
        "samples": results.samples,
        "memory": results.memory,
        "soak": results.soak,
        "medians": {
            t: {m.key: results.median(t, m.key) for m in metrics(params)} for t in columns(params)
        },
        "ratios": ratios(results, params),
        "notes": results.notes,
    }


# --------------------------------------------------------------------------------------------
# Entry points


def raise_nofile() -> int:
    """Lift the soft open-file limit to the hard one (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP unwind like Ctrl-C, so the finally blocks stop the children
    (SIGINT too even where it was inherited ignored, as by a shell's background job)."""
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def bench(params: Params, out: IO[str] = sys.stdout) -> int:
    """Run the whole benchmark; write the report to `out`; return the exit status."""
    with _sigterm_interrupts():
        try:
            return _bench(params, out)
        except BenchError as exc:
            print(f"balancer bench: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("balancer bench: interrupted; stopped every process it started", file=sys.stderr)
            return 130


def _bench(params: Params, out: IO[str]) -> int:
    started = time.monotonic()
    nofile = raise_nofile()
    needed = 2 * params.idle_connections + 200
    if nofile < needed:
        log(
            f"open-file limit {nofile} is below the {needed} a peer needs to relay "
            f"{params.idle_connections:,} connections; the memory measurement will fall short"
        )
    tools = find_or_install_tools(params.install)
    for tool in ("nginx", "wrk"):
        if getattr(tools, tool) is None:
            raise BenchError(f"{tools.problems[tool]}; cannot benchmark without it")
    meta: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": tools.versions,
        "nofile": nofile,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = Path(tempfile.mkdtemp(prefix="balancer-bench-"))
    children = Children(tmp)
    try:
        runner = Bench(params, tools, tmp, children)
        try:
            runner.start()
            runner.run()
        finally:
            children.stop_all()
        meta["elapsed_s"] = round(time.monotonic() - started, 1)
        meta["targets"] = {
            name: {"port": t.port, "status": t.status} for name, t in runner.targets.items()
        }
        out.write(render(runner.results, params, meta, runner.skipped))
        out.flush()
        if params.json_path:
            data = to_json(runner.results, params, meta, runner.skipped)
            Path(params.json_path).write_text(json.dumps(data, indent=2) + "\n")
        elapsed = time.monotonic() - started
        log(f"finished in {int(elapsed // 60)}m{elapsed % 60:04.1f}s")
        return 0
    finally:
        children.stop_all()
        if params.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    """`balancer bench` from the parsed command line."""
    if args.selection:
        from balancer import selection_bench

        defaults = Params()
        given = {
            "--runs": args.runs != defaults.runs,
            "--duration": args.duration != defaults.duration,
            "--targets": tuple(args.targets) != defaults.targets,
            "--balancer-args": bool(args.balancer_args),
            "--soak": bool(args.soak),
            "--idle-connections": args.idle_connections is not None,
            "--json": args.json is not None,
            "--no-install": args.no_install,
            "--keep": args.keep,
        }
        if unused := [flag for flag, set_ in given.items() if set_]:
            print(
                f"balancer bench: --selection runs no relay; {', '.join(unused)} "
                f"{'does' if len(unused) == 1 else 'do'} not apply to it",
                file=sys.stderr,
            )
            return 2
        return selection_bench.run(quick=bool(args.quick))
    return bench(params_from_args(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="balancer bench", description="Compare balancer with HAProxy and nginx stream."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
