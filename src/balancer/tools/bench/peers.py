"""The peers the harness compares with, HAProxy and nginx, and its load generator wrk: found,
or installed from Debian's packages when running as root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from balancer.tools.bench.options import SBIN_PATH, STREAM_MODULE
from balancer.tools.bench.processes import log


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
