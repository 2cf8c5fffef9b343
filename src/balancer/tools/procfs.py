"""What /proc says of a process and its descendants: CPU time, descriptors, resident memory.

The harness measures its targets with these, and the tests count a balancer's descriptors."""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def cpu_seconds(pid: int) -> tuple[float, float]:
    """utime and stime of the process alone: user space and kernel."""
    fields = _stat_fields(pid)
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def tree_cpu_seconds(pid: int) -> tuple[float, float]:
    """utime and stime of the process and its descendants: user space and kernel."""
    user = system = 0.0
    for p in process_tree(pid):
        with suppress(OSError, ValueError, IndexError):
            one = cpu_seconds(p)
            user += one[0]
            system += one[1]
    return user, system


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
