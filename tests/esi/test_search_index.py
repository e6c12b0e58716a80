"""Text -> ECG search and ECG -> text retrieval over Chroma with a tiny random ESI model.

An untrained model ranks arbitrarily, so these tests check the mechanics: an exact embedding query
returns its own record first, metadata survives the round trip, results are ordered, indexing is
resumable, an empty collection gives no hits, and a mismatched collection is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from corpora.ptbxl import PTBXLReader
from esi.cli.main import main
from esi.serve.inference import ESIInference
from esi.serve.search import (
    ECGIndex,
    SearchError,
    TextIndex,
    ephemeral_client,
    knowledge_texts,
    open_collection,
)


@pytest.fixture(scope="module")
def inference(model_dir: Path) -> ESIInference:
    return ESIInference(model_dir)


def test_index_and_search_round_trip(inference: ESIInference, model_dir: Path, ptbxl_root: Path,
                                     tmp_path: Path) -> None:
    reader = PTBXLReader(ptbxl_root)
    ids = reader.record_ids()[:12]
    collection = open_collection(tmp_path / "store", "ptbxl-test", kind="ecg", inference=inference,
                                 model_dir=model_dir)
    index = ECGIndex(inference, collection)
    first = index.index_reader(reader, ids[:8], chunk_size=5, progress=False)
    assert (first.added, first.already_indexed, first.total) == (8, 0, 8)
    again = index.index_reader(reader, ids, chunk_size=5, progress=False)  # resumable: only the new 4
    assert (again.added, again.already_indexed, again.total) == (4, 8, 12)

    record = reader.read("8")
    embedding, prepared = inference.embed_records([record])
    hits = index.search_embedding(embedding[0], k=3)
    assert hits[0].id == "ptbxl:8" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    meta = hits[0].metadata
    assert meta["record_id"] == "8" and meta["dataset"] == "ptbxl" and meta["fold"] == 9
    assert json.loads(meta["labels"]) == {"IMI": 35.0, "ABQRS": 0.0, "SR": 0.0}
    assert meta["sex"] in ("male", "female") and isinstance(meta["age"], float)
    assert Path(meta["path"]).with_suffix(".hea").is_file()

    text_hits = index.search("inferior myocardial infarction", k=5)
    assert len(text_hits) == 5
    scores = [h.score for h in text_hits]
    assert scores == sorted(scores, reverse=True)
    assert len({h.id for h in text_hits}) == 5
    with pytest.raises(SearchError, match="empty"):
        index.search("   ")


def test_empty_collection_gives_no_hits(inference: ESIInference, tmp_path: Path) -> None:
    index = ECGIndex(inference, open_collection(tmp_path / "store", "empty-one", kind="ecg", inference=inference))
    assert index.search("sinus rhythm", k=5) == []
    texts = TextIndex(inference, open_collection(ephemeral_client(), "esi-empty-texts", kind="text",
                                                 inference=inference))
    assert texts.retrieve(np.ones(inference.embed_dim), k=3) == []


def test_mismatched_collections_are_refused(inference: ESIInference, tmp_path: Path) -> None:
    store = tmp_path / "store"
    other = open_collection(store, "other-dim", kind="ecg")
    other.add(["a"], np.ones((1, 8), np.float32), [{"record_id": "a"}])
    with pytest.raises(SearchError, match="holds 8-d embeddings but the model produces 256-d"):
        open_collection(store, "other-dim", kind="ecg", inference=inference)
    open_collection(store, "texts-here", kind="text")
    with pytest.raises(SearchError, match="holds 'text' items, not 'ecg'"):
        open_collection(store, "texts-here", kind="ecg")
    with pytest.raises(SearchError, match="collection name 'x' is invalid"):
        open_collection(store, "x", kind="ecg")


def test_a_collection_refuses_other_weights_of_the_same_model_dir(inference: ESIInference, model_dir: Path,
                                                                  tmp_path: Path) -> None:
    """Retraining into the same directory changes the weights: the old vectors must not answer silently."""
    import shutil
    import warnings

    from safetensors.torch import load_file, save_file

    model = shutil.copytree(model_dir, tmp_path / "model")
    store = tmp_path / "store"
    open_collection(store, "fold9", kind="ecg", inference=inference, model_dir=model)
    moved = shutil.copytree(model, tmp_path / "same-weights-elsewhere")
    with warnings.catch_warnings(record=True) as caught:  # the same weights under another path are fine, silently
        warnings.simplefilter("always")
        open_collection(store, "fold9", kind="ecg", inference=inference, model_dir=moved)
    assert not [w for w in caught if "built with model" in str(w.message)]
    weights = load_file(str(model / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, str(model / "model.safetensors"))
    with pytest.raises(SearchError, match="indexed with other weights .* index the ECGs again"):
        open_collection(store, "fold9", kind="ecg", inference=inference, model_dir=model)


def test_knowledge_passages_retrieval(inference: ESIInference) -> None:
    items = knowledge_texts()
    index = TextIndex(inference, open_collection(ephemeral_client(), "esi-kb-test", kind="text",
                                                 inference=inference))
    assert index.add_texts(items[:20]) == 20
    assert index.add_texts(items[:25]) == 5  # already embedded ones are skipped
    target = inference.embed_texts([items[3].text])[0]
    hits = index.retrieve(target, k=4)
    assert hits[0].id == items[3].id and hits[0].document == items[3].text


def test_index_and_search_cli(model_dir: Path, ptbxl_root: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:
    store = str(tmp_path / "cli-store")
    assert main(["index-ecgs", "--model", str(model_dir), "--dataset", "ptbxl", "--root", str(ptbxl_root),
                 "--collection", "ptbxl-fold9", "--store", store, "--folds", "9", "--limit", "6", "--quiet"]) == 0
    assert "6 ECGs added" in capsys.readouterr().out
    assert main(["search", "--model", str(model_dir), "--collection", "ptbxl-fold9", "--store", store, "-k", "4",
                 "--json", "atrial fibrillation"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["hits"]) == 4
    assert all(h["metadata"]["fold"] == 9 and isinstance(h["metadata"]["labels"], dict) for h in result["hits"])
    assert main(["search", "--model", str(model_dir), "--collection", "nowhere", "--store", store,
                 "sinus rhythm"]) == 2
    assert "does not exist" in capsys.readouterr().err
    # queries the English text tower cannot read are refused with the knowledge store's reasons, not ranked
    for query, reason in (("фибрилляция предсердий", "no Latin letters"), ("a" * 10_000, "the limit is"),
                          ("atrial \udcff fibrillation", "not valid Unicode")):
        assert main(["search", "--model", str(model_dir), "--collection", "ptbxl-fold9", "--store", store,
                     query]) == 2
        assert reason in capsys.readouterr().err
    assert main(["search", "--model", str(model_dir), "--collection", "ptbxl-fold9", "--store", store, "-k", "2",
                 "--json", "ＡＦ"]) == 0  # full-width letters are folded (NFKC), not refused
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 2
