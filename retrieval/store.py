"""The persistent knowledge store: the ECG knowledge corpus plus user documents in Chroma, via LangChain.

Layout of a directory store ``DIR``::

    DIR/manifest.json   embedding model + dimension + probe vector, knowledge_version, complete flag
    DIR/chroma/         the Chroma persistent database (collection "ecg-knowledge")

With a Chroma server (``http://host:port`` or a client object) the same manifest is kept as JSON in the
collection's metadata (key ``esi_manifest``).

Ranking is hybrid and per finding (a knowledge entry, or one user document), because all-MiniLM-L6-v2 alone
knows little ECG vocabulary (dense-only recall@5 on the paraphrase set was ~0.72) and because a caller asking
"what is this?" wants k different answers, not four chunks of one entry. Per query (retrieval.ranking):

1. candidates: the ``DENSE_CANDIDATES`` nearest chunks by cosine similarity (Chroma, through LangChain) plus the
   ``LEXICAL_CANDIDATES`` best chunks by TF-IDF over the whole store (character 3-5-grams within words, British
   spellings folded), both under the same ``where`` filter;
2. three signals per finding: ``dense`` (best chunk cosine), ``lexical`` (best chunk TF-IDF cosine) and
   ``terms`` (an entry's names / aliases / SCP codes / ``causes`` matched as whole phrases in the query);
3. weighted reciprocal-rank fusion of the three rankings (``RankingParams``: weights, ``rrf_k``), entries linked
   across vocabularies pass ``link_share`` of their score to each other, and maximal marginal relevance over
   entry embeddings (``mmr_lambda``) orders the final k findings.

The weights were tuned on the *tune* half of the paraphrase set and of the real-report eval
(``bench/retrieval_real_eval.py --tune``) and are reported on the other half only. :meth:`KnowledgeStore.search`
keeps the chunk view (the best chunks, entries may repeat; ``max_per_entry`` caps them): a chunk's score is the
same fusion over chunk ranks (dense, lexical) plus its entry's ``terms`` rank. ``Passage.dense_score``,
``lexical_score`` and ``term_score`` keep the parts; ``score`` is the fused value (higher is better).

Building is a sync: the store ends up holding exactly the chunks of the built-in corpus plus the given
documents. A knowledge file that does not parse (broken front matter, duplicate id) is skipped and named in
``BuildReport.skipped``; the other entries are built as usual. Chunk ids are content hashes, so unchanged chunks are kept (not re-embedded), chunks of changed or
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
import re
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api import ClientAPI
from langchain_chroma import Chroma
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict
from tqdm.auto import tqdm

from corpora.knowledge import knowledge_version
from retrieval.chunking import (
    Chunk,
    decode_codes,
    document_chunks,
    expand_documents,
    knowledge_chunks,
    load_knowledge,
)
from retrieval.client import ClientError, collection_names, is_url, open_client
from retrieval.embeddings import embeddings_name, load_embeddings, torch_threads
from retrieval.ranking import (
    RankingParams,
    TermIndex,
    Terms,
    entry_links,
    finding_signals,
    fold,
    fuse_chunks,
    fuse_findings,
)

DEFAULT_COLLECTION = "ecg-knowledge"
MANIFEST_FILE = "manifest.json"
CHROMA_SUBDIR = "chroma"
MANIFEST_METADATA_KEY = "esi_manifest"
MANIFEST_FORMAT = 2  # 2: summary chunks carry the entry's terms (format-1 stores rank without the terms signal)
MAX_QUERY_CHARS = 2000
MAX_K = 200
ADD_BATCH = 64
DENSE_CANDIDATES = 50
LEXICAL_CANDIDATES = 50
PASSAGES_PER_FINDING = 2
QUERY_TORCH_THREADS = "auto"  # the cores the load leaves free, at least 1 (see embeddings.idle_threads)
PROBE_TEXT = "probe: sinus rhythm with complete right bundle branch block"
PROBE_MIN_COSINE = 0.98
FILTER_KEYS = ("entry", "name", "category", "section", "source", "page", "code")
# Latin letters, accented ones included (not the signs × U+00D7 and ÷ U+00F7 in that block)
_LATIN = re.compile(r"[A-Za-z\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u024F]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class StoreError(ValueError):
    """A store is missing, broken or incompatible; the message names the store and what to do."""


class StoreIncompleteError(StoreError):
    """The manifest is missing or says the last build did not finish."""


class EmbeddingMismatchError(StoreError):
    """The store was built with a different embedding model (dimension or vectors differ)."""


class QueryError(ValueError):
    """A query or filter is unusable (empty, too long, no Latin letters, unknown filter key)."""


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk. ``score`` = fused score (higher is better; module doc); ``page`` is 1-based or None.

    ``dense_score`` is the cosine similarity, ``lexical_score`` the TF-IDF cosine, ``term_score`` the share of
    the query its entry's names/aliases/causes cover (0 for user documents).
    """

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
    term_score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["codes"] = list(self.codes)
        return data


