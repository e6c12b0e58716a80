"""``POST /api/analyze`` (the page's "your ECG" panel) with real PTB-XL and CinC uploads, the upload's notes
in the response, and the ``serve`` flags that size the worker pool."""

from __future__ import annotations

import argparse
import base64
import io
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import wfdb
from PIL import Image

TIMEOUT_S = 30.0
PTBXL_RECORD = ("records100", "00000", "00001_lr")
CINC_RECORD = "A0001"


def _multipart(files: dict[str, bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (name, data)) for name, data in files.items()]


def _ptbxl_files(ptbxl_root: Path) -> dict[str, bytes]:
    base = ptbxl_root.joinpath(*PTBXL_RECORD)
    return {f"{base.name}.hea": base.with_suffix(".hea").read_bytes(),
            f"{base.name}.dat": base.with_suffix(".dat").read_bytes()}


def _cinc_files(cinc_root: Path) -> dict[str, bytes]:
    base = cinc_root / CINC_RECORD
    return {f"{CINC_RECORD}.hea": base.with_suffix(".hea").read_bytes(),
            f"{CINC_RECORD}.mat": base.with_suffix(".mat").read_bytes()}


def _csv_of_ptbxl(ptbxl_root: Path, *, empty_lead: str | None = None, nan_cell: bool = False) -> bytes:
    """The PTB-XL record as a CSV with only I, II and V1-V6 (the limb leads get derived), a respiration
    column that is no ECG lead, optionally one empty cell (a NaN sample) and one all-empty lead."""
    record = wfdb.rdrecord(str(ptbxl_root.joinpath(*PTBXL_RECORD)))
    columns = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
    signal = {name: record.p_signal[:, record.sig_name.index(name)] for name in columns}
    lines = [",".join([*columns, "RESP"])]
    for t in range(record.sig_len):
        cells = ["" if name == empty_lead else f"{signal[name][t]:.4f}" for name in columns]
        if nan_cell and t == 50:
            cells[columns.index("V2")] = ""
        lines.append(",".join([*cells, "0.1"]))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def ptbxl_item_id(api_env) -> str:
    """The collection id of the uploaded PTB-XL record (it is among the 20 indexed ones)."""
    matches = [item for item in api_env.item_ids if item.split(":")[-1].lstrip("0") == "1"]
    assert len(matches) == 1, api_env.item_ids
    return matches[0]


def _check_every_part(body: dict[str, Any], api_env, *, top_k: int = 5, k_texts: int = 5, k_similar: int = 4) -> None:
    assert body["plot_url"].startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(body["plot_url"].split(",", 1)[1])))
    assert image.format == "PNG" and image.width > 800
    assert body["zero_shot"]["labelset"] == "ptbxl_superclass"
    assert len(body["zero_shot"]["scores"]) == top_k
    assert isinstance(body["caption"], str) and body["caption"].strip()
    assert [t["text"] in api_env.texts for t in body["nearest_texts"]] == [True] * k_texts
    similar = body["similar"]
    assert len(similar) == k_similar and [hit["rank"] for hit in similar] == list(range(1, k_similar + 1))
    assert all(hit["id"] in api_env.item_ids and hit["plot_url"].startswith("/api/records/") for hit in similar)
    assert all("path" not in hit["metadata"] for hit in similar)  # no server paths leak
    scores = [hit["score"] for hit in similar]
    assert scores == sorted(scores, reverse=True)
    assert isinstance(body["notes"], list)


def test_analyze_ptbxl_record_returns_every_part(client, api_env, ptbxl_root, ptbxl_item_id):
    files = _ptbxl_files(ptbxl_root)
    response = client.post("/api/analyze", files=_multipart(files))
    assert response.status_code == 200, response.text
    body = response.json()
    _check_every_part(body, api_env)
    assert body["ecg"]["format"] == "wfdb" and body["ecg"]["sampling_rate"] == 100.0
    # The record is indexed: ECG -> ECG search finds it first, as itself.
    assert body["similar"][0]["id"] == ptbxl_item_id and body["similar"][0]["score"] > 0.99
    # One combined call agrees with the single-purpose endpoints.
    classify = client.post("/api/classify?top_k=5", files=_multipart(files)).json()
    assert body["zero_shot"]["scores"] == classify["scores"]
    retrieve = client.post("/api/retrieve?k=5", files=_multipart(files)).json()
    assert body["nearest_texts"] == retrieve["texts"]
    caption = client.post("/api/caption", files=_multipart(files)).json()
    assert body["caption"] == caption["caption"]


