"""The `balancer` command: run, check, status, and the tools (backend, client, demo, bench)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from balancer.config import (
    MAX_WEIGHT,
    AdminConfig,
    BackendConfig,
    Config,
    ConfigError,
    DiscoveryConfig,
    HealthCheckConfig,
    LogConfig,
    ServiceConfig,
    Timeouts,
    check_service_name,
    parse_duration,
    parse_port_range,
    parse_workers,
)
from balancer.core.address import Address, parse_address

T = TypeVar("T")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks, and ends each flag's help with its default (when it
    has one the help does not already give)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" not in text
            and action.option_strings
            and default not in (None, False, "", [], argparse.SUPPRESS)
        ):
            shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
            text += f" (default: {shown})"
        return text


def _flag_type(convert: Callable[[str], T]) -> Callable[[str], T]:
    """Wrap a parser so argparse reports its ValueError under the flag's name."""

    def wrapped(text: str) -> T:
        try:
            return convert(text)
        except (ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    wrapped.__name__ = getattr(convert, "__name__", "value")
    return wrapped


def backend_flag(text: str) -> BackendConfig:
    """`HOST:PORT` or `HOST:PORT,weight=N`."""
    address_text, _, options = text.partition(",")
    address = parse_address(address_text)
    weight = 1
    for option in filter(None, options.split(",")):
        key, sep, value = option.partition("=")
        if key != "weight" or not sep:
            raise ValueError(f"unknown backend option {option!r} in {text!r}: expected weight=N")
        if not value.isdigit() or not 1 <= int(value) <= MAX_WEIGHT:
            raise ValueError(f"weight must be 1-{MAX_WEIGHT}, got {value!r} in {text!r}")
        weight = int(value)
    return BackendConfig(address, weight)


def range_flag(text: str) -> DiscoveryConfig:
    """`HOST:FIRST-LAST`, as 127.0.0.1:9001-9009."""
    host, sep, ports = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:FIRST-LAST, as 127.0.0.1:9001-9009, got {text!r}")
    first, last = parse_port_range(ports)
    parse_address(f"{host}:{first}")
    return DiscoveryConfig(host, first, last)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"expected a whole number of at least 0, got {text!r}")
    return int(text)


def _positive_duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero, as 500ms or 3s, got {text!r}")
    return seconds


def _algorithm(name: str) -> str:
    from balancer.selection import check_algorithm

    return check_algorithm(name)


def _listen_address(text: str) -> Address:
    return parse_address(text, allow_zero_port=True)


def _port(text: str) -> int:
    return parse_address(f"127.0.0.1:{text}").port


def _any_port(text: str) -> int:
    return parse_address(f"127.0.0.1:{text}", allow_zero_port=True).port


RUN_EXAMPLES = """\
examples:
  balancer run --backend 127.0.0.1:9001 --backend 127.0.0.1:9002,weight=2
  balancer run --listen 0.0.0.0:8000 --backend-range 127.0.0.1:9001-9009 \\
               --algorithm least_connections --admin 127.0.0.1:8404
  balancer run --config /etc/balancer/balancer.toml --workers auto

Signals: SIGTERM drains (open connections get `grace`, 30s), SIGINT stops at once, SIGHUP
reloads the config file. Every setting: docs/configuration.md."""

CHECK_EXAMPLES = """\
examples:
  balancer check balancer.toml
  balancer check /etc/balancer/balancer.toml && systemctl reload balancer

Exits 0 if the file is valid, 1 with one line per error otherwise."""

STATUS_EXAMPLES = """\
examples:
  balancer status
  balancer status --admin http://10.0.0.5:8404 --token "$(cat /etc/balancer/token)\""""

BACKEND_EXAMPLES = """\
examples:
  balancer backend 9001                   # answers "Hello from Server 9001!" and closes
  balancer backend 9001 --mode http       # HTTP/1.1 with keep-alive and /health
  balancer backend 0 --mode echo          # any free port; the line printed says which"""

CLIENT_EXAMPLES = """\
examples:
  balancer client --target 127.0.0.1:8000                 # 100 HTTP requests, 10 at a time
  balancer client --duration 30s --concurrency 50
  balancer client --protocol line --message "Hello" --show-responses

Exits 0 when every request succeeded, 1 otherwise."""

DEMO_EXAMPLES = """\
examples:
  balancer demo
  balancer demo --port 18000 --backend-ports 19001 19002 19003 --admin-port 18404

Ctrl-C, SIGINT or SIGTERM stops the demo and everything it started."""

