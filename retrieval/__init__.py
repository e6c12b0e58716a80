"""Retrieval layer: offline sentence embeddings + Chroma (embedded or server) through LangChain.

Public API::

    from retrieval import KnowledgeStore, load_embeddings, VectorCollection, open_client
    store = KnowledgeStore.build("runs/kb", docs=["my_textbook.pdf"])   # or KnowledgeStore.open("runs/kb")
    findings = store.search_findings("M-shaped QRS in V1", k=5)   # 5 distinct findings, best passages each
    passages = store.search("M-shaped QRS in V1", k=5, where={"code": "CRBBB"})   # the raw chunk view
    chain = store.retriever(k=5) | format_documents
"""

from retrieval.chunking import DocumentError
from retrieval.client import ClientError, open_client
from retrieval.embeddings import DEFAULT_MODEL_NAME, EmbeddingModelError, load_embeddings
from retrieval.ranking import RankingParams
from retrieval.store import (
    MAX_QUERY_CHARS,
    BuildReport,
    EmbeddingMismatchError,
    FindingResult,
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
    "EmbeddingMismatchError", "EmbeddingModelError", "FindingResult", "Hit", "KnowledgeRetriever", "KnowledgeStore",
    "Passage", "QueryError", "RankingParams", "StoreError", "StoreIncompleteError", "VectorCollection", "VectorCollectionError",
    "format_documents", "load_embeddings", "open_client", "translate_where",
]
