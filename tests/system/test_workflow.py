"""The original README's workflow, word for word, with the scripts at the repository root."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, ROOT, Process, port_open, wait_for_log, wait_until

PORTS = (9001, 9002, 9003)


def run_client(cwd: Path) -> list[str]:
    result = subprocess.run(
        [PYTHON, "client.py"], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in result.stderr, result.stderr
    answers = re.findall(r"Hello from Server (\d+)!", result.stdout)
    assert len(answers) == 10, result.stdout + result.stderr
    assert result.returncode == 0
    return answers


def test_original_workflow(tmp_path: Path) -> None:
    busy = [p for p in (8000, *PORTS) if port_open(p)]
    if busy:
        pytest.fail(f"the workflow needs ports 8000 and 9001-9003 free; in use: {busy}")
    for script in ("server.py", "client.py", "load_balancer.py"):
        shutil.copy(ROOT / script, tmp_path / script)
    shutil.copytree(ROOT / "src", tmp_path / "src")
    servers = {port: Process([PYTHON, "server.py", str(port)], cwd=tmp_path) for port in PORTS}
    balancer = None
    try:
        for server in servers.values():
            server.expect("listening")
        balancer = Process([PYTHON, "load_balancer.py"], cwd=tmp_path)
        balancer.expect(r"listening on 0\.0\.0\.0:8000")
        log = tmp_path / "load_balancer.log"
        for port in PORTS:
            wait_for_log(log, rf"event up .*backend=127\.0\.0\.1:{port}")

        assert set(run_client(tmp_path)) == {str(p) for p in PORTS}
        wait_for_log(log, r"access .*termination=backend_closed")

        servers[9002].signal(signal.SIGKILL)
        servers[9002].wait()
        # Noticed within seconds even with no traffic: the health check finds it.
        wait_for_log(log, r"event down .*backend=127\.0\.0\.1:9002", timeout=10)
        answers = run_client(tmp_path)
        assert "9002" not in answers

        servers[9002] = Process([PYTHON, "server.py", "9002"], cwd=tmp_path)
        servers[9002].expect("listening")
        wait_until(
            lambda: len(re.findall(r"event up .*backend=127\.0\.0\.1:9002", log.read_text())) >= 2,
            timeout=15,
            what="9002 up again",
        )
        assert "9002" in run_client(tmp_path)
    finally:
        if balancer is not None:
            balancer.stop()
        for server in servers.values():
            server.stop()
