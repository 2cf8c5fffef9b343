"""`balancer bench`: the balancer against HAProxy and nginx stream, and against no proxy at all.

Everything runs on 127.0.0.1 with ports from the OS, in a temporary directory removed afterwards:

- backends: one nginx (worker_processes 1) listening on two ports, answering `/` with
  "hello\\n" and `/big` with a 100 MiB file;
- targets: `direct` (wrk straight to one backend port), `haproxy` (mode tcp, nbthread 1,
  roundrobin), `nginx` (stream module, worker_processes 1) and `balancer` (`balancer run`,
  one process unless `--balancer-args` says otherwise), each balancing over both ports;
  and, only when asked for, `floor` (`balancer.tools.floors.floor`: the least work a relay
  written in Python can do, no features, to show how much of a gap is Python's own cost) and
  `cfloor` (the same relay in C, `floor.c`, built with the machine's C compiler: what any
  relay can reach here);
- workloads, each run against each target, interleaved run by run: keep-alive relay (wrk
  -t1 -c50), new connections (wrk -t1 -c50 with `Connection: close`), bulk download (one
  connection reading the big file), latency percentiles (wrk -t1 -c10 --latency), CPU time
  per request (the target's utime+stime over the keep-alive run), and resident memory with
  8,000 idle relayed connections (measured once per target, after the timed runs);
- or, with `--soak`, only a connection-churn soak through each relay, reporting whether it
  survived, and its descriptors and resident memory before and after;
- or, with `--selection`, only what each algorithm's rebuild and pick cost (tools.bench.selection).

The report (stdout) is a markdown table of medians plus a table of ratios; progress goes to
stderr. Missing tools are installed from Debian packages when running as root; a target whose
tool is still missing is skipped. Child processes run in their own process groups and are
killed on the way out, whatever the way out is."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from balancer.tools.bench.clients import download, hold_connections, parse_wrk
from balancer.tools.bench.configs import haproxy_conf, nginx_backend_conf, nginx_stream_conf
from balancer.tools.bench.options import (
    CLOSE_CONNECTIONS,
    HOST,
    KEEPALIVE_CONNECTIONS,
    LATENCY_CONNECTIONS,
    PAUSE,
    READY_TIMEOUT,
    SOAK_CONNECTIONS,
    SOAK_SETTLE,
    TARGETS,
    BenchError,
    Params,
    add_arguments,
    params_from_args,
)
from balancer.tools.bench.peers import Tools, find_or_install_tools
from balancer.tools.bench.processes import Children, free_ports, log, wait_ready
from balancer.tools.bench.report import Results, render, to_json
from balancer.tools.floors.build import build_cfloor
from balancer.tools.procfs import process_tree, tree_cpu_seconds, tree_fds, tree_rss_kib


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
            "rfloor": lambda port: self._start_rfloor(port, "mio"),
            "tfloor": lambda port: self._start_rfloor(port, "tokio"),
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
            "floor", [sys.executable, "-m", "balancer.tools.floors.floor", str(port), *ports]
        )

    def _start_rfloor(self, port: int, runtime: str) -> subprocess.Popen[bytes]:
        ports = [str(p) for p in self.backend_ports]
        name = "rfloor" if runtime == "mio" else "tfloor"
        module = "balancer.tools.floors.rust"
        args = [sys.executable, "-m", module, "--runtime", runtime, str(port), *ports]
        return self.children.start(name, args)

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
        from balancer.tools.bench import selection as selection_bench

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
