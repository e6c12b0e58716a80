"""The API as a thin layer: documented response models, one explain function shared with ``cqa explain``,
cached services, and uploads read with the corpora readers' rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import wfdb

JSON_ENDPOINTS = {
    ("/api/health", "get"): "HealthResponse",
    ("/api/labelsets", "get"): "LabelSetsResponse",
    ("/api/classify", "post"): "ClassifyResponse",
    ("/api/retrieve", "post"): "RetrieveResponse",
    ("/api/caption", "post"): "CaptionResponse",
    ("/api/analyze", "post"): "AnalyzeResponse",
    ("/api/search", "get"): "SearchResponse",
    ("/api/records/{record_id}", "get"): "RecordDetails",
    ("/api/explain", "post"): "ExplainResponse",
}


def _wfdb_files(ptbxl_root: Path, name: str = "00001_lr") -> list[tuple[str, tuple[str, bytes]]]:
    base = ptbxl_root / "records100" / "00000" / name
    return [("files", (f"{name}{suffix}", base.with_suffix(suffix).read_bytes())) for suffix in (".hea", ".dat")]


def test_every_json_endpoint_documents_its_answer(client):
    spec = client.get("/openapi.json").json()
    components = spec["components"]["schemas"]
    for (path, method), model in JSON_ENDPOINTS.items():
        answer = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer == {"$ref": f"#/components/schemas/{model}"}, (path, answer)
        assert components[model]["properties"], model
        if path not in ("/api/health", "/api/labelsets"):  # the others can refuse their input
            error = spec["paths"][path][method]["responses"]["422"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorResponse"}, path
    assert set(components["ClassScore"]["properties"]) == {"class", "display", "score", "probability"}


def test_answers_hold_exactly_the_documented_fields(client, api_env, ptbxl_root):
    """Optional fields appear only when set: no ``caption_error`` when a caption was made, no ``stale``."""
    spec = client.get("/openapi.json").json()["components"]["schemas"]

    def fields(model: str) -> set[str]:
        return set(spec[model]["properties"])

    health = client.get("/api/health").json()
    assert set(health) == fields("HealthResponse") - {"stale"}
    classify = client.post("/api/classify", files=_wfdb_files(ptbxl_root)).json()
    assert set(classify) == fields("ClassifyResponse") and set(classify["ecg"]) == fields("ECGInfo")
    record = client.get(f"/api/records/{api_env.item_ids[0]}").json()
    assert set(record) == fields("RecordDetails") - {"caption_error"} and isinstance(record["caption"], str)
    analyze = client.post("/api/analyze", files=_wfdb_files(ptbxl_root)).json()
    assert set(analyze) == fields("AnalyzeResponse") - {"caption_error", "plot_error"}
    assert set(analyze["similar"][0]) == fields("ECGHit")


def test_api_explain_and_cqa_explain_cli_give_the_same_answer(client, api_env, monkeypatch, capsys):
    """Both go through cqa.explain.explain_labels: the CLI's --json output equals the API's answer."""
    import cqa.__main__ as cli
    import cqa.explain
    from cqa.caption import Captioner
    from retrieval.store import KnowledgeStore

    calls: list[tuple] = []
    shared = cqa.explain.explain_labels

    def spy(*args, **kwargs):
        calls.append((args[1:], kwargs))
        return shared(*args, **kwargs)

    monkeypatch.setattr(cqa.explain, "explain_labels", spy)
    # the CLI would re-sync this small store to the full corpus first; hand it the same grounded captioner
    monkeypatch.setattr(cli, "build_captioner", lambda args, need_store: Captioner(
        describer=None, store=KnowledgeStore.open(str(api_env.knowledge_dir))))
    request = {"codes": ["AFIB", "LVH"], "vocabulary": "scp", "age": 56, "sex": "male",
               "statements": ["left axis deviation"]}
    api = client.post("/api/explain", json=request).json()
    assert cli.main(["explain", "--codes", "AFIB,LVH", "--vocabulary", "scp", "--age", "56", "--sex", "male",
                     "--statement", "left axis deviation", "--llm", "none", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(calls) == 2 and calls[0] == calls[1]
    assert api.pop("knowledge_store") is True
    assert {key: printed[key] for key in api} == api
    assert {f["id"] for f in api["findings"]} >= {"atrial_fibrillation", "lvh"}


def test_services_cache_record_reads_plots_and_query_embeddings(app, api_env):
    backend = app.state.backend
    item = api_env.item_ids[3]
    first = backend.record_plot(item, "3x4", "png")
    assert backend.record_plot(item, "3x4", "png") is first
    assert backend.plots.record_plot.cache_info().hits >= 1
    backend.collection.record.cache_clear()
    record = backend.collection.record(item)
    assert backend.collection.record(item) is record and backend.collection.record.cache_info().hits == 1
    query = "left bundle branch block, cache test"
    vector = backend.model.query_embedding(query)
    assert backend.model.query_embedding(query) is vector
    np.testing.assert_allclose(vector, backend.inference.query_embedding(query), atol=1e-6)
    from esi.serve.api.backend import NotFound

    for _ in range(2):  # a failed lookup is not cached: it fails again, with the same reason
        with pytest.raises(NotFound, match="no ECG with id"):
            backend.collection.record("ptbxl:no-such-record")


def test_upload_units_and_demographics_follow_the_corpora_readers(cinc_root, tmp_path):
    """A CinC record uploaded (.hea + .mat) and read from disk by load_record: same mV signal, age and sex;
    a header in a unit that is no voltage is refused by both."""
    from esi.serve.api.uploads import UploadError, parse_upload
    from esi.serve.inference import InputError, load_record

    files = {name: (cinc_root / name).read_bytes() for name in ("A0001.hea", "A0001.mat")}
    parsed = parse_upload(files)
    record = load_record(cinc_root / "A0001")
    np.testing.assert_allclose(parsed.signal, record.signal, atol=1e-6)
    assert (parsed.age, parsed.sex) == (record.age, record.sex) == (74.0, "male")

    header = files["A0001.hea"].decode()
    assert "/mV" in header
    spoiled = {"A0001.hea": header.replace("/mV", "/NU").encode(), "A0001.mat": files["A0001.mat"]}
    with pytest.raises(UploadError, match="not a voltage"):
        parse_upload(spoiled)
    for name, data in spoiled.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(InputError, match="not a voltage"):
        load_record(tmp_path / "A0001")


@pytest.mark.parametrize(("value", "expected"), [("74", 74.0), (" 56.5 ", 56.5), ("NaN", None), ("-1", None),
                                                 ("unknown", None), (None, None)])
def test_upload_ages_are_parsed_as_the_readers_parse_them(ptbxl_root, value, expected):
    from corpora.base import parse_age
    from esi.serve.api.uploads import parse_json_signal

    signal = wfdb.rdrecord(str(ptbxl_root / "records100" / "00000" / "00001_lr")).p_signal.T
    parsed = parse_json_signal({"signal": signal.tolist(), "sampling_rate": 100, "age": value, "sex": " Female"}, 60)
    assert parsed.age == parse_age(value) == expected and parsed.sex == "female"
