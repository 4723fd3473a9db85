"""The status page in a real headless browser (Debian's chromium, driven by selenium through
Debian's chromium-driver), served by the real `creditwatch run` over a stored history with
rollups: its figures are those of `status --json`, its chart has one point per stored reading
(or rollup point) in the span, the browser makes no request beyond 127.0.0.1 and logs no
console error, and at 390 px wide nothing scrolls sideways.

The screenshot it takes is the README's: `CREDITWATCH_UPDATE_SCREENSHOT=1` writes it to
docs/status-page.png (otherwise it stays in the test's tmp_path).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import RunCli, StartCli
from fakes import FakeOpenRouter, WebhookReceiver, key_item, write_settings
from history import latest, seed, stored, usage_after
from prom import free_port

from worker import db
from worker.formatting import hours_text, money, rate

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

KEY = "sk-or-v1-statuspage-browser-0014"
REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# .ci/run installs both (and the lock file selenium): under CI this test never skips.
needs_chromium = pytest.mark.skipif(
    (CHROMIUM is None or CHROMEDRIVER is None) and not os.environ.get("CI"),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
# The flags this machine's closed network needs (no background requests to Google's hosts).
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage")
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chrome]:
    from selenium import webdriver  # lazy: only this test needs it
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    # The page's network events and console messages, read back with get_log.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER or "/usr/bin/chromedriver",
                      log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def rounded(doc: Any) -> Any:
    """Floats to 6 places: two reads a moment apart may differ in a least-squares slope's last bits."""
    if isinstance(doc, float):
        return round(doc, 6)
    if isinstance(doc, dict):
        return {k: rounded(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [rounded(v) for v in doc]
    return doc


def vertices(driver: Chrome) -> int:
    """Points of the balance line: its path's moveto and lineto commands (path simplification is off)."""
    path = driver.execute_script("return document.querySelector('#chart-balance > path').getAttribute('d')")
    return len(re.findall(r"[ML]", path))


def requested_urls(driver: Chrome) -> list[str]:
    """Every URL the page asked for since the last call, from the browser's network events."""
    urls = []
    for entry in driver.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        if event["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            params = event["params"]
            urls.append(params.get("request", {}).get("url") or params.get("url", ""))
    return urls


def png_size(image: bytes) -> tuple[int, int]:
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", image[16:24])
    return int(width), int(height)


@needs_chromium
def test_the_status_page_in_a_real_browser(tmp_path: Path, fake_api: FakeOpenRouter, webhook: WebhookReceiver,
                                            start_cli: StartCli, run_cli: RunCli, browser: Chrome) -> None:
    url = f"sqlite:///{tmp_path}/cw.db"
    now = db.now_utc()
    end = now - timedelta(minutes=1)
    seed(url, end)  # 10 days: 3 of raw readings every 5 minutes, hourly rollups before
    fake_api.set_balance(150.0, usage_after(end, now + timedelta(seconds=3)))
    fake_api.add_keys(key_item("batch-nightly", usage_daily=7.5), key_item("web-app", usage_daily=2.1),
                      key_item("ci-runner", limit=10.0, usage_daily=1.2))
    port = free_port()
    config = write_settings(tmp_path, f"""
        [openrouter]
        base_url = "{fake_api.base_url}"
        timeout = "1s"

        [schedule]
        interval = "5m"

        [database]
        url = "{url}"
        timeout = "2s"

        [server]
        listen = "127.0.0.1:{port}"

        [[channels]]
        name = "ops"
        url = "{webhook.apprise_url()}"

        [[rules]]
        name = "low-balance"
        type = "threshold"
        below = 50.0
        severity = "critical"

        [[rules]]
        name = "batch-spend"
        type = "key_spend"
        period = "day"
        above = 5.0
        keys = ["batch-*"]
        """)
    proc = start_cli("run", config=config, env={"OPENROUTER_API_KEY": KEY})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:  # until the first tick has stored its reading and delivered its two alerts
        try:
            api = get_json(f"{base}/api/status")
            if api["fetched_at"] and api["fetched_at"] > end.strftime("%Y-%m-%dT%H:%M:%SZ") \
                    and not api["outbox"] and len(webhook.messages) >= 2:
                break
        except OSError:
            pass  # not listening yet
        assert time.monotonic() < deadline, "the first tick did not show on /api/status"
        time.sleep(0.2)
    status = run_cli("status", "--json", config=config)
    assert status.code == 0, status.stderr
    doc = json.loads(status.stdout)
    assert rounded(get_json(f"{base}/api/status")) == rounded(doc)  # the JSON twin is the same document

    from selenium.webdriver.common.by import By  # lazy: only this test needs selenium

    browser.get(f"{base}/")
    section = f'section[data-account="{doc["account"]}"]'

    def field(name: str, attribute: str = "textContent") -> str:
        element = browser.find_element(By.CSS_SELECTOR, f'{section} [data-field="{name}"]')
        return str(element.get_attribute(attribute)).strip()

    # The figures are those of `status --json`.
    assert field("remaining") == money(doc["remaining"])
    assert field("burn_rate") == rate(doc["burn_rate_per_hour"])
    assert field("runway") == hours_text(doc["runway_hours"])
    assert field("fetched_at", "datetime") == doc["fetched_at"]
    assert field("last_fetch") == "ok" and doc["last_fetch"]["ok"] is True
    firing = [li.get_attribute("data-rule")
              for li in browser.find_elements(By.CSS_SELECTOR, f"{section} li[data-status=firing]")]
    assert sorted(firing) == sorted(a["rule"] for a in doc["alerts"]) == ["batch-spend", "low-balance"]
    keys = browser.execute_script(f"return [...document.querySelectorAll('{section} li[data-key]')]"
                                  ".map(li => [li.dataset.key, li.querySelector('b').textContent])")
    listed = sorted(doc["accounts"][0]["keys"], key=lambda k: -k["usage_daily"])
    assert [k for k, _ in keys] == [k["id"] for k in listed]
    assert keys[0][1].startswith("batch-nightly (sk-or-v1-")
    channels = browser.execute_script("return [...document.querySelectorAll('li[data-channel]')]"
                                      ".map(li => li.textContent)")
    assert channels == ["ops: all delivered"]

    # One point per stored reading in the span: raw readings over 24h...
    last = latest(url)
    assert last is not None and doc["fetched_at"] == last.fetched_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    day = stored(url, last.fetched_at - timedelta(hours=24), last.fetched_at)
    assert vertices(browser) == len(day) == int(field_attr(browser, "figure.chart", "data-points"))
    assert 285 <= len(day) <= 290
    # ...and rollup points (first and last of each hour) past the raw data over 7 days.
    browser.get(f"{base}/?span=7d")
    week = stored(url, last.fetched_at - timedelta(days=7), last.fetched_at)
    assert vertices(browser) == len(week) == int(field_attr(browser, "figure.chart", "data-points"))
    raw = [r for r in week if r.fetched_at >= end - timedelta(days=3)]
    assert len(week) > len(raw) + 4 * 24  # the 4 days before the raw data are there, from rollups

    # At a phone's width nothing scrolls sideways and the chart fits.
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    browser.get(f"{base}/")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 390
    assert browser.execute_script("return document.querySelector('figure.chart svg')"
                                  ".getBoundingClientRect().right") <= 390
    assert KEY not in browser.page_source
    # The charts were drawn in child processes: matplotlib never entered the service.
    assert "matplotlib" not in Path(f"/proc/{proc.pid}/maps").read_text()

    # Nothing was asked of anywhere but this server, and the console stayed clean.
    urls = requested_urls(browser)
    assert f"{base}/" in urls and f"{base}/?span=7d" in urls
    # chrome:// (the browser's own start page) and data: never reach a network; anything else must.
    network = [u for u in urls if u.split(":", 1)[0] not in ("chrome", "data", "about", "blob")]
    assert [u for u in network if not u.startswith(f"{base}/")] == []
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**PHONE, "height": height})
    shot = base64.b64decode(browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})["data"])
    assert png_size(shot)[0] == 2 * 390
    (tmp_path / "status-page.png").write_bytes(shot)
    if os.environ.get("CREDITWATCH_UPDATE_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        (REPO / "docs" / "status-page.png").write_bytes(shot)
    assert proc.stop().code == 0


def field_attr(driver: Chrome, selector: str, attribute: str) -> str:
    script = f"return document.querySelector('{selector}').getAttribute('{attribute}')"
    return str(driver.execute_script(script))
