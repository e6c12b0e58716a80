"""A generic cosine-similarity vector collection over Chroma, for vectors computed by the caller.

Why: ESI stores ECG and text embeddings it computes itself (no text embedding function). The collection
is created with ``embedding_function=None`` so Chroma never falls back to its default, downloading
embedding function, and with the cosine space so scores are cosine similarities.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from chromadb.api import ClientAPI
from chromadb.errors import NotFoundError

from retrieval.client import open_client

DEFAULT_BATCH_SIZE = 1024


class VectorCollectionError(ValueError):
    """Bad input to a :class:`VectorCollection`; the message names the collection and the problem."""


@dataclass(frozen=True)
class Hit:
    """One query result: ``score`` is the cosine similarity (1 - Chroma's cosine distance), higher is better."""

    id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    document: str | None = None


class VectorCollection:
    """A Chroma collection in cosine space holding caller-given embeddings.

    ``location`` is a Chroma client, a directory (embedded store) or an ``http://host:port`` server.
    """

    def __init__(
        self, location: ClientAPI | str | os.PathLike[str], name: str, *, create: bool = True,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.client = location if isinstance(location, ClientAPI) else open_client(location, create=create)
        self.name = name
        if create:
            self._collection = self.client.get_or_create_collection(
                name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}},
                metadata=dict(metadata) if metadata else None,
            )
        else:
            try:
                self._collection = self.client.get_collection(name, embedding_function=None)
            except NotFoundError as err:
                raise VectorCollectionError(f"collection {name!r} does not exist") from err
        space = self._space()
        if space not in (None, "cosine"):
            raise VectorCollectionError(f"collection {name!r} uses distance {space!r}, expected 'cosine'")

    def _space(self) -> str | None:
        config = self._collection.configuration or {}
        for key in ("hnsw", "spann"):
            sub = config.get(key)
            if sub and sub.get("space"):
                return str(sub["space"])
        return None

    @property
    def metadata(self) -> dict[str, Any]:
        """The collection-level metadata stored in Chroma (e.g. what a caller recorded at creation)."""
        return dict(self._collection.metadata or {})

    @property
    def dimension(self) -> int | None:
        """The embedding width of the stored vectors (None while empty and unset)."""
        dim = getattr(self._collection, "dimension", None)
        if dim:
            return int(dim)
        sample = self._collection.get(limit=1, include=["embeddings"])
        embeddings = sample.get("embeddings")
        return len(embeddings[0]) if embeddings is not None and len(embeddings) else None

    def count(self) -> int:
        return int(self._collection.count())

    def _matrix(self, embeddings: Any, what: str) -> np.ndarray:
        try:
            matrix = np.asarray(embeddings, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise VectorCollectionError(f"{self.name}: {what} are not numeric vectors: {err}") from err
        if matrix.ndim == 1:
            matrix = matrix[None, :]
        if matrix.ndim != 2 or matrix.shape[1] == 0:
            raise VectorCollectionError(f"{self.name}: {what} must be a 1-D vector or a 2-D matrix, "
                                        f"got shape {matrix.shape}")
        if not np.isfinite(matrix).all():
            raise VectorCollectionError(f"{self.name}: {what} contain NaN or infinite values")
        if (np.linalg.norm(matrix, axis=1) == 0).any():
            raise VectorCollectionError(f"{self.name}: {what} contain an all-zero vector (no cosine direction)")
        dim = self.dimension
        if dim is not None and matrix.shape[1] != dim:
            raise VectorCollectionError(
                f"{self.name}: {what} have dimension {matrix.shape[1]}, the collection holds dimension {dim}"
            )
        return matrix

    def add(
        self, ids: Sequence[str], embeddings: Any, metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        documents: Sequence[str | None] | None = None, *, batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> int:
        """Upsert vectors (existing ids are overwritten) in batches; returns how many were written."""
        ids = [str(i) for i in ids]
        matrix = self._matrix(embeddings, "embeddings")
        if len(ids) != len(matrix):
            raise VectorCollectionError(f"{self.name}: {len(ids)} ids but {len(matrix)} embeddings")
        if len(set(ids)) != len(ids):
            raise VectorCollectionError(f"{self.name}: duplicate ids in one add() call")
        for name, values in (("metadatas", metadatas), ("documents", documents)):
            if values is not None and len(values) != len(ids):
                raise VectorCollectionError(f"{self.name}: {len(ids)} ids but {len(values)} {name}")
        step = max(1, min(batch_size, self.client.get_max_batch_size()))
        for start in range(0, len(ids), step):
            stop = start + step
            self._collection.upsert(
                ids=ids[start:stop],
                embeddings=matrix[start:stop],
                metadatas=[dict(m) if m else None for m in metadatas[start:stop]] if metadatas else None,
                documents=list(documents[start:stop]) if documents is not None else None,
            )
        return len(ids)

    def query(self, embedding: Any, k: int = 10, where: Mapping[str, Any] | None = None) -> Any:
        """Nearest neighbours by cosine similarity, best first.

        A 1-D ``embedding`` -> ``list[Hit]``; a 2-D matrix -> ``list[list[Hit]]`` (one list per row).
        An empty collection (or a filter matching nothing) gives empty lists, not an error.
        """
        single = np.ndim(embedding) == 1
        results = self.query_batch(embedding, k=k, where=where)
        return results[0] if single else results

    def query_batch(self, embeddings: Any, k: int = 10, where: Mapping[str, Any] | None = None) -> list[list[Hit]]:
        """Like :meth:`query` for a matrix of query vectors, always one list of hits per row."""
        if not isinstance(k, int) or k < 1:
            raise VectorCollectionError(f"{self.name}: k must be a positive integer, got {k!r}")
        matrix = self._matrix(embeddings, "query embeddings")
        total = self.count()
        if total == 0:
            return [[] for _ in range(len(matrix))]
        result = self._collection.query(
            query_embeddings=matrix, n_results=min(k, total), where=dict(where) if where else None,
            include=["metadatas", "documents", "distances"],
        )
        hits: list[list[Hit]] = []
        for row in range(len(matrix)):
            ids = result["ids"][row]
            distances = result["distances"][row] if result.get("distances") else [math.nan] * len(ids)
            metas = result["metadatas"][row] if result.get("metadatas") else [None] * len(ids)
            docs = result["documents"][row] if result.get("documents") else [None] * len(ids)
            hits.append([
                Hit(id=i, score=1.0 - float(d), metadata=dict(m or {}), document=doc)
                for i, d, m, doc in zip(ids, distances, metas, docs)
            ])
        return hits

    def items(self, batch: int = 5000) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
        """Every stored id, embedding and metadata (paged, so a large collection is read in batches)."""
        ids: list[str] = []
        vectors: list[np.ndarray] = []
        metas: list[dict[str, Any]] = []
        for offset in range(0, self.count(), batch):
            page = self._collection.get(include=["embeddings", "metadatas"], limit=batch, offset=offset)
            ids += page["ids"]
            vectors.append(np.asarray(page["embeddings"], dtype=np.float32).reshape(len(page["ids"]), -1))
            metas += [dict(m or {}) for m in page["metadatas"]]
        matrix = np.concatenate(vectors) if vectors else np.zeros((0, self.dimension() or 0), np.float32)
        return ids, matrix, metas

    def get(self, ids: Sequence[str]) -> list[Hit]:
        """Stored records by id (score 1.0); unknown ids are left out."""
        result = self._collection.get(ids=list(ids), include=["metadatas", "documents"])
        return [Hit(id=i, score=1.0, metadata=dict(m or {}), document=d)
                for i, m, d in zip(result["ids"], result["metadatas"], result["documents"])]

    def delete(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None) -> None:
        """Delete by ids and/or metadata filter (at least one is required, to avoid wiping by accident)."""
        if not ids and not where:
            raise VectorCollectionError(f"{self.name}: delete() needs ids or where; use drop() to remove all")
        self._collection.delete(ids=list(ids) if ids else None, where=dict(where) if where else None)

    def drop(self) -> None:
        """Delete the whole collection from the client."""
        self.client.delete_collection(self.name)
