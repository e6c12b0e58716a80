"""The persistent knowledge store: the ECG knowledge corpus plus user documents in Chroma, via LangChain.

Layout of a directory store ``DIR``::

    DIR/manifest.json   embedding model + dimension + probe vector, knowledge_version, complete flag
    DIR/chroma/         the Chroma persistent database (collection "ecg-knowledge")

With a Chroma server (``http://host:port`` or a client object) the same manifest is kept as JSON in the
collection's metadata (key ``esi_manifest``).

Ranking is hybrid, because all-MiniLM-L6-v2 alone knows little ECG vocabulary (on our eval set dense-only
recall@5 was ~0.72): Chroma (through LangChain) returns the ``DENSE_CANDIDATES`` nearest chunks by cosine
similarity, which are re-ranked by

    score = dense + LEXICAL_WEIGHT * lexical

where ``dense`` is the cosine similarity of the (L2-normalised) query and chunk embeddings (1 - Chroma's
cosine distance, in [-1, 1]) and ``lexical`` is the TF-IDF cosine similarity (scikit-learn, sublinear tf,
English stop words removed, single letters kept so "P", "Q", "T" waves count) between the query and the chunk,
fitted over all chunks in the store (in [0, 1]). Higher is better; ``Passage.dense_score`` and
``Passage.lexical_score`` keep the two parts. ``max_per_entry`` caps how many chunks of one knowledge entry are
returned (None: no cap; 1: the top-k are k distinct findings, what the entry-level evaluation uses).

Building is a sync: the store ends up holding exactly the chunks of the built-in corpus plus the given
documents. Chunk ids are content hashes, so unchanged chunks are kept (not re-embedded), chunks of changed or
removed sources are deleted, and building twice with the same input changes nothing. The manifest is written
with ``complete: false`` before any change and ``complete: true`` after; a store whose manifest is missing or
incomplete (a crash mid-build) is refused by :meth:`KnowledgeStore.open` and rebuilt from scratch by
:meth:`KnowledgeStore.build`; so is a store built with a different embedding model.

Filters (``where``): Chroma ``where`` syntax over the metadata keys ``entry``, ``name``, ``category``,
``section``, ``source``, ``page``, plus the virtual key ``code``: ``{"code": "CRBBB"}`` becomes
``{"code_list": {"$contains": "CRBBB"}}`` (Chroma array metadata); ``{"code": {"$in": [..]}}`` becomes an
``$or`` of those. Several keys in one dict are combined with ``$and``. Unknown keys are an error (a typo would
otherwise silently match nothing).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chromadb.api import ClientAPI
from langchain_chroma import Chroma
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict
from tqdm.auto import tqdm

from corpora.knowledge import knowledge_version, load_entries
from retrieval.chunking import (
    Chunk,
    decode_codes,
    document_chunks,
    expand_documents,
    knowledge_chunks,
)
from retrieval.client import ClientError, collection_names, is_url, open_client
from retrieval.embeddings import embeddings_name, load_embeddings, torch_threads

DEFAULT_COLLECTION = "ecg-knowledge"
MANIFEST_FILE = "manifest.json"
CHROMA_SUBDIR = "chroma"
MANIFEST_METADATA_KEY = "esi_manifest"
MANIFEST_FORMAT = 1
MAX_QUERY_CHARS = 2000
MAX_K = 200
ADD_BATCH = 64
DENSE_CANDIDATES = 50
LEXICAL_WEIGHT = 1.0
QUERY_TORCH_THREADS = 1  # single-query embedding runs single-threaded (see embeddings.torch_threads)
PROBE_TEXT = "probe: sinus rhythm with complete right bundle branch block"
PROBE_MIN_COSINE = 0.98
FILTER_KEYS = ("entry", "name", "category", "section", "source", "page", "code")


class StoreError(ValueError):
    """A store is missing, broken or incompatible; the message names the store and what to do."""


class StoreIncompleteError(StoreError):
    """The manifest is missing or says the last build did not finish."""


class EmbeddingMismatchError(StoreError):
    """The store was built with a different embedding model (dimension or vectors differ)."""


class QueryError(ValueError):
    """A query or filter is unusable (empty, too long, unknown filter key)."""


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk. ``score`` = cosine similarity (higher is better); ``page`` is 1-based or None."""

    text: str
    score: float
    entry: str
    codes: tuple[str, ...]
    section: str
    source: str
    page: int | None
    category: str
    name: str = ""
    id: str = ""
    dense_score: float = 0.0
    lexical_score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["codes"] = list(self.codes)
        return data


