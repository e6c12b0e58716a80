"""End to end: `serve` in a subprocess on a free loopback port, the page driven in headless Chromium.

Chromium comes from Debian (`apt-get install -y chromium`, done by scripts/setup.sh); Playwright only
drives it and never downloads a browser. As root (CI) a missing /usr/bin/chromium is a failure; without
root it is a skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STARTUP_TIMEOUT_S = 240


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing; install it with `apt-get update && apt-get install -y chromium`"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.fail(message + " (running as root, so the browser test must not be skipped)")
    pytest.skip(message + " (not root, cannot install it here)")


@pytest.fixture(scope="module")
def server(api_env, tmp_path_factory):
    """`python -m esi.api.cli serve ...` on 127.0.0.1:<free port>; yields the base URL."""
    from retrieval.service import ServiceError, free_port, start_service, stop_service

    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    command = [sys.executable, "-m", "esi.api.cli", "serve", "--model", str(api_env.model_dir),
               "--store", str(api_env.store_dir), "--collection", "ecg", "--text-collection", "texts",
               "--knowledge-store", str(api_env.knowledge_dir), "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning"]
    base = f"http://127.0.0.1:{port}"
    try:
        process = start_service(command, f"{base}/api/health", tmp_path_factory.mktemp("server") / "server.log",
                                timeout_s=STARTUP_TIMEOUT_S, env=env)
    except ServiceError as err:
        pytest.fail(str(err))
    try:
        yield base
    finally:
        stop_service(process)


@pytest.mark.server
@pytest.mark.slow
def test_search_page_shows_plots_and_details(server, tmp_path):
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server + "/")
            page.wait_for_function("document.querySelector('#labelset').options.length > 0")
            assert "collection" in page.inner_text("#footer")

            page.fill("#query", "atrial fibrillation with rapid ventricular response")
            page.click("#search-button")
            page.wait_for_selector(".card img")
            cards = page.locator(".card")
            assert cards.count() == 8  # the page's default top-8, out of 20 indexed ECGs
            page.wait_for_function(
                "[...document.querySelectorAll('.card img')].every(img => img.complete && img.naturalWidth > 0)",
                timeout=60_000,
            )
            widths = page.eval_on_selector_all(".card img", "imgs => imgs.map(img => img.naturalWidth)")
            assert len(widths) == 8 and min(widths) > 800
            scores = [float(t.split()[-1]) for t in page.locator(".card .score").all_inner_texts()]
            assert scores == sorted(scores, reverse=True)

            first_id = cards.first.get_attribute("data-record-id")
            cards.first.click()
            page.wait_for_selector("#detail:not([hidden])")
            page.wait_for_selector("#detail-scores li")
            page.wait_for_function("document.querySelector('#detail-plot').naturalWidth > 0", timeout=60_000)
            expected = httpx.get(f"{server}/api/records/{first_id}", timeout=30).json()
            assert page.inner_text("#detail-title") == f"ECG {first_id}"
            assert page.inner_text("#detail-caption").strip() == (expected["caption"] or "").strip()
            shown_classes = page.locator("#detail-scores li .cls").all_inner_texts()
            assert [c.strip() for c in shown_classes] == [s["display"] for s in expected["zero_shot"]["scores"]]
            shown_texts = page.locator("#detail-texts li .text").all_inner_texts()
            assert shown_texts == [t["text"] for t in expected["nearest_texts"]]
            assert page.locator(".card.selected").count() == 1

            docs = browser.new_page()
            docs.goto(server + "/docs")
            docs.wait_for_selector(".opblock", timeout=60_000)  # Swagger UI rendered from local assets
            assert docs.locator(".opblock").count() >= 10
            docs.close()

            screenshot = tmp_path / "esi-search-page.png"
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
            keep = os.environ.get("ESI_SCREENSHOT_DIR")
            if keep:
                shutil.copy2(screenshot, Path(keep) / screenshot.name)
        finally:
            browser.close()