@dataclass(frozen=True)
class FindingResult:
    """One retrieved finding: a knowledge entry (``entry`` set) or one user document (``entry`` empty,
    ``source`` its path), with its best passages (best first) and the entries linked to it across vocabularies.

    ``score`` is the fused finding score (module doc); results come in MMR order, so a later result may score a
    little higher than an earlier one that was more different from those above it.
    """

    key: str
    entry: str
    name: str
    category: str
    codes: tuple[str, ...]
    source: str
    score: float
    passages: tuple[Passage, ...]
    related: tuple[str, ...] = ()
    dense_score: float = 0.0
    lexical_score: float = 0.0
    term_score: float = 0.0

    @property
    def text(self) -> str:
        """The best passage's text (so code written for chunks, which reads ``.text``, still works)."""
        return self.passages[0].text if self.passages else ""

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "passages"}
        data["codes"], data["related"] = list(self.codes), list(self.related)
        data["passages"] = [p.to_dict() for p in self.passages]
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
    skipped: list[str] = field(default_factory=list)  # "path: why" per knowledge file that did not parse

    def summary(self) -> str:
        text = (f"added {self.added}, unchanged {self.unchanged}, removed {self.removed} chunks; "
                f"{self.total} chunks from {self.sources} sources")
        if self.skipped:
            text += f"; skipped {len(self.skipped)} broken knowledge file(s)"
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
    """The stripped, NFKC-normalised query, or a :class:`QueryError` that says what is wrong with it.

    NFKC folds compatibility forms into the plain letters the corpus uses (full-width "ＡＦ" -> "AF", "Ⅱ" -> "II",
    ligatures). Why refuse a query without any Latin letter ("心房颤动", "фибрилляция"): the corpus and
    all-MiniLM-L6-v2 are English, such a query shares no term with the store and its embedding lands near
    arbitrary chunks, so any "answer" would be noise presented as a match. Lone surrogates (what Python makes of
    bytes that are not UTF-8 in a command-line argument) are refused too: the tokenizer cannot encode them.
    """
    if not isinstance(query, str):
        raise QueryError(f"query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise QueryError("query is empty")
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"query is {len(query)} characters; the limit is {MAX_QUERY_CHARS} "
                         "(retrieval embeds short descriptions, not whole reports: shorten or split it)")
    bad = _SURROGATE.search(query)
    if bad:
        raise QueryError(f"query is not valid Unicode text (lone surrogate U+{ord(bad.group()):04X} at character "
                         f"{bad.start()}, usually bytes that are not UTF-8); pass the query as UTF-8")
    query = unicodedata.normalize("NFKC", query).strip()
    if not query:
        raise QueryError("query is empty")
    if len(query) > MAX_QUERY_CHARS:  # NFKC can lengthen a text (e.g. one ligature -> several letters)
        raise QueryError(f"query is {len(query)} characters after Unicode normalisation; the limit is "
                         f"{MAX_QUERY_CHARS} (shorten or split it)")
    if not _LATIN.search(query):
        raise QueryError("query has no Latin letters; the knowledge corpus and its embedding model are English "
                         "(translate the query, e.g. 'atrial fibrillation')")
    return query