def test_analyze_cinc_record(client, api_env, cinc_root):
    response = client.post("/api/analyze?k_similar=6&top_k=3", files=_multipart(_cinc_files(cinc_root)))
    assert response.status_code == 200, response.text
    body = response.json()
    _check_every_part(body, api_env, top_k=3, k_similar=6)
    assert body["ecg"]["format"] == "cinc-mat" and body["ecg"]["sampling_rate"] == 500.0
    assert body["ecg"]["name"] == CINC_RECORD
    assert "resampled from 500 Hz to 100 Hz" in body["notes"]


def test_analyze_and_classify_pass_the_upload_notes_through(client, api_env, ptbxl_root):
    files = _multipart({"derived.csv": _csv_of_ptbxl(ptbxl_root, nan_cell=True)})
    response = client.post("/api/analyze", files=files, data={"sampling_rate": "100"})
    assert response.status_code == 200, response.text
    body = response.json()
    _check_every_part(body, api_env)
    parse_notes = body["ecg"]["notes"]
    assert any("derived from I and II" in note for note in parse_notes)
    assert any("RESP" in note and "left out" in note for note in parse_notes)
    # The upload's notes come first in the response's notes, then what fitting to the model did.
    assert body["notes"][: len(parse_notes)] == parse_notes
    assert any(note.startswith("repaired 1 NaN samples") for note in body["notes"])
    classify = client.post("/api/classify", files=files, data={"sampling_rate": "100"}).json()
    assert classify["notes"][: len(parse_notes)] == parse_notes


def test_analyze_takes_a_json_signal_and_notes_a_flat_lead(client, api_env, ptbxl_root):
    record = wfdb.rdrecord(str(ptbxl_root.joinpath(*PTBXL_RECORD)))
    signal = record.p_signal.T.astype(np.float32).round(4)
    signal[11] = 0.0  # V6 recorded nothing
    response = client.post("/api/analyze", json={"signal": signal.tolist(), "sampling_rate": 100, "name": "flat-v6"})
    assert response.status_code == 200, response.text
    body = response.json()
    _check_every_part(body, api_env)
    assert body["ecg"]["format"] == "json"
    v6_notes = [note for note in body["notes"] if "V6" in note]
    assert len(v6_notes) == 1 and v6_notes[0].startswith("lead V6 flat"), body["notes"]
    assert v6_notes[0].endswith("zero-filled")


def test_a_lead_the_reader_zero_filled_is_noted_once(client, ptbxl_root):
    files = _multipart({"no-v6.csv": _csv_of_ptbxl(ptbxl_root, empty_lead="V6")})
    body = client.post("/api/analyze", files=files, data={"sampling_rate": "100"}).json()
    v6_notes = [note for note in body["notes"] if "V6" in note]
    assert v6_notes == ["lead V6 all NaN, zero-filled"], body["notes"]


@pytest.mark.parametrize("files,data,reason", [
    ({"00001_lr.hea": None}, {}, "no .dat or .mat signal file"),
    ({"broken.npy": b"not a numpy file"}, {"sampling_rate": "100"}, "not a readable .npy array"),
    ({"signal.npy": None}, {}, "needs a 'sampling_rate'"),
    ({"notes.txt": b"hello"}, {}, "unsupported file type"),
])
def test_analyze_bad_upload_is_422_with_the_reason(client, ptbxl_root, files, data, reason):
    header = ptbxl_root.joinpath(*PTBXL_RECORD).with_suffix(".hea").read_bytes()
    array = io.BytesIO()
    np.save(array, np.zeros((12, 1000), dtype=np.float32))
    filled = {name: content if content is not None else (header if name.endswith(".hea") else array.getvalue())
              for name, content in files.items()}
    response = client.post("/api/analyze", files=_multipart(filled), data=data)
    assert response.status_code == 422, response.text
    assert reason in response.json()["detail"]