@dataclass
class BuildReport:
    """What a build changed, counted in chunks."""

    added: int = 0
    unchanged: int = 0
    removed: int = 0
    total: int = 0
    sources: int = 0
    rebuilt: bool = False
    reason: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        text = (f"added {self.added}, unchanged {self.unchanged}, removed {self.removed} chunks; "
                f"{self.total} chunks from {self.sources} sources")
        return text + (f" (rebuilt from scratch: {self.reason})" if self.rebuilt else "")


# --------------------------------------------------------------------------------------------- manifest


@dataclass
class _Location:
    """Where a store lives: its Chroma client and how its manifest is kept."""

    client: ClientAPI
    collection: str
    label: str
    manifest_path: Path | None = None  # None -> manifest lives in the collection metadata

    def read_manifest(self) -> dict[str, Any] | None:
        if self.manifest_path is not None:
            if not self.manifest_path.is_file():
                return None
            try:
                return json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                return None  # a torn or unreadable manifest means the same as none: rebuild
        if not self.has_collection():
            return None
        raw = (self.client.get_collection(self.collection, embedding_function=None).metadata or {}).get(
            MANIFEST_METADATA_KEY)
        try:
            return json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        text = json.dumps(manifest, indent=1, sort_keys=True)
        if self.manifest_path is not None:
            fd, tmp = tempfile.mkstemp(dir=self.manifest_path.parent, prefix=".manifest-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.manifest_path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        collection = self.client.get_collection(self.collection, embedding_function=None)
        collection.modify(metadata={MANIFEST_METADATA_KEY: text})

    def has_collection(self) -> bool:
        return self.collection in collection_names(self.client)

    def drop_collection(self) -> None:
        if self.has_collection():
            self.client.delete_collection(self.collection)


def _locate(
    store: str | os.PathLike[str] | ClientAPI | None, client: ClientAPI | None, collection: str, *, create: bool,
) -> _Location:
    if client is not None:
        return _Location(client, collection, f"Chroma client collection {collection!r}")
    if isinstance(store, ClientAPI):
        return _Location(store, collection, f"Chroma client collection {collection!r}")
    if store is None:
        raise StoreError("no store given: pass a directory, an http://host:port address or a Chroma client")
    if is_url(store):
        return _Location(open_client(str(store)), collection, f"{store} collection {collection!r}")
    root = Path(store).expanduser()
    if not create and not (root / CHROMA_SUBDIR).is_dir():
        raise StoreError(f"no knowledge store at {str(root)!r}; build it with "
                         f"`python -m retrieval build --store {root}`")
    root.mkdir(parents=True, exist_ok=True)
    try:
        chroma = open_client(root / CHROMA_SUBDIR, create=True)
    except ClientError as err:
        raise StoreError(str(err)) from err
    return _Location(chroma, collection, str(root), root / MANIFEST_FILE)


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def _fingerprint(embeddings: Embeddings) -> dict[str, Any]:
    probe = embeddings.embed_query(PROBE_TEXT)
    return {"embedding_model": embeddings_name(embeddings), "dimension": len(probe),
            "probe": [round(float(x), 6) for x in probe]}


def _incompatibility(manifest: Mapping[str, Any], fingerprint: Mapping[str, Any]) -> str | None:
    """Why vectors in a store built per ``manifest`` cannot be compared with this model's (None if they can)."""
    if manifest.get("dimension") != fingerprint["dimension"]:
        return (f"store embeddings have dimension {manifest.get('dimension')} "
                f"(model {manifest.get('embedding_model')!r}), the given model "
                f"{fingerprint['embedding_model']!r} produces dimension {fingerprint['dimension']}")
    similarity = _cosine(manifest.get("probe") or [], fingerprint["probe"])
    if similarity < PROBE_MIN_COSINE:
        return (f"store was built with embedding model {manifest.get('embedding_model')!r}, the given model "
                f"{fingerprint['embedding_model']!r} embeds differently (probe cosine {similarity:.3f})")
    return None


# ------------------------------------------------------------------------------------------------ filters


def translate_where(where: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Our filter syntax (see module doc) -> a Chroma ``where`` dict."""
    if not where:
        return None
    if not isinstance(where, Mapping):
        raise QueryError(f"where must be a dict, got {type(where).__name__}")
    clauses: list[dict[str, Any]] = []
    for key, value in where.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise QueryError(f"{key} needs a non-empty list of filters")
            parts = [translate_where(v) for v in value]
            clauses.append({key: [p for p in parts if p]})
        elif key == "code":
            clauses.append(_code_clause(value))
        elif key in FILTER_KEYS:
            clauses.append({key: value})
        else:
            raise QueryError(f"unknown filter key {key!r}; use one of {', '.join(FILTER_KEYS)}, $and, $or")
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _code_clause(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"code_list": {"$contains": value}}
    if isinstance(value, Mapping) and len(value) == 1:
        (op, operand), = value.items()
        if op == "$eq" and isinstance(operand, str):
            return {"code_list": {"$contains": operand}}
        if op == "$ne" and isinstance(operand, str):
            return {"code_list": {"$not_contains": operand}}
        if op in ("$in", "$nin") and isinstance(operand, list) and operand:
            inner = "$contains" if op == "$in" else "$not_contains"
            parts = [{"code_list": {inner: str(c)}} for c in operand]
            return parts[0] if len(parts) == 1 else {("$or" if op == "$in" else "$and"): parts}
    raise QueryError(f"code filter must be a code string or {{'$eq'|'$ne': code}} or "
                     f"{{'$in'|'$nin': [codes]}}, got {value!r}")


def validate_query(query: Any) -> str:
    if not isinstance(query, str):
        raise QueryError(f"query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise QueryError("query is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"query is {len(query)} characters; the limit is {MAX_QUERY_CHARS} "
                         "(retrieval embeds short descriptions, not whole reports: shorten or split it)")
    return query.strip()


# -------------------------------------------------------------------------------------------------- store


class _LexicalIndex:
    """TF-IDF vectors of every chunk in the store, for the lexical half of the hybrid score, plus each
    chunk's text and metadata: chunk ids are content hashes, so a cached id always names the same chunk
    and a query only needs ids and distances from Chroma."""

    def __init__(self, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[dict[str, Any]]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.rows = {chunk: row for row, chunk in enumerate(ids)}
        self.texts = list(texts)
        self.metadatas = list(metadatas)
        self.vectorizer = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b", sublinear_tf=True, stop_words="english")
        try:
            self.matrix = self.vectorizer.fit_transform(texts) if texts else None
        except ValueError:  # only stop words in the whole store: lexical scores are all zero
            self.matrix = None

    def covers(self, ids: Iterable[str]) -> bool:
        return all(i in self.rows for i in ids)

    def document(self, chunk: str) -> Document:
        row = self.rows[chunk]
        return Document(page_content=self.texts[row], metadata=self.metadatas[row], id=chunk)

    def scores(self, query: str, ids: Sequence[str]) -> list[float]:
        if self.matrix is None:
            return [0.0] * len(ids)
        vector = self.vectorizer.transform([query])
        rows = [self.rows.get(i) for i in ids]
        known = [r for r in rows if r is not None]
        values = iter((self.matrix[known] @ vector.T).toarray().ravel().tolist()) if known else iter(())
        return [next(values) if r is not None else 0.0 for r in rows]


def _passage(doc: Document, score: float, dense: float = 0.0, lexical: float = 0.0) -> Passage:
    meta = doc.metadata or {}
    codes = tuple(meta["code_list"]) if meta.get("code_list") else decode_codes(meta.get("codes"))
    page = meta.get("page")
    return Passage(
        text=doc.page_content, score=float(score), entry=str(meta.get("entry", "")), codes=codes,
        section=str(meta.get("section", "")), source=str(meta.get("source", "")),
        page=int(page) if page is not None else None, category=str(meta.get("category", "")),
        name=str(meta.get("name", "")), id=str(doc.id or ""), dense_score=float(dense),
        lexical_score=float(lexical),
    )


def _all_records(chroma: Chroma, with_documents: bool = False) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Every id (and document text and metadata) in the collection, read in pages."""
    ids: list[str] = []
    texts: list[str] = []
    metadatas: list[dict[str, Any]] = []
    collection = chroma._collection
    step = 5000
    while True:
        batch = collection.get(include=["documents", "metadatas"] if with_documents else [], limit=step,
                               offset=len(ids))
        ids += batch["ids"]
        if with_documents:
            texts += [t or "" for t in batch["documents"]]
            metadatas += [dict(m or {}) for m in batch["metadatas"]]
        if len(batch["ids"]) < step:
            return ids, texts, metadatas


class KnowledgeStore:
    """Semantic search over the ECG knowledge corpus and user documents (use :meth:`build` or :meth:`open`)."""

    def __init__(self, location: _Location, embeddings: Embeddings, manifest: dict[str, Any]) -> None:
        self._location = location
        self.embeddings = embeddings
        self.manifest = manifest
        self.build_report: BuildReport | None = None
        self._lexical: _LexicalIndex | None = None
        self.lexical_weight = LEXICAL_WEIGHT  # 0 -> dense-only ranking (for ablations)
        self.query_threads: int | None = QUERY_TORCH_THREADS  # None -> leave torch's thread count alone
        self.vectorstore = Chroma(
            collection_name=location.collection, embedding_function=embeddings, client=location.client,
            collection_configuration={"hnsw": {"space": "cosine"}},
        )

    @property
    def label(self) -> str:
        return self._location.label

    # ----------------------------------------------------------------------------------------- building

    @classmethod
    def build(
        cls,
        store_dir: str | os.PathLike[str] | ClientAPI | None = None,
        docs: Iterable[str | os.PathLike[str]] = (),
        embeddings: Embeddings | None = None,
        client: ClientAPI | None = None,
        *,
        collection: str = DEFAULT_COLLECTION,
        include_knowledge: bool = True,
        knowledge_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> KnowledgeStore:
        """Create or update the store so it holds exactly the corpus + ``docs``; see ``.build_report``.

        ``store_dir`` is a directory or ``http://host:port``; or pass ``client`` (a Chroma client).
        Documents: .md/.markdown/.txt/.pdf files or directories of them. All inputs are parsed before the
        store is touched, so a bad document leaves the store as it was.
        """
        started = datetime.now(UTC)
        embeddings = embeddings or load_embeddings()
        folder = str(knowledge_dir) if knowledge_dir else None
        chunks: list[Chunk] = []
        version = ""
        if include_knowledge:
            version = knowledge_version(folder)
            # bypass load_entries' per-process cache so a long-lived process sees edited entries
            chunks += knowledge_chunks(getattr(load_entries, "__wrapped__", load_entries)(folder))
        doc_paths = expand_documents(docs)
        for path in tqdm(doc_paths, desc="parse documents", unit="doc", disable=not progress or not doc_paths):
            chunks += document_chunks(path)
        wanted = {c.id: c for c in chunks}

        location = _locate(store_dir, client, collection, create=True)
        fingerprint = _fingerprint(embeddings)
        old = location.read_manifest()
        report = BuildReport(sources=len({c.metadata["source"] for c in chunks}))
        if old is None and location.has_collection():
            if location.manifest_path is None and location.client.get_collection(
                    collection, embedding_function=None).count() > 0:
                # on a shared server an unmanifested collection may be someone else's data: never drop it
                raise StoreError(f"{location.label} exists on the server but was not built by this package "
                                 "(no manifest); pass another collection name or delete it yourself")
            report.rebuilt, report.reason = True, "no manifest (interrupted or foreign build)"
        elif old is not None and not old.get("complete"):
            report.rebuilt, report.reason = True, "previous build did not complete"
        elif old is not None and (why := _incompatibility(old, fingerprint)):
            report.rebuilt, report.reason = True, why
        if report.rebuilt:
            location.drop_collection()

        manifest = {
            "format": MANIFEST_FORMAT, "collection": collection, **fingerprint,
            "knowledge_version": version, "include_knowledge": include_knowledge,
            "complete": False, "started_at": started.isoformat(timespec="seconds"),
        }
        store = cls(location, embeddings, manifest)  # creates the collection (cosine, no Chroma embedder)
        location.write_manifest(manifest)

        existing = set(_all_records(store.vectorstore)[0])
        stale = sorted(existing - wanted.keys())
        # similar lengths per batch -> less padding -> faster embedding
        new = sorted((wanted[i] for i in wanted.keys() - existing), key=lambda c: (len(c.text), c.id))
        for start in range(0, len(stale), 1000):
            store.vectorstore.delete(ids=stale[start:start + 1000])
        with tqdm(total=len(new), desc="embed chunks", unit="chunk", disable=not progress or not new) as bar:
            for start in range(0, len(new), ADD_BATCH):
                batch = new[start:start + ADD_BATCH]
                store.vectorstore.add_texts(
                    [c.text for c in batch], metadatas=[c.metadata for c in batch], ids=[c.id for c in batch],
                )
                bar.update(len(batch))

        report.added, report.removed = len(new), len(stale)
        report.unchanged = len(existing & wanted.keys())
        report.total = store.count()
        report.seconds = (datetime.now(UTC) - started).total_seconds()
        manifest.update(complete=True, chunks=report.total, sources=report.sources,
                        finished_at=datetime.now(UTC).isoformat(timespec="seconds"))
        location.write_manifest(manifest)
        store.manifest = manifest
        store.build_report = report
        return store

    @classmethod
    def open(
        cls,
        store_dir: str | os.PathLike[str] | ClientAPI,
        embeddings: Embeddings | None = None,
        *,
        collection: str = DEFAULT_COLLECTION,
    ) -> KnowledgeStore:
        """Open a completely built store; refuses missing, half-written and other-model stores clearly."""
        location = _locate(store_dir, None, collection, create=False)
        manifest = location.read_manifest()
        hint = f"rebuild it with `python -m retrieval build --store {location.label}`"
        if manifest is None:
            if location.has_collection():
                raise StoreIncompleteError(f"knowledge store {location.label} has no manifest (a build was "
                                           f"interrupted or another tool wrote it); {hint}")
            raise StoreError(f"no knowledge store at {location.label}; build it with "
                             f"`python -m retrieval build --store {location.label}`")
        if not manifest.get("complete"):
            raise StoreIncompleteError(f"knowledge store {location.label} is half-written (its last build did "
                                       f"not complete); {hint}")
        if not location.has_collection():
            raise StoreIncompleteError(f"knowledge store {location.label} lost its collection; {hint}")
        embeddings = embeddings or load_embeddings()
        why = _incompatibility(manifest, _fingerprint(embeddings))
        if why:
            raise EmbeddingMismatchError(f"knowledge store {location.label}: {why}; open it with the model it "
                                         f"was built with or {hint} --model ...")
        return cls(location, embeddings, manifest)

    # ------------------------------------------------------------------------------------------ queries

    def count(self) -> int:
        return int(self.vectorstore._collection.count())

    def is_stale(self, knowledge_dir: str | os.PathLike[str] | None = None) -> bool:
        """True when the built-in corpus changed since this store was built (rebuild to pick it up)."""
        if not self.manifest.get("include_knowledge", True):
            return False
        folder = str(knowledge_dir) if knowledge_dir else None
        return self.manifest.get("knowledge_version") != knowledge_version(folder)

    def search(
        self, query: str, k: int = 5, where: Mapping[str, Any] | None = None, max_per_entry: int | None = None,
    ) -> list[Passage]:
        """The ``k`` best chunks for ``query`` (hybrid score, best first), optionally filtered (module doc).

        ``max_per_entry``: at most this many chunks per knowledge entry (user-document chunks are not capped).
        """
        query = validate_query(query)
        chroma_where = self._check_search_args(k, where, max_per_entry)
        with torch_threads(self.query_threads):
            vector = self.embeddings.embed_query(query)
        return self._rank(query, vector, k, chroma_where, max_per_entry)

    def search_many(
        self, queries: Sequence[str], k: int = 5, where: Mapping[str, Any] | None = None,
        max_per_entry: int | None = None,
    ) -> list[list[Passage]]:
        """:meth:`search` for many queries, embedding them in one batch (faster for evaluation and captioning)."""
        queries = [validate_query(q) for q in queries]
        chroma_where = self._check_search_args(k, where, max_per_entry)
        # HuggingFaceEmbeddings encodes queries and documents alike; embed_documents batches them.
        vectors = self.embeddings.embed_documents(queries) if queries else []
        return [self._rank(q, v, k, chroma_where, max_per_entry) for q, v in zip(queries, vectors)]

    @staticmethod
    def _check_search_args(
        k: Any, where: Mapping[str, Any] | None, max_per_entry: Any,
    ) -> dict[str, Any] | None:
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise QueryError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
        if max_per_entry is not None and (not isinstance(max_per_entry, int) or max_per_entry < 1):
            raise QueryError(f"max_per_entry must be a positive integer or None, got {max_per_entry!r}")
        return translate_where(where)

    def _rank(
        self, query: str, vector: Sequence[float], k: int, chroma_where: dict[str, Any] | None,
        max_per_entry: int | None,
    ) -> list[Passage]:
        fetch = max(DENSE_CANDIDATES, k * 4 if max_per_entry else k)
        # ids and cosine distances only: texts and metadata come from the content-addressed cache
        result = self.vectorstore._collection.query(
            query_embeddings=[list(vector)], n_results=fetch, where=chroma_where, include=["distances"])
        ids, distances = result["ids"][0], result["distances"][0]
        if not ids:
            return []
        if self._lexical is None or not self._lexical.covers(ids):
            self._lexical = _LexicalIndex(*_all_records(self.vectorstore, with_documents=True))
        lexical = self._lexical.scores(query, ids)
        ranked = sorted(
            (((1.0 - distance) + self.lexical_weight * lex, 1.0 - distance, lex, chunk)
             for chunk, distance, lex in zip(ids, distances, lexical)),
            key=lambda item: -item[0],
        )
        passages: list[Passage] = []
        per_entry: dict[str, int] = {}
        for score, dense, lex, chunk in ranked:
            doc = self._lexical.document(chunk)
            entry = str(doc.metadata.get("entry", ""))
            if max_per_entry is not None and entry:
                if per_entry.get(entry, 0) >= max_per_entry:
                    continue
                per_entry[entry] = per_entry.get(entry, 0) + 1
            passages.append(_passage(doc, score, dense, lex))
            if len(passages) == k:
                break
        return passages

    def retriever(
        self, k: int = 5, where: Mapping[str, Any] | None = None, max_per_entry: int | None = None,
    ) -> KnowledgeRetriever:
        """A LangChain retriever (usable in LCEL: ``store.retriever() | format_documents``)."""
        translate_where(where)  # fail now on a bad filter, not at the first query
        return KnowledgeRetriever(store=self, k=k, where=dict(where) if where else None,
                                  max_per_entry=max_per_entry)


class KnowledgeRetriever(BaseRetriever):
    """LangChain retriever over a :class:`KnowledgeStore`; Documents carry Passage fields in metadata."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any
    k: int = 5
    where: dict[str, Any] | None = None
    max_per_entry: int | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
    ) -> list[Document]:
        passages = self.store.search(query, k=self.k, where=self.where, max_per_entry=self.max_per_entry)
        return [passage_to_document(p) for p in passages]


def passage_to_document(passage: Passage) -> Document:
    metadata = passage.to_dict()
    text = metadata.pop("text")
    return Document(page_content=text, metadata=metadata, id=passage.id or None)


def format_documents(docs: Sequence[Document]) -> str:
    """Numbered context block for a prompt: ``[1] (source, section) text`` per document."""
    blocks = []
    for number, doc in enumerate(docs, start=1):
        meta = doc.metadata or {}
        where = ", ".join(str(v) for v in (meta.get("entry") or meta.get("source"), meta.get("section")) if v)
        blocks.append(f"[{number}] ({where}) {doc.page_content}")
    return "\n\n".join(blocks)
