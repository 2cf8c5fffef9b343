"""`balancer demo` (what `make run` starts) as a newcomer meets it: the command it suggests works
against it, and a signal to the demo process alone stops all it started."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, Process, free_port, port_open, wait_until

from balancer.tools.procfs import process_tree


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell's background job starts


def start_demo(tmp_path: Path) -> tuple[Process, list[int]]:
    ports = [free_port() for _ in range(5)]
    args = [PYTHON, "-m", "balancer", "demo", "--port", str(ports[0]), "--backend-ports"]
    args += [*map(str, ports[1:4]), "--admin-port", str(ports[4])]
    demo = Process(args, cwd=tmp_path, preexec_fn=ignore_sigint)
    demo.expect("Ctrl-C stops everything", timeout=30)
    return demo, ports


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_demo_alone_stops_everything_it_started(
    tmp_path: Path, sig: signal.Signals
) -> None:
    demo, ports = start_demo(tmp_path)
    try:
        started = process_tree(demo.proc.pid)
        assert len(started) == 5, started  # the demo, three backends, the balancer
        assert all(port_open(p) for p in ports)
        os.kill(demo.proc.pid, sig)  # (the process alone, not its group)
        assert demo.wait(timeout=20) == 0
        wait_until(
            lambda: not any(Path(f"/proc/{pid}").exists() for pid in started),
            timeout=15,
            what="every process the demo started to exit",
        )
        assert not any(port_open(p) for p in ports)
    finally:
        demo.stop()
        for pid in process_tree(demo.proc.pid)[1:]:
            os.kill(pid, signal.SIGKILL)


def test_the_suggested_client_command_succeeds_against_the_demo(tmp_path: Path) -> None:
    demo, ports = start_demo(tmp_path)
    try:
        match = re.search(r"^\s+(\S.* client --target 127\.0\.0\.1:\d+)$", demo.text, re.M)
        assert match, demo.text
        command = shlex.split(match.group(1))
        if command[0] == "balancer":  # (on PATH when the venv is active; here it is not)
            command[:1] = [PYTHON, "-m", "balancer"]
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "succeeded: 100  failed: 0 (none)" in done.stdout, done.stdout
        shares = dict(re.findall(r"Server (\d+): (\d+)", done.stdout))
        assert set(shares) == {str(p) for p in ports[1:4]}, done.stdout
        # The demo's log has one access line per request (written at least every 0.5 s).
        log = tmp_path / "load_balancer.log"
        wait_until(
            lambda: len(re.findall(r" access service=web ", log.read_text())) >= 100,
            what="100 access lines",
        )
    finally:
        demo.signal(signal.SIGTERM)
        demo.wait(timeout=20)
        demo.stop()
