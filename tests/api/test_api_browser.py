"""End to end: `serve` in a subprocess on a free loopback port, the page driven in headless Chromium:
the text search with its details, and the user's own ECG (a dropped PTB-XL WFDB pair, a chosen CinC
.hea + .mat pair, a broken file) analysed on the page.

Chromium comes from Debian (`apt-get install -y chromium`, done by scripts/setup.sh); Playwright only
drives it and never downloads a browser. As root (CI) a missing /usr/bin/chromium is a failure; without
root it is a skip with the reason.
"""

from __future__ import annotations

import base64
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STARTUP_TIMEOUT_S = 240
PAGE_TIMEOUT_MS = 60_000  # every Playwright wait is bounded by this (the machine's 2 cores are shared)
SERVE_WORKERS, SERVE_MAX_QUEUE = 2, 8


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing; install it with `apt-get update && apt-get install -y chromium`"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.fail(message + " (running as root, so the browser test must not be skipped)")
    pytest.skip(message + " (not root, cannot install it here)")


@pytest.fixture(scope="module")
def server(api_env, tmp_path_factory):
    """`python -m esi.cli.serve serve ...` on 127.0.0.1:<free port>; yields the base URL."""
    from retrieval.service import ServiceError, free_port, start_service, stop_service

    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", ANONYMIZED_TELEMETRY="False")
    command = [sys.executable, "-m", "esi.cli.serve", "serve", "--model", str(api_env.model_dir),
               "--store", str(api_env.store_dir), "--collection", "ecg", "--text-collection", "texts",
               "--knowledge-store", str(api_env.knowledge_dir), "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(SERVE_WORKERS), "--max-queue", str(SERVE_MAX_QUEUE), "--log-level", "warning"]
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

            _screenshot(page, tmp_path / "esi-search-page.png")
        finally:
            browser.close()


def _analysis_shown(page, name: str) -> None:
    """Wait (bounded) until the page shows the analysis of the upload ``name``, its plot decoded."""
    page.wait_for_function(
        """name => {
          const result = document.querySelector('#upload-result');
          const plot = document.querySelector('#upload-plot');
          return !result.hidden && document.querySelector('#upload-title').textContent === `Your ECG: ${name}`
            && plot.complete && plot.naturalWidth > 0
            && document.querySelectorAll('#upload-similar .card').length > 0;
        }""",
        arg=name, timeout=PAGE_TIMEOUT_MS,
    )


def _check_analysis_on_page(page, expected: dict[str, Any]) -> None:
    """The page shows what POST /api/analyze answers for the same files: plot, scores, caption, passages,
    similar ECGs (their plots loaded) and the notes."""
    assert page.get_attribute("#upload-plot", "src").startswith("data:image/png;base64,")
    assert page.eval_on_selector("#upload-plot", "img => img.naturalWidth") > 800
    assert page.inner_text("#upload-caption").strip() == expected["caption"].strip() != ""
    shown_classes = [c.strip() for c in page.locator("#upload-scores li .cls").all_inner_texts()]
    assert shown_classes == [s["display"] for s in expected["zero_shot"]["scores"]] and shown_classes
    shown_texts = page.locator("#upload-texts li .text").all_inner_texts()
    assert shown_texts == [t["text"] for t in expected["nearest_texts"]] and shown_texts
    cards = page.locator("#upload-similar .card")
    assert [cards.nth(i).get_attribute("data-record-id") for i in range(cards.count())] == [
        hit["id"] for hit in expected["similar"]]
    page.locator("#upload-similar").scroll_into_view_if_needed()
    page.wait_for_function(
        "[...document.querySelectorAll('#upload-similar .card img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=PAGE_TIMEOUT_MS,
    )
    shown_notes = page.locator("#upload-notes li").all_inner_texts()
    assert shown_notes == expected["notes"]
    assert page.is_visible("#upload-notes") == bool(expected["notes"])


def _drop_files(page, files: dict[str, bytes]) -> None:
    """Drop ``files`` on the page's drop zone as a user dragging them from a file manager would."""
    page.evaluate(
        """files => {
          const transfer = new DataTransfer();
          for (const [name, data] of Object.entries(files)) {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            transfer.items.add(new File([bytes], name, { type: 'application/octet-stream' }));
          }
          const zone = document.querySelector('#dropzone');
          zone.dispatchEvent(new DragEvent('dragenter', { dataTransfer: transfer, bubbles: true, cancelable: true }));
          zone.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, bubbles: true, cancelable: true }));
        }""",
        {name: base64.b64encode(data).decode("ascii") for name, data in files.items()},
    )


@pytest.mark.server
@pytest.mark.slow
def test_page_analyses_an_uploaded_ecg(server, ptbxl_root, cinc_root, tmp_path):
    _require_chromium()
    from playwright.sync_api import sync_playwright

    pool = httpx.get(f"{server}/api/health", timeout=30).json()["pool"]
    assert (pool["workers"], pool["max_queue"]) == (SERVE_WORKERS, SERVE_MAX_QUEUE)  # serve's flags reached the app

    ptbxl = ptbxl_root / "records100" / "00000" / "00001_lr"
    ptbxl_files = {"00001_lr.hea": ptbxl.with_suffix(".hea").read_bytes(),
                   "00001_lr.dat": ptbxl.with_suffix(".dat").read_bytes()}
    cinc = cinc_root / "A0001"
    with httpx.Client(base_url=server, timeout=60) as client:
        expected_ptbxl = client.post("/api/analyze", files=[("files", item) for item in ptbxl_files.items()]).json()
        expected_cinc = client.post("/api/analyze", files=[
            ("files", ("A0001.hea", cinc.with_suffix(".hea").read_bytes())),
            ("files", ("A0001.mat", cinc.with_suffix(".mat").read_bytes()))]).json()
    assert "resampled from 500 Hz to 100 Hz" in expected_cinc["notes"]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(server + "/")
            page.wait_for_function("document.querySelector('#upload-labelset').options.length > 0")
            assert page.is_hidden("#upload-result")

            # Half a pair is caught on the page, before anything is sent.
            page.set_input_files("#upload-files", [str(ptbxl.with_suffix(".hea"))])
            page.wait_for_function("document.querySelector('#status').textContent.includes('.dat or .mat')")
            assert page.is_hidden("#upload-result")

            # A PTB-XL WFDB pair, dropped on the page.
            _drop_files(page, ptbxl_files)
            _analysis_shown(page, "00001_lr")
            _check_analysis_on_page(page, expected_ptbxl)
            assert expected_ptbxl["similar"][0]["score"] > 0.99  # it is indexed: it finds itself first
            assert "wfdb" in page.inner_text("#upload-meta")

            # A CinC .hea + .mat pair, chosen with the file input; its notes are shown.
            page.set_input_files("#upload-files", [str(cinc.with_suffix(".hea")), str(cinc.with_suffix(".mat"))])
            _analysis_shown(page, "A0001")
            _check_analysis_on_page(page, expected_cinc)
            assert "resampled from 500 Hz to 100 Hz" in page.inner_text("#upload-notes")
            assert "500 Hz" in page.inner_text("#upload-meta")

            _screenshot(page, tmp_path / "esi-upload-analysis.png")

            # A similar ECG opens its details like a search result.
            first_similar = expected_cinc["similar"][0]["id"]
            page.locator("#upload-similar .card").first.click()
            page.wait_for_selector("#detail:not([hidden])")
            page.wait_for_function("id => document.querySelector('#detail-title').textContent === `ECG ${id}`",
                                   arg=first_similar)

            # A broken file: the server's 422 reason is shown to the user, not swallowed.
            page.fill("#sampling-rate", "100")
            page.set_input_files("#upload-files", files=[
                {"name": "broken.npy", "mimeType": "application/octet-stream", "buffer": b"not a numpy file"}])
            page.wait_for_selector("#upload-error:not([hidden])")
            error = page.inner_text("#upload-error")
            assert "broken.npy" in error and "not a readable .npy array" in error
            assert "not a readable .npy array" in page.inner_text("#status")
            assert not page.is_disabled("#upload-button")
        finally:
            browser.close()


def _screenshot(page, path: Path) -> None:
    """A full-page PNG (kept in $ESI_SCREENSHOT_DIR when set, for a person to look at)."""
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    keep = os.environ.get("ESI_SCREENSHOT_DIR")
    if keep:
        shutil.copy2(path, Path(keep) / path.name)
