"""The metrics reference matches what a running balancer serves: every metric, its type and
its labels, both ways."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from conftest import Cluster, exchange, free_port, wait_until

DOCS = Path(__file__).resolve().parents[2] / "docs"


def documented() -> dict[str, tuple[str, set[str]]]:
    rows = re.findall(
        r"^\| `(balancer_\w+)` \| (\w+) \| ([^|]*) \|", (DOCS / "metrics.md").read_text(), re.M
    )
    return {name: (kind, set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def served(text: str) -> dict[str, tuple[str, set[str]]]:
    kinds = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    labels: dict[str, set[str]] = {name: set() for name in kinds}
    for sample, given in re.findall(r"^(\w+)\{([^}]*)\}", text, re.M):
        family = next(
            n
            for n in kinds
            if sample == n or sample.removeprefix(n) in ("_bucket", "_count", "_sum")
        )
        labels[family] |= set(re.findall(r"(\w+)=", given)) - {"le"}
    return {name: (kind, labels[name]) for name, kind in kinds.items()}


def test_every_metric_is_documented_with_its_type_and_labels(cluster: Cluster) -> None:
    echo = cluster.backend("echo")
    admin = free_port()
    _, port = cluster.balancer("--admin", f"127.0.0.1:{admin}", f"--backend=127.0.0.1:{echo}")
    assert exchange(port, b"x", half_close=True) == b"x"

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            text: str = r.read().decode()
        # (the connection's figures are in once its access line is: wait for its duration)
        return text if "balancer_connection_duration_seconds_count" in text else ""

    metrics = served(wait_until(scrape, what="a scrape with the connection's figures"))
    docs = documented()
    assert set(metrics) == set(docs), set(metrics) ^ set(docs)
    for name, (kind, labels) in metrics.items():
        assert docs[name][0] == kind, f"{name}: served as a {kind}, documented as {docs[name][0]}"
        if labels:  # (a family with no sample yet shows no labels)
            assert labels == docs[name][1], f"{name}: labels {labels}, documented {docs[name][1]}"
    assert all(
        metrics[name][1] for name in ("balancer_backend_up", "balancer_service_connections_total")
    )