BENCH_EXAMPLES = """\
examples:
  balancer bench                                   # about 3.5 minutes
  balancer bench --targets direct,haproxy,nginx,balancer,floor,cfloor --json out.json
  balancer bench --soak 60s --balancer-args="--workers 2"
  balancer bench --selection --quick"""


def _command(
    commands: Any, name: str, summary: str, description: str, examples: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=examples,
        formatter_class=_Formatter,
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="balancer",
        description="A TCP (layer 4) load balancer: weighted algorithms, health checks,\n"
        "retries, access logs, metrics, a dashboard and an admin API.",
        epilog="Run `balancer COMMAND --help` for a command's flags and examples.",
        formatter_class=_Formatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(
        commands,
        "run",
        "run the balancer",
        "Run the balancer: from a config file (--config), or one service described by flags.",
        RUN_EXAMPLES,
    )
    run.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file; with it, only --log-*, --workers and --admin* may be given",
    )
    run.add_argument(
        "--listen",
        type=_flag_type(_listen_address),
        metavar="HOST:PORT",
        help="address to listen on; port 0 takes any free port (default: 0.0.0.0:8000)",
    )
    run.add_argument(
        "--backend",
        action="append",
        type=_flag_type(backend_flag),
        default=[],
        metavar="HOST:PORT[,weight=N]",
        help=f"a backend server, weight 1-{MAX_WEIGHT} (default: 1); repeat for more",
    )
    run.add_argument(
        "--backend-range",
        type=_flag_type(range_flag),
        metavar="HOST:FIRST-LAST",
        help="discover backends on a port range: a port takes traffic once a health check "
        "finds it listening",
    )
    run.add_argument(
        "--algorithm",
        type=_flag_type(_algorithm),
        metavar="NAME",
        help="round_robin, least_connections, random, power_of_two, source_hash, or a "
        "dotted path to your own class (default: round_robin)",
    )
    run.add_argument(
        "--name",
        type=_flag_type(check_service_name),
        default="default",
        help="the service's name in logs, metrics and the API",
    )
    run.add_argument(
        "--workers",
        type=_flag_type(parse_workers),
        metavar="N",
        help="worker processes sharing the ports; auto: one per CPU (default: 1, or the "
        "config file's)",
    )
    run.add_argument(
        "--admin",
        type=_flag_type(_listen_address),
        metavar="HOST:PORT",
        help="serve the admin API, metrics and dashboard here; a non-loopback address needs "
        "a token (default: off, or the config file's [admin])",
    )
    run.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help="bearer token for the admin API (default: BALANCER_ADMIN_TOKEN from the "
        "environment, else the config file's)",
    )
    run.add_argument(
        "--log-file",
        metavar="PATH",
        help='access and event log; "" for none (default: load_balancer.log)',
    )
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text (key=value) or json, one object per line (default: text)",
    )
    run.add_argument(
        "--connect-timeout",
        type=_flag_type(_positive_duration),
        metavar="DURATION",
        help="per connect attempt, as 500ms or 3s (default: 3s)",
    )
    run.add_argument(
        "--idle-timeout",
        type=_flag_type(_positive_duration),
        metavar="DURATION",
        help="a connection with no bytes either way for this long is closed (default: 5m)",
    )
    run.add_argument(
        "--retries",
        type=_flag_type(non_negative_int),
        metavar="N",
        help="other backends tried after a failed connect (default: 3)",
    )
    run.add_argument(
        "--no-backend-message",
        metavar="TEXT",
        help="sent to a client when no backend can be reached, before closing (default: "
        "nothing, just a close)",
    )
    run.add_argument(
        "--no-health-check",
        action="store_true",
        help="turn off active health checks (default: TCP checks every 2s)",
    )

    check = _command(
        commands,
        "check",
        "validate a config file",
        "Validate a config file without running it: every bad key and value is listed.",
        CHECK_EXAMPLES,
    )
    check.add_argument("file", metavar="FILE", help="the TOML config file")

    status = _command(
        commands,
        "status",
        "show services and backends from the admin API",
        "Print the admin API's view of every service and backend as a table.",
        STATUS_EXAMPLES,
    )
    status.add_argument(
        "--admin",
        default="http://127.0.0.1:8404",
        metavar="URL",
        help="the admin API's address",
    )
    status.add_argument(
        "--token",
        default=os.environ.get("BALANCER_ADMIN_TOKEN"),
        help="admin API token (default: BALANCER_ADMIN_TOKEN from the environment)",
    )

    backend = _command(
        commands,
        "backend",
        "run a demo backend server",
        "Run a demo backend server on 127.0.0.1, to balance over.",
        BACKEND_EXAMPLES,
    )
    backend.add_argument(
        "port", type=_flag_type(_any_port), help="port to listen on; 0 takes any free port"
    )
    backend.add_argument(
        "--mode",
        choices=("hello", "echo", "http"),
        default="hello",
        help="hello: answer `Hello from Server PORT!` and close; echo: send back every byte "
        "until EOF; http: HTTP/1.1 with keep-alive, / greets and /health answers ok",
    )
    backend.add_argument(
        "--delay",
        type=float,
        default=0.0,
        metavar="MS",
        help="milliseconds to wait before each answer (default: 0, none)",
    )
    backend.add_argument("--host", default="127.0.0.1", help="address to listen on")
    backend.add_argument(
        "--accept-proxy",
        action="store_true",
        help="expect a PROXY protocol header (v1 or v2) and print the client it names "
        "(default: off)",
    )

    client = _command(
        commands,
        "client",
        "generate load and report on it",
        "Open one connection per request, send it, read the answer to the end, and report "
        "successes, failures by kind, each backend's share and latency percentiles.",
        CLIENT_EXAMPLES,
    )
    client.add_argument(
        "--target",
        type=_flag_type(parse_address),
        default=Address("127.0.0.1", 8000),
        metavar="HOST:PORT",
        help="where to send the requests: the balancer, or a backend directly",
    )
    client.add_argument(
        "--protocol",
        choices=("http", "line"),
        default="http",
        help="http: GET PATH, success is an answer below 500 (the demo's backends, nginx, "
        "any web server); line: send --message, success is any answer (server.py's)",
    )
    client.add_argument(
        "--path", default="/", help="the path an http request asks for (--protocol http)"
    )
    client.add_argument(
        "--concurrency",
        type=_flag_type(positive_int),
        default=10,
        metavar="N",
        help="requests in flight at once",
    )
    amount = client.add_mutually_exclusive_group()
    amount.add_argument(
        "--requests",
        type=_flag_type(positive_int),
        metavar="N",
        help="how many requests in all (default: 100, unless --duration is given)",
    )
    amount.add_argument(
        "--duration",
        type=_flag_type(_positive_duration),
        metavar="DURATION",
        help="send requests for this long instead, as 30s or 2m",
    )
    client.add_argument(
        "--message",
        default="Hello from client",
        help="what a line request sends (--protocol line)",
    )
    client.add_argument(
        "--show-responses",
        action="store_true",
        help="print each answer as it arrives (default: a progress bar on a terminal)",
    )

    demo = _command(
        commands,
        "demo",
        "start three demo backends, a balancer and its dashboard",
        "Start three HTTP demo backends and a balancer in front of them with its dashboard, "
        "print their addresses, and run until stopped.",
        DEMO_EXAMPLES,
    )
    port = _flag_type(_port)
    demo.add_argument("--port", type=port, default=8000, help="the balancer's port")
    demo.add_argument(
        "--backend-ports",
        type=port,
        nargs=3,
        default=[9001, 9002, 9003],
        metavar="PORT",
        help="the three backends' ports",
    )
    demo.add_argument(
        "--admin-port",
        type=port,
        default=8404,
        metavar="PORT",
        help="the admin API's and dashboard's port",
    )

    bench = _command(
        commands,
        "bench",
        "benchmark against HAProxy, nginx stream and direct, on 127.0.0.1",
        "Benchmark the balancer against HAProxy and nginx stream on this machine, in "
        "interleaved runs, and print medians and ratios (docs/performance.md).",
        BENCH_EXAMPLES,
    )
    from balancer.tools.bench.options import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
    return parser


