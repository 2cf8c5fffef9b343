"""The `balancer` command: run, check, backend, client."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

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
    check_algorithm,
    check_service_name,
    load_config,
    parse_address,
    parse_duration,
    parse_port_range,
    parse_workers,
)


def _flag_type(convert: Callable[[str], T]) -> Callable[[str], T]:
    """Wrap a parser so argparse reports its ValueError under the flag's name."""

    def wrapped(text: str) -> T:
        try:
            return convert(text)
        except (ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    wrapped.__name__ = getattr(convert, "__name__", "value")
    return wrapped


T = TypeVar("T")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="balancer", description="A TCP (layer 4) load balancer.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the balancer")
    run.add_argument("--config", metavar="FILE", help="TOML config file")
    run.add_argument(
        "--listen",
        type=_flag_type(lambda t: parse_address(t, allow_zero_port=True)),
        metavar="HOST:PORT",
        help="address to listen on (default 0.0.0.0:8000)",
    )
    run.add_argument(
        "--backend",
        action="append",
        type=_flag_type(backend_flag),
        default=[],
        metavar="HOST:PORT[,weight=N]",
        help="a backend server; repeat for more",
    )
    run.add_argument(
        "--backend-range",
        type=_flag_type(range_flag),
        metavar="HOST:FIRST-LAST",
        help="discover backends on a port range; ports that answer checks take traffic",
    )
    run.add_argument(
        "--algorithm",
        type=_flag_type(check_algorithm),
        metavar="NAME",
        help="round_robin (default), least_connections, random, power_of_two, source_hash, "
        "or a dotted path to your own class",
    )
    run.add_argument(
        "--name",
        type=_flag_type(check_service_name),
        default="default",
        help="service name (default: default)",
    )
    run.add_argument(
        "--workers",
        type=_flag_type(parse_workers),
        metavar="N",
        help="worker processes sharing the ports (default 1; auto = one per CPU)",
    )
    run.add_argument(
        "--admin",
        type=_flag_type(lambda t: parse_address(t, allow_zero_port=True)),
        metavar="HOST:PORT",
        help="serve the admin API, metrics and dashboard here (loopback unless a token is set)",
    )
    run.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help="bearer token for the admin API (or BALANCER_ADMIN_TOKEN in the environment)",
    )
    run.add_argument("--log-file", metavar="PATH", help="log file (default load_balancer.log)")
    run.add_argument("--log-format", choices=("text", "json"))
    run.add_argument("--connect-timeout", type=_flag_type(_positive_duration), metavar="DURATION")
    run.add_argument("--idle-timeout", type=_flag_type(_positive_duration), metavar="DURATION")
    run.add_argument(
        "--retries",
        type=_flag_type(non_negative_int),
        metavar="N",
        help="connect attempts on other backends after a failed one (default 3)",
    )
    run.add_argument(
        "--no-backend-message",
        metavar="TEXT",
        help="sent to a client when no backend can be reached, before closing",
    )
    run.add_argument("--no-health-check", action="store_true", help="turn off active health checks")

    check = commands.add_parser("check", help="validate a config file")
    check.add_argument("file", metavar="FILE")

    backend = commands.add_parser("backend", help="run a demo backend server")
    backend.add_argument(
        "port",
        type=_flag_type(lambda t: parse_address(f"127.0.0.1:{t}", allow_zero_port=True).port),
    )
    backend.add_argument("--mode", choices=("hello", "echo", "http"), default="hello")
    backend.add_argument("--delay", type=float, default=0.0, metavar="MS")
    backend.add_argument("--host", default="127.0.0.1")
    backend.add_argument(
        "--accept-proxy",
        action="store_true",
        help="expect a PROXY protocol header (v1 or v2) and print the client it names",
    )

    client = commands.add_parser("client", help="generate load and report on it")
    client.add_argument(
        "--target", type=_flag_type(parse_address), default=parse_address("127.0.0.1:8000")
    )
    client.add_argument("--concurrency", type=_flag_type(positive_int), default=10)
    amount = client.add_mutually_exclusive_group()
    amount.add_argument("--requests", type=_flag_type(positive_int))
    amount.add_argument("--duration", type=_flag_type(_positive_duration), metavar="S")
    client.add_argument("--message", default="Hello from client")
    client.add_argument(
        "--show-responses", action="store_true", help="print each response as it arrives"
    )
    status = commands.add_parser("status", help="show services and backends from the admin API")
    status.add_argument("--admin", default="http://127.0.0.1:8404", metavar="URL")
    status.add_argument(
        "--token", default=os.environ.get("BALANCER_ADMIN_TOKEN"), help="admin API token"
    )

    demo = commands.add_parser("demo", help="start three demo backends and a balancer")
    port = _flag_type(lambda t: parse_address(f"127.0.0.1:{t}").port)
    demo.add_argument("--port", type=port, default=8000, help="the balancer's port")
    demo.add_argument(
        "--backend-ports", type=port, nargs=3, default=[9001, 9002, 9003], metavar="PORT"
    )
    demo.add_argument("--admin-port", type=port, default=8404, metavar="PORT")

    bench = commands.add_parser(
        "bench", help="benchmark against HAProxy, nginx stream and direct, on 127.0.0.1"
    )
    from balancer.bench import add_arguments as add_bench_arguments

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
        config = load_config(args.config)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            config = load_config(args.file)
            admin = _admin_from_flags(None, config.admin)
            if admin.listen is not None and not admin.token:
                from balancer.admin import is_loopback

                if not is_loopback(admin.listen.host):
                    # (`run` may still be given one by --admin-token: a warning, not an error)
                    print(
                        f"{args.file}: warning: admin.listen: the admin API on non-loopback "
                        f"address {admin.listen} needs a token, and the file gives none: "
                        "`run` refuses to start unless --admin-token or BALANCER_ADMIN_TOKEN "
                        "gives one",
                        file=sys.stderr,
                    )
            print(f"{args.file}: ok, {len(config.services)} service(s)")
            return 0
        if args.command == "run":
            from balancer.app import run

            return run(config_from_flags(args, parser), args.config)
        if args.command == "backend":
            from balancer.demo.backend import serve

            try:
                asyncio.run(serve(args.port, args.mode, args.delay, args.host, args.accept_proxy))
            except OSError as exc:
                print(
                    f"balancer backend: cannot listen on port {args.port}: {exc.strerror}",
                    file=sys.stderr,
                )
                return 1
            return 0
        if args.command == "status":
            from balancer.status import main as status

            url = args.admin if "://" in args.admin else f"http://{args.admin}"
            return status(url, args.token)
        if args.command == "demo":
            from balancer.demo.run import main as demo

            return demo(args.port, tuple(args.backend_ports), admin=args.admin_port)
        if args.command == "bench":
            from balancer.bench import run as bench

            return bench(args)
        if args.command == "client":
            from balancer.demo import client

            return client.main(
                args.target,
                args.concurrency,
                args.requests if args.requests or args.duration else 100,
                args.duration,
                args.message.encode(),
                args.show_responses,
            )
    except ConfigError as exc:
        for line in exc.errors:
            print(f"balancer: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command!r}")
    return 2
