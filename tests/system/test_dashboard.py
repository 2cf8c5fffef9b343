"""The live dashboard (`GET /` of the admin server) in a real headless Chromium.

Set BALANCER_SCREENSHOT=1 (or to a file path) to also keep a screenshot in the repository root
(dashboard.png) for a human to look at; the test always writes one into its tmp directory.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Cluster, exchange, free_port, require_tool, served_by, wait_until
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.timeout(90)

WAIT = 20.0  # bound for one thing to show in the page; it polls once a second

# One consistent snapshot of the page, read in a single script (no stale element races).
SNAPSHOT_JS = """
const rows = {};
for (const tr of document.querySelectorAll('tr[data-backend]')) {
  const cell = (c) => tr.querySelector('td.' + c);
  rows[tr.dataset.backend] = {
    service: tr.dataset.service,
    state: tr.dataset.state || '',
    health_text: cell('health').textContent.trim(),
    state_text: cell('state').textContent.trim(),
    active: cell('active').dataset.value || '',
    total: cell('total').dataset.value || '',
    share: cell('share').dataset.value || '',
    share_text: cell('share').textContent.trim(),
    rate_in: cell('rate-in').dataset.value || '',
  };
}
const error = document.getElementById('error');
const section = document.querySelector('section.service');
const canvas = document.querySelector('canvas.chart');
const text = (sel) => section && section.querySelector(sel)
  ? section.querySelector(sel).textContent.trim() : null;
return {
  rows: rows,
  updated: document.getElementById('updated').textContent,
  error: error.hidden ? null : error.textContent.replace(/\\s+/g, ' ').trim(),
  error_kind: error.hidden ? null : (error.dataset.kind || ''),
  service: section ? section.dataset.service : null,
  listen: text('.svc-listen'),
  algorithm: text('.svc-algorithm'),
  service_total: text('.svc-total'),
  service_queued: text('.svc-queued'),
  legend: Array.from(document.querySelectorAll('ul.legend li')).map((li) => li.dataset.backend),
  chart_max: canvas ? Number(canvas.dataset.max || 0) : 0,
};
"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,900",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        driver.set_page_load_timeout(WAIT)
        driver.set_script_timeout(WAIT)
        yield driver
    finally:
        driver.quit()


def snapshot(driver: WebDriver) -> dict[str, Any]:
    return driver.execute_script(SNAPSHOT_JS)  # type: ignore[no-any-return]