# -------------------------------------------------------------------------------------------------- store


def finding_key(metadata: Mapping[str, Any]) -> str:
    """What groups chunks into one finding: the knowledge entry id, or a user document's source path."""
    return str(metadata.get("entry") or metadata.get("source") or "")


class _Index:
    """What a query needs besides Chroma's nearest neighbours, cached per store object.

    Each chunk's text, metadata and embedding (ids are content hashes, so a cached id always names the same
    chunk and a query only needs ids and distances from Chroma), the TF-IDF matrix of the lexical signal, the
    entries' terms (from the summary chunks' ``terms`` metadata) and links, one unit vector per finding (mean of
    its chunk embeddings) for MMR, and the chunk ids each ``where`` filter allows.
    """

    def __init__(self, ids: Sequence[str], texts: Sequence[str], metadatas: Sequence[dict[str, Any]],
                 embeddings: Any) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.ids = list(ids)
        self.rows = {chunk: row for row, chunk in enumerate(self.ids)}
        self.texts = list(texts)
        self.metadatas = list(metadatas)
        self.keys = [finding_key(m) for m in self.metadatas]
        vectors = np.asarray(embeddings, dtype=np.float32).reshape(len(self.ids), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.vectors = vectors / np.where(norms > 0, norms, 1.0)
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True,
                                          preprocessor=fold)
        try:
            # column-major: a query touches only the columns of its own n-grams (lexical())
            self.matrix = self.vectorizer.fit_transform(self.texts).tocsc() if self.texts else None
        except ValueError:  # no usable characters in the whole store: lexical scores are all zero
            self.matrix = None
        if self.matrix is not None:
            self._analyzer = self.vectorizer.build_analyzer()
            self._vocabulary = self.vectorizer.vocabulary_
            self._idf = self.vectorizer.idf_
        terms = [_terms_of(m) for m in self.metadatas if m.get("terms")]
        self.terms = TermIndex([t for t in terms if t is not None])
        self.links = entry_links(self.terms.terms)
        self.rows_of: dict[str, list[int]] = {}
        for row, key in enumerate(self.keys):
            self.rows_of.setdefault(key, []).append(row)
        self.finding_vectors: dict[str, np.ndarray] = {}
        for key, rows in self.rows_of.items():
            mean = self.vectors[rows].mean(axis=0)
            norm = float(np.linalg.norm(mean))
            if norm > 0:
                self.finding_vectors[key] = mean / norm
        self._allowed: dict[str, frozenset[str]] = {}

    def covers(self, ids: Iterable[str]) -> bool:
        return all(i in self.rows for i in ids)

    def document(self, chunk: str) -> Document:
        row = self.rows[chunk]
        return Document(page_content=self.texts[row], metadata=self.metadatas[row], id=chunk)

    def lexical(self, query: str) -> np.ndarray:
        """TF-IDF cosine of the query with every chunk (zeros when nothing overlaps).

        Same vector as ``vectorizer.transform([query])`` (sublinear tf x idf, L2-normalised), built by hand:
        sklearn's input validation cost more than the whole product on a short query (~2 ms of a ~20 ms query).
        """
        if self.matrix is None:
            return np.zeros(len(self.ids), dtype=np.float32)
        counts = Counter(self._analyzer(query))
        columns = [(self._vocabulary[gram], count) for gram, count in counts.items() if gram in self._vocabulary]
        if not columns:
            return np.zeros(len(self.ids), dtype=np.float32)
        cols = np.fromiter((c for c, _ in columns), dtype=np.int64, count=len(columns))
        weights = (1.0 + np.log([n for _, n in columns])) * self._idf[cols]
        weights /= float(np.linalg.norm(weights))  # out-of-vocabulary n-grams do not count, as in sklearn
        return np.asarray(self.matrix[:, cols] @ weights).ravel()

    def dense(self, rows: Sequence[int], vector: np.ndarray) -> np.ndarray:
        """Cosine of the (unit) query vector with the given chunks, as Chroma computes it."""
        if not len(rows) or self.vectors.shape[1] != vector.shape[0]:
            return np.zeros(len(rows), dtype=np.float32)
        return self.vectors[list(rows)] @ vector

    def allowed(self, chroma: Chroma, where: dict[str, Any] | None) -> frozenset[str] | None:
        """The chunk ids a Chroma ``where`` filter lets through (None: no filter), cached per filter."""
        if not where:
            return None
        key = json.dumps(where, sort_keys=True, default=str)
        if key not in self._allowed:
            self._allowed[key] = frozenset(_all_records(chroma, where=where)[0])
        return self._allowed[key]


