"""The report: a markdown table of medians and one of ratios, or the soak's table; and JSON."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from balancer.tools.bench.options import (
    CLOSE_CONNECTIONS,
    DEFAULT_TARGETS,
    KEEPALIVE_CONNECTIONS,
    LATENCY_CONNECTIONS,
    SOAK_CONNECTIONS,
    SOAK_SETTLE,
    TARGETS,
    Params,
)


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
    ("rfloor", "haproxy"),
    ("rfloor", "cfloor"),
    ("balancer", "rfloor"),
    ("tfloor", "haproxy"),
    ("tfloor", "cfloor"),
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
        *(
            ["- rfloor: the same relay in Rust on mio, one loop (`rust/src/floor.rs`)"]
            if "rfloor" in params.targets
            else []
        ),
        *(
            ["- tfloor: the same relay in Rust on tokio's current-thread runtime"]
            if "tfloor" in params.targets
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
