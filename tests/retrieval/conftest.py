"""Fixtures for the retrieval tests: MiniLM, a small fake embedder, and one full store per session."""

from __future__ import annotations

import hashlib
import math
import re
import shutil
from pathlib import Path

import pytest
from langchain_core.embeddings import Embeddings

from corpora.knowledge import entries_dir
from retrieval import KnowledgeStore, load_embeddings


class HashEmbeddings(Embeddings):
    """Deterministic bag-of-words hashing embedder (no model): used to build stores of another 'model'."""

    def __init__(self, dimension: int = 16, salt: str = "") -> None:
        self.dimension = dimension
        self.salt = salt
        self.model_name = f"hash-{dimension}{salt}"

    def _vector(self, text: str) -> list[float]:
        vector = [0.0] * self.dimension
        vector[0] = 1.0  # never all-zero
        for token in re.findall(r"\w+", text.lower()):
            digest = hashlib.sha256((self.salt + token).encode()).digest()
            vector[digest[0] % self.dimension] += 1.0 if digest[1] % 2 else -1.0
        norm = math.sqrt(sum(x * x for x in vector))
        return [x / norm for x in vector]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vector(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)


@pytest.fixture(scope="session")
def minilm() -> Embeddings:
    return load_embeddings()


@pytest.fixture(scope="session")
def knowledge_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen copy of the corpus, so a store built from it stays comparable during the session."""
    folder = tmp_path_factory.mktemp("knowledge") / "entries"
    folder.mkdir()
    for path in sorted(entries_dir().glob("*.md")):
        shutil.copy2(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def built_store(tmp_path_factory: pytest.TempPathFactory, minilm: Embeddings, knowledge_snapshot: Path):
    """The full knowledge corpus embedded with MiniLM, built once per test session."""
    store_dir = tmp_path_factory.mktemp("kb")
    return KnowledgeStore.build(store_dir, embeddings=minilm, knowledge_dir=knowledge_snapshot, progress=False)


@pytest.fixture(scope="session")
def hash_embeddings() -> type[HashEmbeddings]:
    """The :class:`HashEmbeddings` class (tests/ is not a package, so tests get it through a fixture)."""
    return HashEmbeddings


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests on the full embedded corpus share a >20 s build: mark them slow (they still run in CI)."""
    for item in items:
        if "built_store" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