def _terms_of(metadata: Mapping[str, Any]) -> Terms | None:
    try:
        raw = json.loads(metadata["terms"])
        return Terms(str(metadata.get("entry", "")), tuple(map(str, raw.get("names", ()))),
                     tuple(map(str, raw.get("causes", ()))))
    except (json.JSONDecodeError, TypeError, AttributeError):
        return None  # a foreign or damaged summary chunk: its entry just gets no term matches


@dataclass
class Candidates:
    """The chunks one query ranks: finding key per chunk, dense and lexical score per chunk, terms per entry
    (chunk ids refer to the store's cached index, so use them with the store that made them)."""

    keys: dict[str, str]
    dense: dict[str, float]
    lexical: dict[str, float]
    terms: dict[str, float]


def _passage(doc: Document, score: float, dense: float = 0.0, lexical: float = 0.0, terms: float = 0.0,
             ) -> Passage:
    meta = doc.metadata or {}
    codes = tuple(meta["code_list"]) if meta.get("code_list") else decode_codes(meta.get("codes"))
    page = meta.get("page")
    return Passage(
        text=doc.page_content, score=float(score), entry=str(meta.get("entry", "")), codes=codes,
        section=str(meta.get("section", "")), source=str(meta.get("source", "")),
        page=int(page) if page is not None else None, category=str(meta.get("category", "")),
        name=str(meta.get("name", "")), id=str(doc.id or ""), dense_score=float(dense),
        lexical_score=float(lexical), term_score=float(terms),
    )


def _all_records(
    chroma: Chroma, with_documents: bool = False, where: dict[str, Any] | None = None,
) -> tuple[list[str], list[str], list[dict[str, Any]], list[Any]]:
    """Every id (and document text, metadata and embedding) in the collection (or under ``where``), in pages."""
    ids: list[str] = []
    texts: list[str] = []
    metadatas: list[dict[str, Any]] = []
    vectors: list[Any] = []
    collection = chroma._collection
    step = 5000
    while True:
        batch = collection.get(include=["documents", "metadatas", "embeddings"] if with_documents else [],
                               limit=step, offset=len(ids), where=where)
        ids += batch["ids"]
        if with_documents:
            texts += [t or "" for t in batch["documents"]]
            metadatas += [dict(m or {}) for m in batch["metadatas"]]
            vectors += list(batch["embeddings"] if batch["embeddings"] is not None else [])
        if len(batch["ids"]) < step:
            return ids, texts, metadatas, vectors


