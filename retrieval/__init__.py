"""Retrieval layer: offline sentence embeddings + Chroma (embedded or server) through LangChain.

Public API::

    from retrieval import KnowledgeStore, load_embeddings, VectorCollection, open_client
    store = KnowledgeStore.build("runs/kb", docs=["my_textbook.pdf"])   # or KnowledgeStore.open("runs/kb")
    passages = store.search("M-shaped QRS in V1", k=5, where={"code": "CRBBB"})
    chain = store.retriever(k=5) | format_documents
"""

from retrieval.chunking import DocumentError
from retrieval.client import ClientError, open_client
from retrieval.embeddings import DEFAULT_MODEL_NAME, EmbeddingModelError, load_embeddings
from retrieval.store import (
    MAX_QUERY_CHARS,
    BuildReport,
    EmbeddingMismatchError,
    KnowledgeRetriever,
    KnowledgeStore,
    Passage,
    QueryError,
    StoreError,
    StoreIncompleteError,
    format_documents,
    translate_where,
)
from retrieval.vectors import Hit, VectorCollection, VectorCollectionError

__all__ = [
    "DEFAULT_MODEL_NAME", "MAX_QUERY_CHARS", "BuildReport", "ClientError", "DocumentError",
    "EmbeddingMismatchError", "EmbeddingModelError", "Hit", "KnowledgeRetriever", "KnowledgeStore", "Passage",
    "QueryError", "StoreError", "StoreIncompleteError", "VectorCollection", "VectorCollectionError",
    "format_documents", "load_embeddings", "open_client", "translate_where",
]
