"""Every API endpoint through FastAPI's TestClient, against a tiny real ESI model and 20 real PTB-XL records."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import wfdb
from PIL import Image

QUERY = "atrial fibrillation with rapid ventricular response"
LIMIT_BYTES = 2_000_000  # the app fixture's body limit (conftest.LIMIT_BYTES)


def _wfdb_files(ptbxl_root: Path, name: str = "00001_lr") -> dict[str, bytes]:
    base = ptbxl_root / "records100" / "00000" / name
    return {f"{name}.hea": base.with_suffix(".hea").read_bytes(), f"{name}.dat": base.with_suffix(".dat").read_bytes()}


def _multipart(files: dict[str, bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (name, data)) for name, data in files.items()]


def _signal(ptbxl_root: Path, name: str = "00001_lr") -> np.ndarray:
    return wfdb.rdrecord(str(ptbxl_root / "records100" / "00000" / name)).p_signal.T.astype(np.float32)


@pytest.fixture(scope="module")
def inference(api_env):
    from esi.serve.inference import ESIInference

    return ESIInference(api_env.model_dir)


def _embed_record(inference, signal: np.ndarray, rate: float) -> np.ndarray:
    from corpora.base import ECGRecord

    prepared = inference.prepare(ECGRecord("x", "test", signal, rate), warn=False)
    return inference.embed_signals(prepared.signal[None])[0]


# ---- meta -----------------------------------------------------------------------------------------


def test_health_reports_model_and_collection(client, api_env):
    body = client.get("/api/health").json()
    assert body["status"] == "ok"
    assert body["model"]["embed_dim"] == 64 and body["model"]["sampling_rate"] == 100.0
    assert body["collection"] == {"name": "ecg", "count": len(api_env.item_ids)}
    assert body["texts"]["count"] == len(api_env.texts)


def test_labelsets_lists_the_shipped_sets(client):
    body = client.get("/api/labelsets").json()
    names = {item["name"] for item in body["labelsets"]}
    assert {"ptbxl_superclass", "cinc_scored"} <= names
    assert body["default"] == "ptbxl_superclass"


def test_openapi_docs_list_every_endpoint(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()  # works offline
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert client.get(f"/static-offline-docs/{asset}").status_code == 200
    paths = set(client.get("/openapi.json").json()["paths"])
    assert paths == {
        "/api/health", "/api/labelsets", "/api/classify", "/api/retrieve", "/api/caption", "/api/plot",
        "/api/search", "/api/records/{record_id}", "/api/records/{record_id}/plot", "/api/explain", "/api/analyze",
    }


def test_page_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="search-form"' in page.text and "static/app.js" in page.text
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]


# ---- text -> ECG search -------------------------------------------------------------------------------


def test_search_ranks_by_cosine_similarity_of_the_real_embeddings(client, api_env, inference, ptbxl_root):
    body = client.get("/api/search", params={"q": QUERY, "k": 5}).json()
    results = body["results"]
    assert len(results) == 5 and [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(r["id"] in api_env.item_ids for r in results)
    assert all("path" not in r["metadata"] for r in results)  # no server paths leak
    # Recompute the top hit's similarity independently: text embedding . ECG embedding.
    top = results[0]
    record_number = int(top["metadata"]["record_id"])
    signal = _signal(ptbxl_root, f"{record_number:05d}_lr")
    expected = float(inference.embed_texts([QUERY])[0] @ _embed_record(inference, signal, 100.0))
    assert top["score"] == pytest.approx(expected, abs=1e-4)


def test_search_k_larger_than_collection_returns_everything(client, api_env):
    results = client.get("/api/search", params={"q": "normal ecg", "k": 50}).json()["results"]
    assert sorted(r["id"] for r in results) == sorted(api_env.item_ids)


@pytest.mark.parametrize("params", [{"q": "   "}, {"q": ""}, {"q": "x", "k": 0}, {"q": "x", "k": 51}, {},
                                    {"q": "心房颤动"}, {"q": "a" * 2001}])
def test_search_rejects_bad_queries(client, params):
    response = client.get("/api/search", params=params)
    assert response.status_code == 422, response.text


def test_search_result_plots_are_real_pngs(client):
    results = client.get("/api/search", params={"q": QUERY, "k": 2}).json()["results"]
    for hit in results:
        response = client.get(hit["plot_url"])
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(response.content))
        assert image.width > 800 and image.height > 300


# ---- indexed records --------------------------------------------------------------------------------


def test_record_details_have_caption_scores_and_texts(client, api_env):
    item = api_env.item_ids[0]
    body = client.get(f"/api/records/{item}", params={"top_k": 3, "k_texts": 4}).json()
    assert body["id"] == item and body["metadata"]["dataset"] == "ptbxl"
    assert "path" not in body["metadata"]
    assert isinstance(body["caption"], str)
    scores = body["zero_shot"]["scores"]
    assert body["zero_shot"]["labelset"] == "ptbxl_superclass" and len(scores) == 3
    assert [s["score"] for s in scores] == sorted((s["score"] for s in scores), reverse=True)
    # display probability: sigmoid(model temperature * score), recomputed from the returned (rounded) scores
    from esi.model.model import ESIModel

    scale = ESIModel.from_pretrained(api_env.model_dir).scale().item()
    expected = [1.0 / (1.0 + np.exp(-scale * s["score"])) for s in scores]
    assert [s["probability"] for s in scores] == pytest.approx(expected, abs=1e-5)
    assert scores[0]["probability"] > scores[-1]["probability"] and scores[0]["score"] > scores[-1]["score"]
    texts = body["nearest_texts"]
    assert len(texts) == 4 and all(t["text"] in api_env.texts for t in texts)
    assert client.get(body["plot_url"]).status_code == 200


def test_record_details_accept_a_labelset_alias(client, api_env):
    body = client.get(f"/api/records/{api_env.item_ids[1]}", params={"labelset": "ptbxl_rhythm", "top_k": 2}).json()
    assert body["zero_shot"]["labelset"] == "ptbxl_rhythm"


@pytest.mark.parametrize("labelset", ["no_such_set", "/etc/passwd.json", "../esi/zeroshot/labelsets/cpsc2018.json"])
def test_unknown_or_path_like_labelsets_are_refused(client, api_env, labelset):
    response = client.get(f"/api/records/{api_env.item_ids[0]}", params={"labelset": labelset})
    assert response.status_code == 422 and "unknown label set" in response.json()["detail"]


@pytest.mark.parametrize("fmt,layout,media", [("png", "3x4", "image/png"), ("svg", "12row", "image/svg+xml")])
def test_record_plot_formats(client, api_env, fmt, layout, media):
    response = client.get(f"/api/records/{api_env.item_ids[2]}/plot", params={"format": fmt, "layout": layout})
    assert response.status_code == 200 and response.headers["content-type"] == media
    if fmt == "svg":
        assert response.content.lstrip().startswith(b"<?xml") and b"<svg" in response.content


@pytest.mark.parametrize("record_id", ["ptbxl:999999", "%2E%2E", "ptbxl:..%2F..%2Fetc%2Fpasswd", "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd"])
def test_unknown_and_traversal_record_ids_are_404(client, record_id):
    assert client.get(f"/api/records/{record_id}/plot").status_code == 404
    assert client.get(f"/api/records/{record_id}").status_code == 404


def test_record_plot_rejects_unknown_format(client, api_env):
    assert client.get(f"/api/records/{api_env.item_ids[0]}/plot", params={"format": "gif"}).status_code == 422


# ---- uploaded ECGs --------------------------------------------------------------------------------------


def test_classify_wfdb_upload_matches_direct_zero_shot(client, inference, ptbxl_root):
    from esi.zeroshot import DEFAULT_CALIBRATION, DEFAULT_CLASS_TEXT, ZeroShotClassifier
    from esi.zeroshot.labelsets import load_labelset

    response = client.post("/api/classify", files=_multipart(_wfdb_files(ptbxl_root)), params={"top_k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ecg"]["format"] == "wfdb" and body["ecg"]["name"] == "00001_lr"
    classifier = ZeroShotClassifier.build(inference.model, load_labelset("ptbxl_superclass"), "ecg",
                                          class_text=DEFAULT_CLASS_TEXT, calibration=DEFAULT_CALIBRATION,
                                          prior=inference.label_prior)
    direct = classifier.scores(_embed_record(inference, _signal(ptbxl_root), 100.0)[None])[0]
    got = {s["class"]: s["score"] for s in body["scores"]}
    assert got == pytest.approx(dict(zip(classifier.class_ids, direct.tolist())), abs=1e-4)


def test_json_and_npy_uploads_give_the_same_scores_as_wfdb(client, ptbxl_root):
    signal = _signal(ptbxl_root)
    wfdb_scores = client.post("/api/classify", files=_multipart(_wfdb_files(ptbxl_root))).json()["scores"]
    json_body = client.post("/api/classify", json={"signal": signal.tolist(), "sampling_rate": 100}).json()
    buffer = io.BytesIO()
    np.save(buffer, signal)
    npy_body = client.post("/api/classify", files=[("files", ("ecg.npy", buffer.getvalue()))],
                           data={"sampling_rate": "100"}).json()
    for body in (json_body, npy_body):
        assert [s["class"] for s in body["scores"]] == [s["class"] for s in wfdb_scores]
        assert [s["score"] for s in body["scores"]] == pytest.approx([s["score"] for s in wfdb_scores], abs=1e-4)


def test_json_upload_with_permuted_leads_is_reordered(client, ptbxl_root):
    from corpora.base import STANDARD_LEADS

    signal = _signal(ptbxl_root)
    reference = client.post("/api/classify", json={"signal": signal.tolist(), "sampling_rate": 100}).json()
    order = list(reversed(range(12)))
    permuted = {"signal": signal[order].tolist(), "sampling_rate": 100, "leads": [STANDARD_LEADS[i] for i in order]}
    body = client.post("/api/classify", json=permuted).json()
    assert [s["score"] for s in body["scores"]] == pytest.approx([s["score"] for s in reference["scores"]], abs=1e-5)


def test_cinc_mat_upload_is_resampled_with_a_note(client, cinc_root):
    files = {name: (cinc_root / name).read_bytes() for name in ("A0001.hea", "A0001.mat")}
    body = client.post("/api/classify", files=_multipart(files)).json()
    assert body["ecg"]["format"] == "cinc-mat" and body["ecg"]["sampling_rate"] == 500.0
    assert body["ecg"]["age"] == 74.0 and body["ecg"]["sex"] == "male"
    assert any("resampled from 500 Hz to 100 Hz" in note for note in body["notes"])
    assert any("cropped" in note for note in body["notes"])  # 15 s record, 10 s model window


def test_retrieve_returns_k_texts_from_the_text_collection(client, api_env, inference, ptbxl_root):
    body = client.post("/api/retrieve", params={"k": 3}, json={"signal": _signal(ptbxl_root).tolist(),
                                                             "sampling_rate": 100}).json()
    texts = body["texts"]
    assert len(texts) == 3 and [t["score"] for t in texts] == sorted((t["score"] for t in texts), reverse=True)
    ecg = _embed_record(inference, _signal(ptbxl_root), 100.0)
    all_scores = inference.embed_texts(api_env.texts) @ ecg
    assert texts[0]["text"] == api_env.texts[int(np.argmax(all_scores))]
    assert texts[0]["score"] == pytest.approx(float(all_scores.max()), abs=1e-4)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_caption_upload(client, ptbxl_root, method):
    response = client.post("/api/caption", params={"method": method}, files=_multipart(_wfdb_files(ptbxl_root)))
    assert response.status_code == 200, response.text
    assert response.json()["method"] == method and isinstance(response.json()["caption"], str)


def test_caption_rejects_unknown_method(client, ptbxl_root):
    response = client.post("/api/caption", params={"method": "sample"}, files=_multipart(_wfdb_files(ptbxl_root)))
    assert response.status_code == 422


def test_plot_upload_png_and_svg(client, ptbxl_root):
    png = client.post("/api/plot", files=_multipart(_wfdb_files(ptbxl_root)))
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    svg = client.post("/api/plot", params={"format": "svg", "layout": "12row"},
                      json={"signal": _signal(ptbxl_root).tolist(), "sampling_rate": 100})
    assert svg.status_code == 200 and b"<svg" in svg.content


# ---- malformed input ------------------------------------------------------------------------------------


def test_wrong_lead_count_is_422_with_reason(client, ptbxl_root):
    response = client.post("/api/classify", json={"signal": _signal(ptbxl_root)[:8].tolist(), "sampling_rate": 100})
    assert response.status_code == 422 and "expected 12 leads, got 8" in response.json()["detail"]
    header = _wfdb_files(ptbxl_root)["00001_lr.hea"].decode().replace("00001_lr 12 ", "00001_lr 3 ", 1)
    response = client.post("/api/classify", files=_multipart({"r.hea": header.encode(), "r.dat": b"\0" * 64}))
    assert response.status_code == 422 and "announces 3 signals but has 12 signal lines" in response.json()["detail"]
    three_leads = "\n".join(header.splitlines()[:4]) + "\n"
    response = client.post("/api/classify", files=_multipart({"r.hea": three_leads.encode(), "r.dat": b"\0" * 64}))
    assert response.status_code == 422 and "expected 12 leads, the header declares 3" in response.json()["detail"]


def test_bad_json_is_400(client):
    response = client.post("/api/classify", content=b'{"signal": [1, 2', headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["detail"]


@pytest.mark.parametrize("body,message", [
    ({"sampling_rate": 100}, "no 'signal'"),
    ({"signal": [[0.0] * 500] * 12}, "no 'sampling_rate'"),
    ({"signal": [[0.0] * 500] * 12, "sampling_rate": 5}, "outside"),
    ({"signal": [[0.0] * 50] * 12, "sampling_rate": 100}, "need >= 1 s"),
    ({"signal": [[0.0] * 500] * 11 + [[0.0] * 499], "sampling_rate": 100}, "different lengths"),
    ({"signal": [["a"] * 500] * 12, "sampling_rate": 100}, "only numbers"),
    ({"signal": [[0.0] * 500] * 12, "sampling_rate": 100, "leads": ["I"] * 12}, "once each"),
    ({"signal": [[0.0] * 12] * 500, "sampling_rate": 100}, "transposed"),
    ({"signal": [[0.0] * 6100] * 12, "sampling_rate": 100}, "limit is 60 s"),
])
def test_invalid_json_signals_are_422(client, body, message):
    response = client.post("/api/classify", content=json.dumps(body).encode(),
                           headers={"content-type": "application/json"})
    assert response.status_code == 422 and message in response.json()["detail"], response.text


def test_nan_signal_is_422(client):
    body = b'{"signal": [' + b",".join([b"[" + b",".join([b"NaN"] * 200) + b"]"] * 12) + b'], "sampling_rate": 100}'
    response = client.post("/api/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "NaN" in response.json()["detail"]


def test_unparseable_header_is_422(client, ptbxl_root):
    files = {"r.hea": b"this is not a header\n", "r.dat": _wfdb_files(ptbxl_root)["00001_lr.dat"]}
    response = client.post("/api/classify", files=_multipart(files))
    assert response.status_code == 422 and "bad header record line 'this is not a header'" in response.json()["detail"]
    files = {"r.hea": b"\x00\x01binary", "r.dat": b"1234"}
    response = client.post("/api/classify", files=_multipart(files))
    assert response.status_code == 422 and "not a WFDB header" in response.json()["detail"]


def test_missing_dat_is_422_naming_the_file(client, ptbxl_root):
    header = _wfdb_files(ptbxl_root)["00001_lr.hea"]
    response = client.post("/api/classify", files=_multipart({"00001_lr.hea": header}))
    assert response.status_code == 422 and "no .dat or .mat signal file" in response.json()["detail"]


def test_truncated_dat_is_422(client, ptbxl_root):
    files = _wfdb_files(ptbxl_root)
    files["00001_lr.dat"] = files["00001_lr.dat"][:1000]
    response = client.post("/api/classify", files=_multipart(files))
    assert response.status_code == 422 and "truncated" in response.json()["detail"]


@pytest.mark.parametrize("files,message", [
    ({}, "content type"),
    ({"notes.txt": b"hello"}, "unsupported file type"),
    ({"ecg.npy": b"not numpy"}, "sampling_rate"),
    ({"a.hea": b"x 12 100 10\n", "b.hea": b"y 12 100 10\n", "a.dat": b""}, "exactly one .hea"),
])
def test_bad_multipart_uploads_are_rejected(client, files, message):
    if files:
        response = client.post("/api/classify", files=_multipart(files))
    else:
        response = client.post("/api/classify", content=b"raw bytes", headers={"content-type": "text/plain"})
    assert response.status_code in (415, 422) and message in response.json()["detail"], response.text


def test_unreadable_npy_is_422(client):
    response = client.post("/api/classify", files=[("files", ("ecg.npy", b"not numpy"))], data={"sampling_rate": "500"})
    assert response.status_code == 422 and "not a readable .npy" in response.json()["detail"]


# ---- size limits ------------------------------------------------------------------------------------------


def test_oversize_body_is_413(client):
    big = b"0" * (LIMIT_BYTES + 1)
    response = client.post("/api/classify", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "too large" in response.json()["detail"]


def test_oversize_chunked_body_without_length_is_413(client):
    def chunks():
        for _ in range(LIMIT_BYTES // 100_000 + 2):
            yield b"0" * 100_000

    response = client.post("/api/classify", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_oversize_multipart_upload_is_413(client, ptbxl_root):
    files = _wfdb_files(ptbxl_root)
    files["00001_lr.dat"] = files["00001_lr.dat"] * (LIMIT_BYTES // len(files["00001_lr.dat"]) + 1)
    response = client.post("/api/classify", files=_multipart(files))
    assert response.status_code == 413


# ---- path traversal ---------------------------------------------------------------------------------------


def test_header_pointing_outside_the_upload_is_never_opened(client, ptbxl_root, tmp_path):
    # A readable record at an absolute path; the header names it, the upload does not contain it.
    victim = tmp_path / "victim.dat"
    victim.write_bytes(_wfdb_files(ptbxl_root)["00001_lr.dat"])
    header = _wfdb_files(ptbxl_root)["00001_lr.hea"].decode().replace("00001_lr.dat", str(victim))
    files = {"r.hea": header.encode(), "decoy1.dat": b"\0" * 24000, "decoy2.dat": b"\0" * 24000}
    response = client.post("/api/classify", files=_multipart(files))
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "not uploaded" in detail and str(tmp_path) not in detail


def test_traversal_names_in_an_upload_are_sanitised(client, ptbxl_root):
    original = _wfdb_files(ptbxl_root)
    header = original["00001_lr.hea"].decode().replace("00001_lr", "../../etc/passwd")
    files = {"../../etc/passwd.hea": header.encode(), "../../etc/passwd.dat": original["00001_lr.dat"]}
    response = client.post("/api/classify", files=_multipart(files))
    assert response.status_code == 200, response.text
    assert response.json()["ecg"]["name"] == "passwd"
    reference = client.post("/api/classify", files=_multipart(original)).json()
    assert response.json()["scores"] == reference["scores"]  # the uploaded bytes were used, nothing else


def test_json_name_is_sanitised(client, ptbxl_root):
    body = {"signal": _signal(ptbxl_root).tolist(), "sampling_rate": 100, "name": "../../../root/.ssh/id_rsa"}
    assert client.post("/api/caption", json=body).json()["ecg"]["name"] == "id_rsa"


# ---- CQA explain -----------------------------------------------------------------------------------------


def test_explain_matches_the_cqa_captioner(client, api_env):
    from cqa.caption import Captioner
    from retrieval.store import KnowledgeStore

    body = client.post("/api/explain", json={"codes": ["AFIB", "LVH"], "vocabulary": "scp", "age": 56,
                                             "sex": "male"}).json()
    assert body["caption"].startswith("56-year-old male.")
    assert {f["id"] for f in body["findings"]} == {"atrial_fibrillation", "lvh"}
    assert body["passages"] and {p["finding"] for p in body["passages"]} == {"atrial_fibrillation", "lvh"}
    assert all(p["entry"] == p["finding"] for p in body["passages"])
    # What `python -m cqa explain --llm none` computes, called directly (the CLI would re-sync this small
    # test store to the full corpus first).
    captioner = Captioner(describer=None, store=KnowledgeStore.open(str(api_env.knowledge_dir)))
    labels = {"AFIB": 100.0, "LVH": 100.0}
    expected = captioner.caption(captioner.normalizer.normalize(labels, "scp"), age=56, sex="male",
                                 labels=labels, with_passages=True)
    assert body["caption"] == expected.caption
    assert [p["text"] for p in body["passages"]] == [p.text for items in expected.passages.values() for p in items]


def test_explain_reports_unknown_labels(client):
    body = client.post("/api/explain", json={"codes": ["NOT_A_CODE"], "vocabulary": "scp"}).json()
    assert body["findings"] == [] and body["unknown_labels"][0]["label"] == "NOT_A_CODE"


@pytest.mark.parametrize("payload", [{}, {"codes": []}, {"codes": ["AFIB"], "sex": "x"},
                                     {"codes": ["AFIB"], "age": -3}, {"codes": ["AFIB"], "vocabulary": "icd"}])
def test_explain_rejects_bad_requests(client, payload):
    assert client.post("/api/explain", json=payload).status_code == 422


def test_classify_with_prototypes_from_the_indexed_ecgs(client, inference, api_env, ptbxl_root):
    """method=prototypes: each class is the mean embedding of the indexed ECGs labelled with it; the scores
    equal a prototype classifier rebuilt from the collection's own embeddings and labels."""
    import json as _json

    from esi.serve.search import open_collection
    from esi.zeroshot import prototype_classifier
    from esi.zeroshot.labelsets import load_labelset

    response = client.post("/api/classify", files=_multipart(_wfdb_files(ptbxl_root)),
                           params={"top_k": 5, "method": "prototypes", "labelset": "ptbxl_rhythm"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "prototypes"
    collection = open_collection(str(api_env.store_dir), "ecg", kind="ecg", inference=inference,
                                 model_dir=str(api_env.model_dir), create=False)
    _, embeddings, metas = collection.items()
    labelset = load_labelset("ptbxl_rhythm")
    labels = [set(_json.loads(m["labels"])) for m in metas]
    y = np.array([[c.id in have for c in labelset.classes] for have in labels], dtype=int)
    expected = prototype_classifier(labelset, embeddings, y).scores(
        _embed_record(inference, _signal(ptbxl_root), 100.0)[None])[0]
    got = {s["class"]: s["score"] for s in body["scores"]}
    assert got == pytest.approx({c: float(v) for c, v in zip(labelset.class_ids, expected) if c in got}, abs=1e-4)
    assert client.post("/api/classify", files=_multipart(_wfdb_files(ptbxl_root)),
                       params={"method": "captions"}).status_code == 422