class KnowledgeStore:
    """Semantic search over the ECG knowledge corpus and user documents (use :meth:`build` or :meth:`open`)."""

    def __init__(self, location: _Location, embeddings: Embeddings, manifest: dict[str, Any]) -> None:
        self._location = location
        self.embeddings = embeddings
        self.manifest = manifest
        self.build_report: BuildReport | None = None
        self._index: _Index | None = None
        self.ranking = RankingParams()  # e.g. RankingParams(weights={"dense": 1.0}) -> dense-only (ablations)
        self.query_threads: int | str | None = QUERY_TORCH_THREADS  # None -> leave torch's thread count alone
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
        skipped: list[str] = []
        if include_knowledge:
            version = knowledge_version(folder)
            entries, skipped = load_knowledge(folder)  # broken files are named and left out, not fatal
            chunks += knowledge_chunks(entries)
        doc_paths = expand_documents(docs)
        for path in tqdm(doc_paths, desc="parse documents", unit="doc", disable=not progress or not doc_paths):
            chunks += document_chunks(path)
        wanted = {c.id: c for c in chunks}

        location = _locate(store_dir, client, collection, create=True)
        fingerprint = _fingerprint(embeddings)
        old = location.read_manifest()
        report = BuildReport(sources=len({c.metadata["source"] for c in chunks}), skipped=skipped)
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
        """True when the built-in corpus changed since this store was built, or the store predates the chunk
        format this code ranks best (rebuild to pick it up; unchanged chunks are kept)."""
        if not self.manifest.get("include_knowledge", True):
            return False
        if int(self.manifest.get("format", 1)) < MANIFEST_FORMAT:
            return True
        folder = str(knowledge_dir) if knowledge_dir else None
        return self.manifest.get("knowledge_version") != knowledge_version(folder)

    def search(
        self, query: str, k: int = 5, where: Mapping[str, Any] | None = None, max_per_entry: int | None = None,
    ) -> list[Passage]:
        """The ``k`` best chunks for ``query`` (fused chunk score, best first), optionally filtered (module doc).

        The raw chunk view (one entry may fill several places; :meth:`search_findings` gives distinct findings).
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

    def search_findings(
        self, query: str, k: int = 5, where: Mapping[str, Any] | None = None,
        passages: int = PASSAGES_PER_FINDING,
    ) -> list[FindingResult]:
        """The ``k`` best distinct findings for ``query`` (entries, or user documents), each with its ``passages``
        best chunks; fused, linked and diversified ranking (module doc). ``where`` filters chunks as in
        :meth:`search`."""
        query = validate_query(query)
        chroma_where = self._check_search_args(k, where, None)
        self._check_passages(passages)
        with torch_threads(self.query_threads):
            vector = self.embeddings.embed_query(query)
        return self._findings(query, vector, k, chroma_where, passages)

    def search_findings_many(
        self, queries: Sequence[str], k: int = 5, where: Mapping[str, Any] | None = None,
        passages: int = PASSAGES_PER_FINDING,
    ) -> list[list[FindingResult]]:
        """:meth:`search_findings` for many queries, embedding them in one batch."""
        queries = [validate_query(q) for q in queries]
        chroma_where = self._check_search_args(k, where, None)
        self._check_passages(passages)
        vectors = self.embeddings.embed_documents(queries) if queries else []
        return [self._findings(q, v, k, chroma_where, passages) for q, v in zip(queries, vectors)]

    @staticmethod
    def _check_passages(passages: Any) -> None:
        if not isinstance(passages, int) or not 1 <= passages <= MAX_K:
            raise QueryError(f"passages must be an integer in 1..{MAX_K}, got {passages!r}")

    def _candidates(
        self, query: str, vector: Sequence[float], chroma_where: dict[str, Any] | None, fetch: int,
    ) -> Candidates | None:
        """Dense neighbours from Chroma, lexical best chunks, and the chunks of entries the query names (plus
        the entries linked to those), all under the filter; None when nothing matches the filter."""
        result = self.vectorstore._collection.query(
            query_embeddings=[list(vector)], n_results=fetch, where=chroma_where, include=["distances"])
        ids, distances = result["ids"][0], result["distances"][0]
        if not ids:
            return None
        if self._index is None or not self._index.covers(ids):
            self._index = _Index(*_all_records(self.vectorstore, with_documents=True))
        index = self._index
        allowed = index.allowed(self.vectorstore, chroma_where)
        lexical_all = index.lexical(query)
        rows = {index.rows[i] for i in ids}
        positive = np.flatnonzero(lexical_all > 0)
        added = 0
        for row in positive[np.argsort(-lexical_all[positive], kind="stable")]:  # best lexical, under the filter
            if added >= LEXICAL_CANDIDATES:
                break
            if allowed is None or index.ids[row] in allowed:
                rows.add(int(row))
                added += 1
        terms = index.terms.scores(query)
        named = set(terms) | {other for key in terms for other in index.links.get(key, ())}
        for key in named:
            rows.update(r for r in index.rows_of.get(key, ()) if allowed is None or index.ids[r] in allowed)
        dense = {chunk: 1.0 - float(distance) for chunk, distance in zip(ids, distances)}
        extra = sorted(r for r in rows if index.ids[r] not in dense)
        unit = np.asarray(vector, dtype=np.float32)
        unit = unit / (float(np.linalg.norm(unit)) or 1.0)
        dense.update(zip((index.ids[r] for r in extra), map(float, index.dense(extra, unit))))
        chunks = [index.ids[r] for r in sorted(rows)]
        return Candidates(keys={c: index.keys[index.rows[c]] for c in chunks}, dense=dense,
                           lexical={c: float(lexical_all[index.rows[c]]) for c in chunks}, terms=terms)

    def _rank(
        self, query: str, vector: Sequence[float], k: int, chroma_where: dict[str, Any] | None,
        max_per_entry: int | None,
    ) -> list[Passage]:
        candidates = self._candidates(query, vector, chroma_where, max(DENSE_CANDIDATES, k * 4))
        if candidates is None:
            return []
        fused = fuse_chunks(candidates.keys, candidates.dense, candidates.lexical, candidates.terms, self.ranking)
        passages: list[Passage] = []
        per_entry: dict[str, int] = {}
        for chunk in sorted(fused, key=lambda c: (-fused[c], c)):
            passage = self._passage_of(chunk, fused[chunk], candidates)
            if max_per_entry is not None and passage.entry:
                if per_entry.get(passage.entry, 0) >= max_per_entry:
                    continue
                per_entry[passage.entry] = per_entry.get(passage.entry, 0) + 1
            passages.append(passage)
            if len(passages) == k:
                break
        return passages

    def _passage_of(self, chunk: str, score: float, candidates: Candidates) -> Passage:
        assert self._index is not None
        return _passage(self._index.document(chunk), score, candidates.dense.get(chunk, 0.0),
                        candidates.lexical.get(chunk, 0.0), candidates.terms.get(candidates.keys[chunk], 0.0))

    def _findings(
        self, query: str, vector: Sequence[float], k: int, chroma_where: dict[str, Any] | None, passages: int,
    ) -> list[FindingResult]:
        return self.findings_from(self._candidates(query, vector, chroma_where, max(DENSE_CANDIDATES, k * 4)),
                                  k, passages)

    def candidates_many(
        self, queries: Sequence[str], k: int = 5, where: Mapping[str, Any] | None = None,
    ) -> list[Candidates | None]:
        """What :meth:`search_findings_many` ranks, before fusion: for evaluating or tuning ``self.ranking``
        without embedding and searching again (``findings_from(candidates, k)`` ranks one)."""
        queries = [validate_query(q) for q in queries]
        chroma_where = self._check_search_args(k, where, None)
        vectors = self.embeddings.embed_documents(queries) if queries else []
        return [self._candidates(q, v, chroma_where, max(DENSE_CANDIDATES, k * 4)) for q, v in zip(queries, vectors)]

    def findings_from(
        self, candidates: Candidates | None, k: int, passages: int = PASSAGES_PER_FINDING,
    ) -> list[FindingResult]:
        """Rank one query's candidates into ``k`` findings with ``self.ranking`` (see :meth:`candidates_many`)."""
        if candidates is None:
            return []
        assert self._index is not None
        index = self._index
        ranked = fuse_findings(candidates.keys, candidates.dense, candidates.lexical, candidates.terms,
                               self.ranking, index.links, index.finding_vectors, k)
        chunk_scores = fuse_chunks(candidates.keys, candidates.dense, candidates.lexical, candidates.terms,
                                   self.ranking)
        by_key: dict[str, list[str]] = {}
        for chunk in sorted(chunk_scores, key=lambda c: (-chunk_scores[c], c)):
            by_key.setdefault(candidates.keys[chunk], []).append(chunk)
        best_dense, best_lexical = finding_signals(candidates.keys, candidates.dense, candidates.lexical)
        results = []
        for key, score in ranked:
            best = [self._passage_of(c, chunk_scores[c], candidates) for c in by_key[key][:passages]]
            top = best[0]
            results.append(FindingResult(
                key=key, entry=top.entry, name=top.name, category=top.category, codes=top.codes,
                source=top.source, score=score, passages=tuple(best),
                related=tuple(sorted(index.links.get(top.entry, ()))) if top.entry else (),
                dense_score=best_dense.get(key, 0.0), lexical_score=best_lexical.get(key, 0.0),
                term_score=candidates.terms.get(key, 0.0),
            ))
        return results

    def retriever(
        self, k: int = 5, where: Mapping[str, Any] | None = None, max_per_entry: int | None = None,
        *, by_chunk: bool = False, passages: int = PASSAGES_PER_FINDING,
    ) -> KnowledgeRetriever:
        """A LangChain retriever (usable in LCEL: ``store.retriever() | format_documents``).

        Default: one Document per distinct finding (its best ``passages`` chunks joined); ``by_chunk=True``: one
        Document per chunk as :meth:`search` ranks them (``max_per_entry`` applies only there).
        """
        translate_where(where)  # fail now on a bad filter, not at the first query
        self._check_passages(passages)
        return KnowledgeRetriever(store=self, k=k, where=dict(where) if where else None,
                                  max_per_entry=max_per_entry, by_chunk=by_chunk, passages=passages)