def config_from_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Config:
    if args.config:
        mixed = [
            flag
            for flag, value in (
                ("--listen", args.listen),
                ("--backend", args.backend),
                ("--backend-range", args.backend_range),
                ("--algorithm", args.algorithm),
                ("--name", args.name != "default"),
                ("--connect-timeout", args.connect_timeout),
                ("--idle-timeout", args.idle_timeout),
                ("--retries", args.retries is not None),
                ("--no-backend-message", args.no_backend_message is not None),
                ("--no-health-check", args.no_health_check),
            )
            if value
        ]
        if mixed:
            parser.error(f"{', '.join(mixed)} cannot be combined with --config")
        from balancer.control.app import read_config

        config = read_config(args.config)
        log = LogConfig(
            file=args.log_file if args.log_file is not None else config.log.file,
            format=args.log_format or config.log.format,
        )
        return Config(
            services=config.services,
            log=log,
            admin=_admin_from_flags(args, config.admin),
            workers=args.workers or config.workers,
            grace=config.grace,
        )
    if not args.backend and not args.backend_range:
        parser.error(
            "no backends: give --backend HOST:PORT (repeatable), --backend-range or --config"
        )
    if args.backend_range and args.no_health_check:
        parser.error(
            "--backend-range cannot be combined with --no-health-check: discovered backends "
            "start down and only a passed health check brings one up, so none would ever take "
            "a connection"
        )
    seen = set()
    for backend in args.backend:
        if backend.address in seen:
            parser.error(f"argument --backend: duplicate backend {backend.address}")
        seen.add(backend.address)
    defaults = Timeouts()
    message = args.no_backend_message
    service = ServiceConfig(
        name=args.name,
        listen=args.listen or parse_address("0.0.0.0:8000"),
        backends=tuple(args.backend),
        algorithm=args.algorithm or "round_robin",
        discover=args.backend_range,
        timeouts=Timeouts(
            connect=args.connect_timeout or defaults.connect,
            idle=args.idle_timeout or defaults.idle,
        ),
        health_check=HealthCheckConfig(enabled=not args.no_health_check),
        retries=3 if args.retries is None else args.retries,
        no_backend_message=message.encode() if message else None,
    )
    return Config(
        services=(service,),
        log=LogConfig(
            file=args.log_file if args.log_file is not None else LogConfig.file,
            format=args.log_format or "text",
        ),
        admin=_admin_from_flags(args, AdminConfig()),
        workers=args.workers or 1,
    )


