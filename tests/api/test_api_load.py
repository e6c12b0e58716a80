"""The API under load and with non-finite JSON: a bounded worker pool (503 + Retry-After past its queue),
a health check that never waits on the pool or the model lock, and NaN/Infinity as a 422.

The server tests run the app under a real uvicorn server in a thread on loopback, sharing the session's
tiny-model backend; slow model work is simulated by holding a patched backend method on an event, so
the pool's state is exact rather than timing-dependent. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import wfdb

from esi.serve.api.limits import NonFiniteJSONError, PoolFull, WorkerPool, loads_finite

HOST = "127.0.0.1"  # loopback only
TIMEOUT_S = 30.0
HEALTH_BUDGET_S = 1.0  # "fast" on a shared 2-core machine; typically a few ms


def _signal(ptbxl_root: Path) -> list[list[float]]:
    record = wfdb.rdrecord(str(ptbxl_root / "records100" / "00000" / "00001_lr"))
    return record.p_signal.T.astype(np.float32).round(4).tolist()


def _wait_until(condition, timeout_s: float = TIMEOUT_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


@contextmanager
def serving(app) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port, in a daemon thread; yields the base URL."""
    import uvicorn

    from retrieval.service import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        _wait_until(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        assert server.started, "uvicorn exited before it started serving"
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def backend(app):
    """The session's backend (tiny model, 20 PTB-XL records), shared so no second model is loaded."""
    return app.state.backend


@pytest.fixture(scope="module")
def small_app(api_env, backend):
    """The app with a pool of 1 worker and a queue of 1: the third concurrent model request gets 503."""
    from esi.serve.api.app import create_app

    return create_app(api_env.model_dir, api_env.store_dir, backend=backend, workers=1, max_queue=1,
                      max_upload_seconds=60.0)


@pytest.fixture(scope="module")
def base_url(small_app) -> Iterator[str]:
    with serving(small_app) as url:
        yield url


@pytest.fixture(scope="module")
def signal(ptbxl_root) -> list[list[float]]:
    return _signal(ptbxl_root)


@pytest.fixture
def held_caption(backend, monkeypatch):
    """Patch ``backend.caption`` to block until the returned event is set (at most ``TIMEOUT_S``)."""
    release = threading.Event()
    entered = threading.Semaphore(0)

    def caption(ecg, method: str) -> dict[str, Any]:
        entered.release()
        release.wait(timeout=TIMEOUT_S)
        return {"caption": "held", "method": method, "notes": []}

    monkeypatch.setattr(backend, "caption", caption)
    try:
        yield release
    finally:
        release.set()  # never leave a worker thread blocked for the next test


def _post_caption(base_url: str, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=TIMEOUT_S) as client:
        return client.post("/api/caption", json=body)


# ---- the bounded pool on a real server -------------------------------------------------------------------


def test_past_the_queue_requests_get_503_with_retry_after_and_none_hangs(base_url, small_app, signal,
                                                                         held_caption):
    body = {"signal": signal, "sampling_rate": 100}
    n_requests = 6
    with ThreadPoolExecutor(max_workers=n_requests) as clients:
        futures: list[Future] = [clients.submit(_post_caption, base_url, body) for _ in range(n_requests)]
        # 1 running + 1 queued are held; the other 4 must be refused at once, not queued.
        _wait_until(lambda: sum(f.done() for f in futures) >= n_requests - 2, what="the 503 answers")
        assert small_app.state.pool.stats() | {"rejected": 0} == {
            "workers": 1, "max_queue": 1, "running": 1, "waiting": 1, "rejected": 0}
        refused = [f.result() for f in futures if f.done()]
        held_caption.set()
        done, not_done = wait_futures(futures, timeout=TIMEOUT_S)
        assert not not_done, f"{len(not_done)} requests hung"
    responses = [f.result() for f in futures]
    assert sorted(r.status_code for r in responses) == [200, 200, 503, 503, 503, 503]
    assert all(r.status_code == 503 for r in refused)
    for response in refused:
        assert int(response.headers["retry-after"]) >= 1
        assert "busy" in response.json()["detail"]
    assert all(r.json()["caption"] == "held" for r in responses if r.status_code == 200)
    # The slots are free again once the held jobs finished.
    _wait_until(lambda: small_app.state.pool.stats()["running"] == 0, what="the pool to drain")
    assert _post_caption(base_url, body).status_code == 200


def test_health_answers_fast_while_the_pool_is_saturated(base_url, small_app, signal, held_caption):
    body = {"signal": signal, "sampling_rate": 100}
    with ThreadPoolExecutor(max_workers=2) as clients, httpx.Client(base_url=base_url, timeout=TIMEOUT_S) as client:
        futures = [clients.submit(_post_caption, base_url, body) for _ in range(2)]
        _wait_until(lambda: small_app.state.pool.stats()["waiting"] == 1, what="the pool to fill")
        latencies = []
        for _ in range(10):
            started = time.perf_counter()
            response = client.get("/api/health")
            latencies.append(time.perf_counter() - started)
            assert response.status_code == 200
        pool = response.json()["pool"]
        assert (pool["running"], pool["waiting"]) == (1, 1)
        assert max(latencies) < HEALTH_BUDGET_S, latencies
        # Other model endpoints share the pool: refused at once too.
        search = client.get("/api/search", params={"q": "sinus rhythm"})
        assert search.status_code == 503 and int(search.headers["retry-after"]) >= 1
        assert client.get("/api/labelsets").status_code == 200  # static data, no pool
        held_caption.set()
        assert all(f.result(timeout=TIMEOUT_S).status_code == 200 for f in futures)


def test_health_does_not_wait_on_the_model_lock(base_url, backend):
    """A search blocked on the model lock holds a worker thread, never the event loop or health."""
    with ThreadPoolExecutor(max_workers=1) as clients, httpx.Client(base_url=base_url, timeout=TIMEOUT_S) as client:
        backend._model_lock.acquire()
        try:
            search = clients.submit(lambda: httpx.get(f"{base_url}/api/search", timeout=TIMEOUT_S,
                                                      params={"q": "left bundle branch block, lock test"}))
            time.sleep(0.3)
            assert not search.done()
            started = time.perf_counter()
            assert client.get("/api/health").status_code == 200
            assert time.perf_counter() - started < HEALTH_BUDGET_S
        finally:
            backend._model_lock.release()
        assert search.result(timeout=TIMEOUT_S).status_code == 200


# ---- non-finite JSON ----------------------------------------------------------------------------------------


def _ecg_body(signal: list[list[float]], **extra: str) -> bytes:
    """A JSON ECG body; ``extra`` values are raw JSON text (so NaN/Infinity can be written)."""
    fields = [f'"signal": {json.dumps(signal)}', '"sampling_rate": 100'] + [f'"{k}": {v}' for k, v in extra.items()]
    return ("{" + ", ".join(fields) + "}").encode()


@pytest.mark.parametrize("path,body,field", [
    ("/api/explain", b'{"codes": ["AFIB"], "age": NaN}', "age"),
    ("/api/explain", b'{"codes": ["AFIB"], "age": Infinity}', "age"),
    ("/api/explain", b'{"codes": ["AFIB"], "age": -Infinity}', "age"),
    ("/api/explain", b'{"codes": [NaN]}', "codes[0]"),
    ("/api/explain", b'{"codes": ["AFIB"], "age": 1e999}', "age"),  # overflows to inf: pydantic's 422
])
def test_non_finite_numbers_in_explain_are_422_and_the_connection_keeps_serving(base_url, path, body, field):
    with httpx.Client(base_url=base_url, timeout=TIMEOUT_S) as client:
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
        assert response.headers.get("connection", "").lower() != "close"
        detail = response.json()["detail"]
        if isinstance(detail, str):  # the NaN/Infinity literal check
            assert field in detail and "finite" in detail
        else:  # pydantic's list of errors, the offending input rendered as a string
            assert detail[0]["loc"] == ["body", field] and detail[0]["input"] == "Infinity"
        after = client.post(path, json={"codes": ["AFIB"], "age": 60})
        assert after.status_code == 200, after.text


@pytest.mark.parametrize("endpoint", ["/api/caption", "/api/classify"])
def test_non_finite_numbers_in_an_ecg_json_body_are_422_naming_the_field(base_url, signal, endpoint):
    bad_sample = [row[:] for row in signal]
    bad_sample[3][17] = float("nan")
    rows = json.dumps(signal)
    overflowing = "[[1e999" + rows[rows.index(","):]  # signal[0][0] reads as inf
    cases = [
        (json.dumps({"signal": bad_sample, "sampling_rate": 100}).encode(), "signal[3][17] is NaN"),
        (_ecg_body(signal, age="Infinity"), "age is Infinity"),
        (_ecg_body(signal).replace(b'"sampling_rate": 100', b'"sampling_rate": -Infinity'),
         "sampling_rate is -Infinity"),
        (_ecg_body(signal, age="1e999"), "age is a number too large"),  # overflow: found after parsing
        (f'{{"signal": {overflowing}, "sampling_rate": 100}}'.encode(), "signal[0][0] is a number too large"),
    ]
    with httpx.Client(base_url=base_url, timeout=TIMEOUT_S) as client:
        for body, message in cases:
            response = client.post(endpoint, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 422, response.text
            assert message in response.json()["detail"], response.text
            assert response.headers.get("connection", "").lower() != "close"
        # "NaN" as a string is not a number: accepted; and the connection still serves.
        ok = client.post(endpoint, content=_ecg_body(signal, name='"NaN"'),
                         headers={"content-type": "application/json"})
        assert ok.status_code == 200, ok.text


# ---- units: the pool and the strict JSON loader ---------------------------------------------------------------


def test_worker_pool_refuses_past_the_queue_and_frees_slots():
    pool = WorkerPool(workers=1, max_queue=1)
    release = threading.Event()

    async def scenario() -> None:
        held = [asyncio.ensure_future(pool.run(release.wait, TIMEOUT_S)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(PoolFull) as refused:
            await pool.run(time.sleep, 0)
        assert refused.value.retry_after_s >= 1 and pool.stats()["rejected"] == 1
        release.set()
        assert await asyncio.wait_for(asyncio.gather(*held), TIMEOUT_S) == [True, True]
        with pytest.raises(ZeroDivisionError):  # errors propagate, and free their slot
            await pool.run(lambda: 1 / 0)
        assert await asyncio.wait_for(pool.run(sum, [1, 2]), TIMEOUT_S) == 3
        assert pool.stats() | {"rejected": 0} == {"workers": 1, "max_queue": 1, "running": 0, "waiting": 0,
                                                   "rejected": 0}

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        pool.shutdown()


@pytest.mark.parametrize("workers,max_queue", [(0, 1), (1, -1)])
def test_worker_pool_rejects_bad_sizes(workers, max_queue):
    with pytest.raises(ValueError):
        WorkerPool(workers, max_queue)


@pytest.mark.parametrize("text,loc,value", [
    ('{"a": [1, 2, NaN]}', ("a", 2), "NaN"),
    ('[{"x": [0.5, -Infinity]}]', (0, "x", 1), "-Infinity"),
    ('{"age": 1e999}', ("age",), "a number too large for a float (inf)"),
    ('{"x": [1.0, 1e999, -1e999]}', ("x", 1), "a number too large for a float (inf)"),
    ('{"signal": [[0.0, 1.0], [2.0, Infinity]]}', ("signal", 1, 1), "Infinity"),
    ("NaN", (), "NaN"),
])
def test_loads_finite_names_the_first_non_finite_number(text, loc, value):
    with pytest.raises(NonFiniteJSONError) as err:
        loads_finite(text)
    assert err.value.loc == loc and err.value.value == value


def test_loads_finite_accepts_finite_json():
    text = '{"name": "NaN", "n": 123456789012345678901234567890, "x": [1e308, 1e308, -0.0], "ok": [true, null]}'
    assert loads_finite(text) == json.loads(text)


def test_health_probe_answers_from_its_last_result_when_the_store_is_slow():
    """A health check that overruns its budget gives the last good answer, marked stale, in time."""
    from esi.serve.api.app import HealthProbe

    release = threading.Event()

    class SlowBackend:
        calls = 0

        def health(self) -> dict[str, Any]:
            SlowBackend.calls += 1
            if SlowBackend.calls > 1:  # the first call is at start-up
                release.wait(TIMEOUT_S)
            return {"status": "ok", "call": SlowBackend.calls}

    pool = WorkerPool(1, 0)
    probe = HealthProbe(SlowBackend(), pool, timeout_s=0.05)

    async def scenario() -> list[dict[str, Any]]:
        started = time.perf_counter()
        answers = await asyncio.gather(*(probe.get() for _ in range(5)))
        assert time.perf_counter() - started < HEALTH_BUDGET_S
        return answers

    try:
        answers = asyncio.run(scenario())
    finally:
        release.set()
        pool.shutdown()
    assert all(a["stale"] is True and a["call"] == 1 and a["pool"]["workers"] == 1 for a in answers)
    assert SlowBackend.calls == 2  # concurrent checks share one in-flight call
