"""What a run of `balancer bench` is asked to do: its flags, and the workloads' sizes."""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
TARGETS = ("direct", "haproxy", "nginx", "balancer", "floor", "cfloor", "rfloor", "tfloor")
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


class BenchError(Exception):
    """A problem that stops the whole benchmark (no backends, no client)."""


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
