from __future__ import annotations

import numpy as np
import pytest

from retrieval import VectorCollection, VectorCollectionError, open_client


@pytest.fixture
def collection(tmp_path) -> VectorCollection:
    return VectorCollection(tmp_path / "vectors", "ecg-test")


def test_empty_collection_query_returns_no_hits(collection):
    assert collection.count() == 0
    assert collection.query(np.ones(8), k=3) == []
    assert collection.query(np.ones((2, 8)), k=3) == [[], []]


def test_add_in_batches_and_query_by_cosine(collection):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(7, 8)).astype(np.float32)
    ids = [f"rec{i}" for i in range(7)]
    metas = [{"label": "NORM" if i % 2 else "MI", "i": i} for i in range(7)]
    assert collection.add(ids, vectors, metas, [f"doc {i}" for i in range(7)], batch_size=3) == 7
    assert collection.count() == 7
    assert collection.dimension == 8

    hits = collection.query(vectors[4] * 5.0, k=3)  # scale does not matter for cosine
    assert [h.id for h in hits][0] == "rec4"
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].metadata == {"label": "MI", "i": 4} and hits[0].document == "doc 4"
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = sorted(range(7), key=lambda i: -float(unit[i] @ unit[4]))[:3]
    assert [h.id for h in hits] == [f"rec{i}" for i in expected]
    assert [h.score for h in hits] == pytest.approx([float(unit[i] @ unit[4]) for i in expected], abs=1e-4)

    filtered = collection.query(vectors[4], k=10, where={"label": "NORM"})
    assert {h.id for h in filtered} == {"rec1", "rec3", "rec5"}
    both = collection.query_batch(vectors[:2], k=1)
    assert [row[0].id for row in both] == ["rec0", "rec1"]

    collection.add(["rec4"], -vectors[4], [{"label": "MI", "i": 40}])  # upsert overwrites
    assert collection.count() == 7
    assert collection.get(["rec4"])[0].metadata["i"] == 40
    collection.delete(ids=["rec0", "rec1"])
    assert collection.count() == 5
    collection.delete(where={"label": "NORM"})
    assert collection.count() == 3


def test_bad_vectors_are_rejected_clearly(collection):
    collection.add(["a"], np.ones(4))
    with pytest.raises(VectorCollectionError, match="dimension 5.*dimension 4"):
        collection.add(["b"], np.ones(5))
    with pytest.raises(VectorCollectionError, match="NaN"):
        collection.add(["b"], np.array([1.0, np.nan, 0.0, 0.0]))
    with pytest.raises(VectorCollectionError, match="all-zero"):
        collection.query(np.zeros(4))
    with pytest.raises(VectorCollectionError, match="2 ids but 1 embeddings"):
        collection.add(["b", "c"], np.ones((1, 4)))
    with pytest.raises(VectorCollectionError, match="needs ids or where"):
        collection.delete()


def test_reopen_existing_collection_and_missing_one(tmp_path):
    client = open_client(tmp_path / "db")
    VectorCollection(client, "persisted").add(["x"], np.ones(3))
    again = VectorCollection(tmp_path / "db", "persisted", create=False)
    assert again.count() == 1
    assert again._collection._embedding_function is None  # never Chroma's downloading default
    with pytest.raises(VectorCollectionError, match="does not exist"):
        VectorCollection(client, "absent", create=False)
