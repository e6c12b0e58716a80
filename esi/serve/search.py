"""ESI retrieval over Chroma: text -> ECG search ("query by text") and ECG -> text retrieval.

Both directions store ESI embeddings the caller computes in a :class:`retrieval.vectors.VectorCollection`
(cosine space, no Chroma embedding function). Each collection records, in its Chroma metadata, the
kind of item it holds (``esi_kind``: ``ecg`` or ``text``), the embedding width and the model
directory it was built with, so searching with a different model is refused (dimension) or warned
about (same width, other model).

ECG items carry ``record_id``, ``dataset``, ``age``, ``sex``, ``labels`` (JSON of native label ->
confidence), ``codes`` (``|code|code|``), ``fold`` and ``path`` (the record on disk, openable with
:func:`esi.serve.inference.load_record`) as metadata. Indexing is resumable: records already in the
collection are not read or embedded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from corpora.base import DatasetReader, ECGRecord, RecordError, Skip
from esi.serve.inference import ESIInference, PreparedECG
from esi.zeroshot.classifier import DEFAULT_QUERY_TEXT
from retrieval.vectors import Hit, VectorCollection

DEFAULT_STORE = ".esi-chroma"
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")


class SearchError(ValueError):
    """A collection cannot serve this request (wrong kind, other embedding width, bad query)."""


def open_collection(
    location: Any, name: str, *, kind: str, inference: ESIInference | None = None, model_dir: str | None = None,
    create: bool = True,
) -> VectorCollection:
    """Open (or create) an ESI collection of ``kind`` and check it matches the model."""
    if not _NAME_RE.match(name):
        raise SearchError(
            f"collection name {name!r} is invalid: use 3-512 characters from [a-zA-Z0-9._-], starting and "
            "ending with a letter or digit"
        )
    metadata = {"esi_kind": kind}
    if inference is not None:
        metadata["esi_embed_dim"] = inference.embed_dim
    if model_dir is not None:
        metadata["esi_model"] = str(Path(model_dir).resolve())
        metadata["esi_weights"] = weights_fingerprint(model_dir)
    collection = VectorCollection(location, name, create=create, metadata=metadata)
    stored = collection.metadata
    if stored.get("esi_kind") not in (None, kind):
        raise SearchError(f"collection {name!r} holds {stored['esi_kind']!r} items, not {kind!r}")
    dim = collection.dimension or stored.get("esi_embed_dim")
    if inference is not None and dim is not None and int(dim) != inference.embed_dim:
        raise SearchError(
            f"collection {name!r} holds {dim}-d embeddings but the model produces {inference.embed_dim}-d ones; "
            "index it again with this model"
        )
    if model_dir is not None and stored.get("esi_weights") not in (None, metadata["esi_weights"]):
        raise SearchError(  # e.g. the model was retrained into the same directory: its old vectors would answer
            f"collection {name!r} was indexed with other weights than {model_dir} now holds (weights "
            f"{stored['esi_weights'][:12]}, model {metadata['esi_weights'][:12]}); index the ECGs again into a new "
            "collection (or delete this one)")
    if model_dir is not None and "esi_weights" not in stored and stored.get("esi_model") not in (
            None, metadata["esi_model"]):
        warnings.warn(
            f"collection {name!r} was built with model {stored['esi_model']}, searching with {metadata['esi_model']}",
            stacklevel=2,
        )
    return collection


def weights_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 of a model directory's weights file: a collection remembers which weights embedded it."""
    with open(Path(model_dir) / "model.safetensors", "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _encode_codes(codes: Iterable[str]) -> str:
    codes = list(codes)
    return f"|{'|'.join(codes)}|" if codes else ""


def record_path(reader: DatasetReader | None, record: ECGRecord) -> str:
    """Where the record's signal lives on disk (for PTB-XL the chosen rate's WFDB path)."""
    if "path" in record.extra:
        return str(record.extra["path"])
    try:
        path = reader.signal_path(record.record_id) if reader is not None else None
    except RecordError:  # an id the reader does not know: no path to show
        path = None
    return str(path) if path is not None else ""


def ecg_metadata(record: ECGRecord, path: str = "", notes: Sequence[str] = ()) -> dict[str, Any]:
    """Chroma-safe metadata (scalars only, no None) for one indexed ECG."""
    meta: dict[str, Any] = {
        "record_id": record.record_id,
        "dataset": record.dataset,
        "labels": json.dumps(record.labels, sort_keys=True),
        "codes": _encode_codes(record.labels),
        "path": path,
    }
    for key, value in (("age", record.age), ("sex", record.sex), ("fold", record.fold),
                       ("subject_id", record.subject_id)):
        if value is not None:
            meta[key] = value
    if record.report:
        meta["report"] = record.report[:500]
    if notes:
        meta["notes"] = "; ".join(notes)
    return meta


def item_id(dataset: str, record_id: str) -> str:
    return f"{dataset}:{record_id}"


@dataclass
class IndexReport:
    added: int
    already_indexed: int
    skipped: list[Skip]
    total: int

    def summary(self) -> str:
        return (f"{self.added} ECGs added, {self.already_indexed} already indexed, {len(self.skipped)} skipped "
                f"(collection now holds {self.total})")


class ECGIndex:
    """Text -> ECG search over a collection of ESI ECG embeddings."""

    def __init__(self, inference: ESIInference, collection: VectorCollection):
        self.inference = inference
        self.collection = collection

    def add_prepared(self, prepared: Sequence[PreparedECG], embeddings: np.ndarray, paths: Sequence[str]) -> int:
        if not len(prepared):
            return 0
        ids = [item_id(p.record.dataset, p.record_id) for p in prepared]
        metas = [ecg_metadata(p.record, path, p.notes) for p, path in zip(prepared, paths)]
        docs = [p.record.report or "" for p in prepared]
        return self.collection.add(ids, embeddings, metas, docs)

    def index_reader(
        self, reader: DatasetReader, record_ids: Sequence[str] | None = None, *, chunk_size: int = 256,
        progress: bool = True,
    ) -> IndexReport:
        """Embed and store the reader's records (resumable: ids already present are skipped)."""
        from tqdm import tqdm

        ids = list(record_ids) if record_ids is not None else reader.record_ids()
        skipped: list[Skip] = []
        added = already = 0
        with tqdm(total=len(ids), disable=not progress, desc="indexing ECGs", unit="ecg") as bar:
            for start in range(0, len(ids), chunk_size):
                chunk = ids[start:start + chunk_size]
                present = {h.id for h in self.collection.get([item_id(reader.name, r) for r in chunk])}
                todo = [r for r in chunk if item_id(reader.name, r) not in present]
                already += len(chunk) - len(todo)
                records = []
                for record_id in todo:
                    try:
                        records.append(reader.read(record_id))
                    except RecordError as err:
                        skipped.append(Skip(err.record_id, err.reason))
                embeddings, prepared = self.inference.embed_records(records, skipped=skipped)
                paths = [record_path(reader, p.record) for p in prepared]
                added += self.add_prepared(prepared, embeddings, paths)
                bar.update(len(chunk))
        return IndexReport(added, already, skipped, self.collection.count())

    def search(self, query: str, k: int = 5, where: Mapping[str, Any] | None = None,
               query_text: str = DEFAULT_QUERY_TEXT) -> list[Hit]:
        """The k ECGs whose embeddings are closest to the text query; [] for an empty collection.

        ``query_text="raw"`` (the default) embeds it as typed; ``views`` expands a query that names a finding or
        class into the texts the model trained on (:meth:`ESIInference.query_embedding`).
        """
        if not isinstance(query, str) or not query.strip():
            raise SearchError("the search query is empty")
        if self.collection.count() == 0:
            return []
        return self.collection.query(self.inference.query_embedding(query, query_text), k=k, where=where)

    def search_embedding(self, embedding: np.ndarray, k: int = 5, where: Mapping[str, Any] | None = None) -> list[Hit]:
        return self.collection.query(np.asarray(embedding, dtype=np.float32), k=k, where=where)


# ---- ECG -> text ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextItem:
    id: str
    text: str
    metadata: dict[str, Any]


def knowledge_texts() -> list[TextItem]:
    """The knowledge corpus as passages (the retrieval layer's section chunks + summaries)."""
    from corpora.knowledge import load_entries
    from retrieval.chunking import knowledge_chunks

    items = []
    for chunk in knowledge_chunks(load_entries()):
        meta = {k: v for k, v in chunk.metadata.items() if isinstance(v, str | int | float | bool)}
        items.append(TextItem(f"kb:{chunk.id}", chunk.text, meta | {"source_kind": "knowledge"}))
    return items


def file_texts(path: str | os.PathLike[str]) -> list[TextItem]:
    """Texts from a file: ``.txt`` (one per line) or ``.jsonl`` (``caption``/``text`` field, optional ``id``)."""
    path = Path(path)
    if not path.is_file():
        raise SearchError(f"text file {path} not found")
    items: list[TextItem] = []
    seen: set[str] = set()
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        meta: dict[str, Any] = {"source_kind": "file", "source": path.name, "line": number}
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SearchError(f"{path}:{number}: not JSON: {err}") from err
            text = row.get("caption") or row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise SearchError(f"{path}:{number}: no 'caption' or 'text' string")
            key = str(row.get("id") or row.get("record_id") or number)
            meta.update({k: v for k, v in row.items() if isinstance(v, str | int | float | bool) and k != "caption"})
        else:
            text, key = line.strip(), str(number)
        if text in seen:
            continue  # identical texts would only crowd the top-k
        seen.add(text)
        items.append(TextItem(f"{path.stem}:{key}", text, meta))
    if not items:
        raise SearchError(f"text file {path} holds no texts")
    return items


def text_fingerprint(items: Sequence[TextItem]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.id.encode())
        digest.update(item.text.encode())
    return digest.hexdigest()[:16]


class TextIndex:
    """ECG -> text retrieval over a collection of ESI text embeddings."""

    def __init__(self, inference: ESIInference, collection: VectorCollection):
        self.inference = inference
        self.collection = collection

    def add_texts(self, items: Sequence[TextItem], *, batch_size: int = 256, progress: bool = False) -> int:
        """Embed and store texts; ids already present are not embedded again."""
        from tqdm import tqdm

        added = 0
        for start in tqdm(range(0, len(items), batch_size), disable=not progress, desc="indexing texts"):
            chunk = list(items[start:start + batch_size])
            present = {h.id for h in self.collection.get([i.id for i in chunk])}
            chunk = [i for i in chunk if i.id not in present]
            if chunk:
                embeddings = self.inference.embed_texts([i.text for i in chunk])
                added += self.collection.add([i.id for i in chunk], embeddings, [i.metadata for i in chunk],
                                             [i.text for i in chunk])
        return added

    def retrieve(self, ecg_embedding: np.ndarray, k: int = 5, where: Mapping[str, Any] | None = None) -> list[Hit]:
        """The k texts closest to one ECG embedding; [] for an empty collection."""
        return self.collection.query(np.asarray(ecg_embedding, dtype=np.float32), k=k, where=where)


def ephemeral_client():
    """An in-memory Chroma client (nothing written to disk), for one-off text indexes."""
    import chromadb

    from retrieval.client import chroma_settings

    return chromadb.EphemeralClient(settings=chroma_settings())


def hit_to_dict(hit: Hit) -> dict[str, Any]:
    meta = dict(hit.metadata)
    if isinstance(meta.get("labels"), str):
        try:
            meta["labels"] = json.loads(meta["labels"])
        except json.JSONDecodeError:
            pass
    return {"id": hit.id, "score": round(float(hit.score), 6), "metadata": meta, "document": hit.document}