def wait_page(driver: WebDriver, check: Any, what: str) -> dict[str, Any]:
    """Wait (bounded) until `check(snapshot)` holds; return that snapshot."""
    found: dict[str, Any] = {}

    def ready() -> bool:
        found.clear()
        found.update(snapshot(driver))
        return bool(check(found))

    try:
        wait_until(ready, WAIT, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the page showed {found}") from None
    return found


def patch_state(admin: int, address: str, state: str, token: str | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{admin}/api/backends/default/{address}",
        data=json.dumps({"state": state}).encode(),
        method="PATCH",
        headers={"Content-Type": "application/json"},
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def totals(page: dict[str, Any]) -> dict[str, int]:
    return {address: int(row["total"] or 0) for address, row in page["rows"].items()}


def keep_screenshot(driver: WebDriver, tmp_path: Path) -> Path:
    path = tmp_path / "dashboard.png"
    assert driver.save_screenshot(str(path)), "Chromium took no screenshot"
    assert path.stat().st_size > 10_000
    wanted = os.environ.get("BALANCER_SCREENSHOT", "")
    if wanted and wanted != "0":
        shutil.copyfile(path, ROOT / "dashboard.png" if wanted == "1" else Path(wanted))
    return path


def test_dashboard_shows_live_backends_and_drain(
    cluster: Cluster, browser: WebDriver, tmp_path: Path
) -> None:
    ports = [cluster.backend("hello") for _ in range(3)]
    addresses = [f"127.0.0.1:{p}" for p in ports]
    admin = free_port()
    _, port = cluster.balancer(
        "--admin", f"127.0.0.1:{admin}", *[f"--backend={a}" for a in addresses]
    )

    browser.get(f"http://127.0.0.1:{admin}/")
    page = wait_page(
        browser,
        lambda p: (
            sorted(p["rows"]) == sorted(addresses)
            and all(r["health_text"] == "up" for r in p["rows"].values())
        ),
        "one healthy row per backend",
    )
    assert page["error"] is None
    assert page["service"] == "default"
    assert page["listen"] == f"127.0.0.1:{port}"
    assert page["algorithm"] == "round_robin"
    assert all(r["service"] == "default" for r in page["rows"].values())
    assert all(r["state_text"] == "enabled" for r in page["rows"].values())
    assert "Updated" in page["updated"]
    before = totals(page)

    for _ in range(30):
        assert served_by(exchange(port)) in ports

    page = wait_page(
        browser,
        lambda p: (
            sum(totals(p).values()) == sum(before.values()) + 30
            and all(r["rate_in"] for r in p["rows"].values())
            and p["chart_max"] > 0
        ),
        "30 more connections in the totals and the chart",
    )
    after = totals(page)
    shares = {a: float(r["share"]) for a, r in page["rows"].items()}
    for address in addresses:
        assert after[address] > before[address], f"{address} got no traffic: {after}"
        assert 0 < shares[address] < 1
        assert page["rows"][address]["share_text"].endswith("%")
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.01)
    assert int(page["service_total"].replace(",", "")) >= 30
    assert page["service_queued"] == "0"  # (no backend has a max_connections)
    assert sorted(page["legend"]) == sorted(addresses)

    drained = addresses[0]
    assert patch_state(admin, drained, "drain")["state"] == "drain"
    page = wait_page(
        browser,
        lambda p: (
            p["rows"][drained]["state_text"] == "draining"
            and p["rows"][drained]["state"] == "drain"
        ),
        "the drained backend shown as draining",
    )
    assert all(page["rows"][a]["state_text"] == "enabled" for a in addresses[1:])

    # New connections skip the drained backend, and the page shows it.
    for _ in range(6):
        assert served_by(exchange(port)) in ports[1:]
    page = wait_page(
        browser,
        lambda p: sum(totals(p).values()) == sum(after.values()) + 6,
        "6 more connections in the totals",
    )
    assert totals(page)[drained] == after[drained]

    keep_screenshot(browser, tmp_path)


def test_dashboard_asks_for_the_token_and_keeps_it(cluster: Cluster, browser: WebDriver) -> None:
    backend = f"127.0.0.1:{cluster.backend('hello')}"
    admin = free_port()
    cluster.balancer(
        "--admin", f"127.0.0.1:{admin}", "--admin-token", "s3cret", f"--backend={backend}"
    )
    url = f"http://127.0.0.1:{admin}/"

    browser.get(url)  # the page itself is public; its API calls are not
    page = wait_page(browser, lambda p: p["error_kind"] == "auth", "a request for the token")
    assert "#token=" in page["error"] and not page["rows"]

    browser.get(url + "#token=wrong")
    page = wait_page(
        browser, lambda p: p["error"] and "rejected" in p["error"], "the wrong token rejected"
    )

    # The token typed into the form is used at once.
    browser.find_element(By.ID, "token-input").send_keys("s3cret")
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    wait_page(
        browser,
        lambda p: list(p["rows"]) == [backend] and p["error"] is None,
        "the backend row once the token is given",
    )

    # From the fragment: stored for the tab, dropped from the address bar, kept on reload.
    browser.execute_script("sessionStorage.clear()")
    browser.get(url + "#token=s3cret")
    wait_page(browser, lambda p: list(p["rows"]) == [backend] and p["error"] is None, "rows")
    assert "s3cret" not in browser.current_url
    browser.refresh()
    wait_page(
        browser,
        lambda p: list(p["rows"]) == [backend] and p["error"] is None,
        "rows again after a reload, with the token from sessionStorage",
    )
