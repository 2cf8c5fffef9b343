"""`balancer status`: the admin API's view of services and backends, as a terminal table."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console
from rich.table import Table


def fetch(url: str, token: str | None, timeout: float = 5.0) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def render(stats: dict[str, Any], console: Console) -> None:
    for service in stats["services"]:
        total = sum(b["total"] for b in service["backends"]) or 1
        table = Table(
            title=f"service {service['name']} on {service['listen']} ({service['algorithm']}), "
            f"{service['active']} open, {service['total']} connections"
            + (f", {service['queued']} queued" if service["queued"] else "")
            + (", PANIC" if service["panic"] else ""),
            title_justify="left",
        )
        for column in ("backend", "health", "state", "weight", "active", "total", "share",
                       "in", "out", "failures", "p50 ms", "p99 ms", "last change"):  # fmt: skip
            table.add_column(
                column, justify="left" if column in ("backend", "last change") else "right"
            )
        for b in service["backends"]:
            health = "[green]up[/]" if b["health"] == "up" else "[red]down[/]"
            state = b["state"] if b["state"] == "enabled" else f"[yellow]{b['state']}[/]"
            table.add_row(
                b["address"], health, state, str(b["weight"]), str(b["active"]), str(b["total"]),
                f"{100.0 * b['total'] / total:.1f}%", _bytes(b["bytes_in"]), _bytes(b["bytes_out"]),
                str(b["failures"]), _ms(b["duration_ms"]["p50"]), _ms(b["duration_ms"]["p99"]),
                b["last_change"],
            )  # fmt: skip
        console.print(table)


def main(url: str, token: str | None) -> int:
    base = url.rstrip("/")
    try:
        stats = fetch(f"{base}/api/stats", token)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("error", exc.reason)
        except (ValueError, AttributeError):
            message = exc.reason
        print(f"balancer status: {base}: HTTP {exc.code}: {message}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"balancer status: cannot reach the admin API at {base}: {reason}", file=sys.stderr)
        return 1
    console = Console() if sys.stdout.isatty() else Console(width=200)
    render(stats, console)
    return 0