def _admin_from_flags(args: argparse.Namespace | None, admin: AdminConfig) -> AdminConfig:
    """The admin settings: flags first, then BALANCER_ADMIN_TOKEN, then the config file."""
    flag_token = args.admin_token if args is not None else None
    token = flag_token or os.environ.get("BALANCER_ADMIN_TOKEN") or admin.token
    return AdminConfig(
        listen=(args.admin if args is not None else None) or admin.listen, token=token
    )


def _check(path: str) -> int:
    from balancer.admin.security import is_loopback
    from balancer.control.app import read_config

    config = read_config(path)
    admin = _admin_from_flags(None, config.admin)
    if admin.listen is not None and not admin.token and not is_loopback(admin.listen.host):
        # (`run` may still be given one by --admin-token: a warning, not an error)
        print(
            f"{path}: warning: admin.listen: the admin API on non-loopback address "
            f"{admin.listen} needs a token, and the file gives none: `run` refuses to start "
            "unless --admin-token or BALANCER_ADMIN_TOKEN gives one",
            file=sys.stderr,
        )
    print(f"{path}: ok, {len(config.services)} service(s)")
    return 0


def _backend(args: argparse.Namespace) -> int:
    from balancer.tools.demo.backend import serve

    try:
        asyncio.run(serve(args.port, args.mode, args.delay, args.host, args.accept_proxy))
    except OSError as exc:
        print(
            f"balancer backend: cannot listen on port {args.port}: {exc.strerror}", file=sys.stderr
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.file)
        if args.command == "run":
            from balancer.control.app import run

            return run(config_from_flags(args, parser), args.config)
        if args.command == "backend":
            return _backend(args)
        if args.command == "status":
            from balancer.admin.status import main as status

            url = args.admin if "://" in args.admin else f"http://{args.admin}"
            return status(url, args.token)
        if args.command == "demo":
            from balancer.tools.demo.run import main as demo

            return demo(args.port, tuple(args.backend_ports), admin=args.admin_port)
        if args.command == "bench":
            from balancer.tools.bench.harness import run as bench

            return bench(args)
        if args.command == "client":
            from balancer.tools.demo import client

            return client.main(
                args.target,
                concurrency=args.concurrency,
                requests=args.requests if args.requests or args.duration else 100,
                duration=args.duration,
                protocol=args.protocol,
                path=args.path,
                message=args.message.encode(),
                show_responses=args.show_responses,
            )
    except ConfigError as exc:
        for line in exc.errors:
            print(f"balancer: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`balancer client | head`): no traceback, and
        # none either when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    parser.error(f"unknown command {args.command!r}")
    return 2