def test_analyze_truncated_dat_and_unknown_labelset_are_422(client, ptbxl_root):
    files = _ptbxl_files(ptbxl_root)
    files["00001_lr.dat"] = files["00001_lr.dat"][:1000]
    response = client.post("/api/analyze", files=_multipart(files))
    assert response.status_code == 422 and "truncated" in response.json()["detail"]
    response = client.post("/api/analyze?labelset=no-such-set", files=_multipart(_ptbxl_files(ptbxl_root)))
    assert response.status_code == 422 and "unknown label set" in response.json()["detail"]


def test_analyze_is_listed_in_the_openapi_docs(client):
    operation = client.get("/openapi.json").json()["paths"]["/api/analyze"]["post"]
    assert "multipart/form-data" in operation["requestBody"]["content"]


def test_analyze_answers_503_when_the_pool_is_full(api_env, app, ptbxl_root, monkeypatch):
    """Analyze runs on the same bounded pool as the other model endpoints: with 1 worker, no queue and
    that worker held, a second upload is refused at once with Retry-After."""
    from fastapi.testclient import TestClient

    from esi.serve.api.app import create_app

    backend = app.state.backend
    busy = create_app(api_env.model_dir, api_env.store_dir, backend=backend, workers=1, max_queue=0)
    entered, release = threading.Event(), threading.Event()

    def held(*args: Any, **kwargs: Any) -> dict[str, Any]:
        entered.set()
        release.wait(timeout=TIMEOUT_S)
        return {"similar": [], "notes": []}

    monkeypatch.setattr(backend, "analyze", held)
    files = _multipart(_ptbxl_files(ptbxl_root))
    with TestClient(busy, raise_server_exceptions=False) as test_client:
        first = threading.Thread(target=lambda: test_client.post("/api/analyze", files=files), daemon=True)
        first.start()
        try:
            assert entered.wait(timeout=TIMEOUT_S), "the first request never reached the worker"
            response = test_client.post("/api/analyze", files=files)
        finally:
            release.set()
            first.join(timeout=TIMEOUT_S)
    assert response.status_code == 503 and "server busy" in response.json()["detail"]
    assert int(response.headers["Retry-After"]) >= 1
    busy.state.pool.shutdown()


# ---- python -m esi serve --workers / --max-queue ------------------------------------------------------------


def _serve_args(*extra: str) -> argparse.Namespace:
    from esi.cli.serve import add_serve_parser

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", "--model", "m", "--store", "s", *extra])


def test_serve_pool_flags_default_to_the_app_defaults():
    from esi.cli.serve import check_serve_args
    from esi.serve.api.limits import DEFAULT_MAX_QUEUE, DEFAULT_WORKERS

    args = _serve_args()
    assert (args.workers, args.max_queue) == (DEFAULT_WORKERS, DEFAULT_MAX_QUEUE)
    assert check_serve_args(args) is None
    assert check_serve_args(_serve_args("--workers", "1", "--max-queue", "0")) is None


@pytest.mark.parametrize("flags,message", [
    (("--workers", "0"), "--workers must be at least 1, got 0"),
    (("--workers", "-2"), "--workers must be at least 1, got -2"),
    (("--max-queue", "-1"), "--max-queue must be 0 or more, got -1"),
])
def test_serve_refuses_bad_pool_sizes_before_loading_the_model(flags, message, monkeypatch, capsys):
    import esi.serve.api.app
    from esi.cli.serve import check_serve_args, run_serve

    args = _serve_args(*flags)
    assert check_serve_args(args) == message

    def never(*_: Any, **__: Any) -> None:
        raise AssertionError("create_app must not run with bad pool sizes")

    monkeypatch.setattr(esi.serve.api.app, "create_app", never)
    assert run_serve(args) == 2
    assert message in capsys.readouterr().err


def test_serve_passes_the_pool_sizes_to_create_app(monkeypatch):
    import uvicorn

    import esi.serve.api.app
    from esi.cli.serve import run_serve

    seen: dict[str, Any] = {}
    monkeypatch.setattr(esi.serve.api.app, "create_app", lambda *args, **kwargs: seen.update(kwargs) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(served=app))
    assert run_serve(_serve_args("--workers", "3", "--max-queue", "0", "--log-level", "warning")) == 0
    assert (seen["workers"], seen["max_queue"], seen["served"]) == (3, 0, "app")