class KnowledgeRetriever(BaseRetriever):
    """LangChain retriever over a :class:`KnowledgeStore`: Documents are findings (default) or chunks."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any
    k: int = 5
    where: dict[str, Any] | None = None
    max_per_entry: int | None = None
    by_chunk: bool = False
    passages: int = PASSAGES_PER_FINDING

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
    ) -> list[Document]:
        if self.by_chunk:
            chunks = self.store.search(query, k=self.k, where=self.where, max_per_entry=self.max_per_entry)
            return [passage_to_document(p) for p in chunks]
        findings = self.store.search_findings(query, k=self.k, where=self.where, passages=self.passages)
        return [finding_to_document(f) for f in findings]


def passage_to_document(passage: Passage) -> Document:
    metadata = passage.to_dict()
    text = metadata.pop("text")
    return Document(page_content=text, metadata=metadata, id=passage.id or None)


def finding_to_document(finding: FindingResult) -> Document:
    """One finding as a Document: its passages joined; metadata has the finding fields, ``section`` of the best
    passage and ``sections``/``passage_ids`` of all of them."""
    metadata = {k: v for k, v in finding.to_dict().items() if k != "passages"}
    metadata.update(section=finding.passages[0].section if finding.passages else "",
                    sections=[p.section for p in finding.passages], passage_ids=[p.id for p in finding.passages])
    text = "\n\n".join(p.text for p in finding.passages)
    return Document(page_content=text, metadata=metadata, id=finding.key or None)


def format_documents(docs: Sequence[Document]) -> str:
    """Numbered context block for a prompt: ``[1] (source, section) text`` per document."""
    blocks = []
    for number, doc in enumerate(docs, start=1):
        meta = doc.metadata or {}
        where = ", ".join(str(v) for v in (meta.get("entry") or meta.get("source"), meta.get("section")) if v)
        blocks.append(f"[{number}] ({where}) {doc.page_content}")
    return "\n\n".join(blocks)
