"""retrieval.service: the start-and-wait helper behind every server test, on a real local HTTP server."""

from __future__ import annotations

import sys

import httpx
import pytest

from retrieval.service import ServiceError, free_port, start_service, stop_service


def test_start_waits_for_the_service_and_stop_ends_it(tmp_path) -> None:
    port = free_port()
    (tmp_path / "ok.txt").write_text("up", encoding="utf-8")
    command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    process = start_service(command, f"http://127.0.0.1:{port}/ok.txt", tmp_path / "log.txt", timeout_s=60)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/ok.txt", timeout=5).text == "up"
    finally:
        stop_service(process)
    assert process.poll() is not None


def test_a_service_that_exits_is_an_error_with_its_log(tmp_path) -> None:
    command = [sys.executable, "-c", "import sys; print('bad flag --nope'); sys.exit(3)"]
    with pytest.raises(ServiceError, match=r"exited with 3(.|\n)*bad flag --nope"):
        start_service(command, f"http://127.0.0.1:{free_port()}/", tmp_path / "log.txt", timeout_s=30)


def test_a_service_that_never_answers_times_out_and_is_stopped(tmp_path) -> None:
    command = [sys.executable, "-c", "import time; print('sleeping', flush=True); time.sleep(600)"]
    with pytest.raises(ServiceError, match=r"did not answer within 1 s(.|\n)*sleeping"):
        start_service(command, f"http://127.0.0.1:{free_port()}/", tmp_path / "log.txt", timeout_s=1)
