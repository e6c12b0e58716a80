from __future__ import annotations

import math

import pytest

from retrieval import EmbeddingModelError, load_embeddings
from retrieval.embeddings import DEFAULT_MODEL_NAME, embeddings_name, torch_threads


def test_default_model_is_minilm_normalised_and_cached(minilm):
    vector = minilm.embed_query("sinus rhythm with right bundle branch block")
    assert len(vector) == 384
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-4)
    assert load_embeddings() is minilm
    assert embeddings_name(minilm) == DEFAULT_MODEL_NAME


def test_similar_sentences_are_closer_than_unrelated(minilm):
    a, b, c = minilm.embed_documents([
        "complete right bundle branch block", "a block of the right bundle branch with a wide QRS",
        "the weather is sunny today",
    ])
    dot = lambda u, v: sum(x * y for x, y in zip(u, v))  # noqa: E731
    assert dot(a, b) > dot(a, c) + 0.2


def test_missing_model_directory_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(EmbeddingModelError, match="no-such-model.*does not exist"):
        load_embeddings(missing)


def test_directory_without_a_model_is_rejected(tmp_path):
    with pytest.raises(EmbeddingModelError, match="not a sentence-transformers model"):
        load_embeddings(tmp_path)


def test_torch_threads_is_scoped():
    import torch

    from retrieval.embeddings import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_idle_threads_leave_busy_cores_alone() -> None:
    """``auto`` query threads: the cores the load leaves free (this process counted), never below one."""
    from retrieval.embeddings import idle_threads

    assert idle_threads(cores=2, load=0.1) == 2  # idle machine: both cores
    assert idle_threads(cores=2, load=1.0) == 2  # only this process runs
    assert idle_threads(cores=2, load=2.0) == 1  # something else holds a core
    assert idle_threads(cores=2, load=9.0) == 1
    assert idle_threads(cores=16, load=4.0) == 13
    with pytest.raises(ValueError, match="positive int"):
        with torch_threads(0):
            pass
