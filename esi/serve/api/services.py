"""The services behind the HTTP API, one concern each; :class:`esi.serve.api.backend.Backend` composes them.

* :class:`ModelService`: the ESI model (prepare, embed, caption, query embeddings) behind one lock;
* :class:`ZeroShotService`: label sets, zero-shot and prototype classifiers, class scores;
* :class:`CollectionService`: the indexed ECG collection and the text collection (search, neighbours,
  stored records);
* :class:`PlotService`: ECG plots, cached per indexed record;
* :class:`ExplainService`: CQA captions for labels (:func:`cqa.explain.explain_labels`, as ``cqa explain``).

Nothing here opens a path that came from a client. Label set names are matched against the shipped
label sets only (``esi.zeroshot.labelsets.load_labelset`` would also open a JSON *path*), and a record's signal
is read from the ``path`` stored in the collection's metadata, looked up by an id that must exist in the
collection. Caches are ``functools.lru_cache`` per service instance (failures are not cached).
"""

from __future__ import annotations

import json
import logging
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from corpora.base import ECGRecord
from esi.serve.inference import ESIInference, InputError, load_record
from esi.serve.plotting import plot_ecg
from esi.serve.search import (
    ECGIndex,
    SearchError,
    TextIndex,
    ephemeral_client,
    hit_to_dict,
    knowledge_texts,
    open_collection,
)
from esi.zeroshot.classifier import (
    DEFAULT_CALIBRATION,
    DEFAULT_CLASS_TEXT,
    ZeroShotClassifier,
    class_codes,
    prototype_classifier,
)
from esi.zeroshot.labelsets import LabelSet, available_labelsets

log = logging.getLogger(__name__)

KNOWLEDGE_TEXTS_COLLECTION = "esi-knowledge-texts"
QUERY_CACHE_SIZE = 512
RECORD_CACHE_SIZE = 64


class BackendError(Exception):
    """An error with an HTTP status: the message is shown to the client as ``detail``."""

    status_code = 500

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code


class NotFound(BackendError):
    status_code = 404


class ModelService:
    """The model, serialised by one lock: the Hugging Face fast tokenizer inside the text tower is not safe
    to call from several threads at once, and on a small CPU machine concurrent forward passes only
    compete for the same cores."""

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        self.model_dir = Path(model_dir)
        self.inference = ESIInference(self.model_dir, device=device)
        self.lock = threading.RLock()
        self.query_embedding = lru_cache(maxsize=QUERY_CACHE_SIZE)(self._query_embedding)

    def info(self) -> dict[str, Any]:
        return {
            "name": self.model_dir.name,
            "embed_dim": self.inference.embed_dim,
            "sampling_rate": self.inference.sampling_rate,
            "n_samples": self.inference.n_samples,
            "has_caption_decoder": bool(self.inference.model.config.has_decoder),
        }

    def prepare(self, record: ECGRecord) -> tuple[np.ndarray, list[str]]:
        """The record fitted to the model input (the one signal transform) and the notes on what changed."""
        try:
            prepared = self.inference.prepare(record, warn=False)
        except InputError as err:
            raise BackendError(str(err), status_code=422) from err
        return prepared.signal, prepared.notes

    def embed(self, signal: np.ndarray) -> np.ndarray:
        with self.lock:
            return self.inference.embed_signals(signal[None])[0]

    def caption(self, signal: np.ndarray, method: str) -> str:
        if not self.inference.model.config.has_decoder:
            raise BackendError("this model was trained without a caption decoder", status_code=409)
        with self.lock:
            return self.inference.caption(signal[None], method=method)[0]

    def _query_embedding(self, query: str) -> np.ndarray:
        """A text query's embedding (cached per query string by ``query_embedding``)."""
        with self.lock:
            try:
                return self.inference.query_embedding(query)
            except InputError as error:  # an unusable query (no Latin letters, not valid Unicode): the client's
                raise BackendError(str(error), status_code=422) from error


class CollectionService:
    """The indexed ECG collection (text -> ECG search, nearest ECGs, stored records) and the text
    collection for ECG -> text retrieval."""

    def __init__(self, model: ModelService, store_dir: str | Path, collection: str = "ecg",
                 text_collection: str | None = None) -> None:
        self.model = model
        self.store_dir = Path(store_dir)
        inference = model.inference
        try:
            ecg_collection = open_collection(
                str(self.store_dir), collection, kind="ecg", inference=inference,
                model_dir=str(model.model_dir), create=False,
            )
        except (SearchError, ValueError) as err:
            raise BackendError(f"cannot open ECG collection {collection!r} in {self.store_dir}: {err}") from err
        self.collection_name = collection
        self.ecg_index = ECGIndex(inference, ecg_collection)
        self.text_index, self.text_source = self._open_texts(text_collection)
        self.record = lru_cache(maxsize=RECORD_CACHE_SIZE)(self._read_record)

    def _open_texts(self, name: str | None) -> tuple[TextIndex, str]:
        """The text collection for ECG -> text retrieval.

        A named collection must already exist in the store. Without a name, the built-in knowledge
        corpus is used, embedded once and kept in the store as ``KNOWLEDGE_TEXTS_COLLECTION`` (ids are
        content hashes, so a restart only embeds new or changed passages); a store that cannot be
        written to gets an in-memory copy instead.
        """
        inference = self.model.inference
        if name:
            try:
                collection = open_collection(str(self.store_dir), name, kind="text", inference=inference,
                                             create=False)
            except (SearchError, ValueError) as err:
                raise BackendError(f"cannot open text collection {name!r} in {self.store_dir}: {err}") from err
            return TextIndex(inference, collection), f"collection {name}"
        items = knowledge_texts()
        try:
            collection = open_collection(str(self.store_dir), KNOWLEDGE_TEXTS_COLLECTION, kind="text",
                                         inference=inference, model_dir=str(self.model.model_dir))
            source = f"knowledge corpus (collection {KNOWLEDGE_TEXTS_COLLECTION})"
        except (SearchError, ValueError) as err:
            log.warning("cannot keep knowledge texts in %s (%s); embedding them in memory", self.store_dir, err)
            collection = open_collection(ephemeral_client(), KNOWLEDGE_TEXTS_COLLECTION, kind="text",
                                         inference=inference)
            source = "knowledge corpus (in memory)"
        index = TextIndex(inference, collection)
        wanted = {item.id for item in items}
        present = [h.id for h in collection.get(sorted(wanted))]
        if len(present) < len(wanted):
            log.info("embedding %d knowledge passages for ECG->text retrieval (once per store; a few "
                     "minutes on a small CPU)", len(wanted) - len(present))
        with self.model.lock:
            added = index.add_texts(items)
        if added:
            log.info("embedded %d knowledge passages into %s", added, source)
        return index, source

    def counts(self) -> dict[str, Any]:
        return {"collection": {"name": self.collection_name, "count": self.ecg_index.collection.count()},
                "texts": {"source": self.text_source, "count": self.text_index.collection.count()}}

    def texts(self, embedding: np.ndarray, k: int) -> list[dict[str, Any]]:
        """The ``k`` texts nearest to an ECG embedding."""
        hits = self.text_index.retrieve(embedding, k=k)
        return [{"id": h.id, "text": h.document or "", "score": round(float(h.score), 6),
                 "metadata": dict(h.metadata)} for h in hits]

    def similar(self, embedding: np.ndarray, k: int) -> list[dict[str, Any]]:
        """The ``k`` indexed ECGs nearest to an embedding (a text query's or an ECG's), for the client."""
        try:
            hits = self.ecg_index.search_embedding(embedding, k=k)
        except (SearchError, ValueError) as err:
            raise BackendError(f"search failed: {err}", status_code=422) from err
        out = []
        for hit in hits:
            item = hit_to_dict(hit)
            item.pop("document", None)
            item["metadata"].pop("path", None)  # a server path is no business of the client
            labels = item["metadata"].get("labels")
            if isinstance(labels, dict):
                item["metadata"]["labels"] = sorted(labels, key=lambda code: -float(labels[code] or 0))
            out.append(item)
        return out

    def search(self, query: str, k: int) -> list[dict[str, Any]]:
        """Text -> ECG search."""
        return self.similar(self.model.query_embedding(query), k)

    def stored(self, record_id: str) -> dict[str, Any]:
        """An indexed item (id, score, metadata, document) by id; :class:`NotFound` when absent."""
        hits = self.ecg_index.collection.get([record_id])
        if not hits:
            raise NotFound(f"no ECG with id {record_id!r} in collection {self.collection_name!r}")
        return hit_to_dict(hits[0])

    def _read_record(self, record_id: str) -> ECGRecord:
        """The stored record's signal, read from the path recorded at indexing time (cached by ``record``)."""
        path = self.stored(record_id)["metadata"].get("path")
        if not path:
            raise NotFound(f"ECG {record_id!r} was indexed without a signal path; it cannot be shown")
        try:
            return load_record(path)
        except (InputError, OSError, ValueError) as err:
            raise NotFound(f"the signal of ECG {record_id!r} is not readable on this server: {err}") from err

    def labelled_embeddings(self) -> tuple[np.ndarray, list[set[str]]]:
        """Every indexed ECG's embedding and its set of label codes (for prototype classifiers)."""
        _, embeddings, metas = self.ecg_index.collection.items()
        labels = [set(json.loads(m["labels"])) if isinstance(m.get("labels"), str) else set() for m in metas]
        return embeddings, labels


class ZeroShotService:
    """Shipped label sets and their classifiers: zero-shot from class text, or prototypes (few-shot: each
    class is the mean embedding of the indexed ECGs labelled with it). Classifiers are built once each."""

    def __init__(self, model: ModelService, collection: CollectionService, default_labelset: str) -> None:
        self.model = model
        self.collection = collection
        self.labelsets = available_labelsets()
        self.default_labelset = ""
        self.default_labelset = self.resolve(default_labelset)
        self._classifiers: dict[str, ZeroShotClassifier] = {}
        self._prototypes: dict[str, ZeroShotClassifier] = {}

    def resolve(self, name: str | None) -> str:
        """A shipped label set's name from its name or alias; never treats the name as a path."""
        if not name:
            return self.default_labelset
        wanted = name.strip().lower()
        for labelset in self.labelsets.values():
            if wanted in {labelset.name.lower(), *(a.lower() for a in labelset.aliases)}:
                return labelset.name
        raise BackendError(
            f"unknown label set {name!r}; available: {', '.join(sorted(self.labelsets))}", status_code=422
        )

    def describe(self) -> dict[str, Any]:
        return {
            "default": self.default_labelset,
            "labelsets": [
                {"name": ls.name, "aliases": list(ls.aliases), "description": ls.description,
                 "n_classes": len(ls.classes), "classes": ls.class_ids}
                for ls in self.labelsets.values()
            ],
        }

    def classifier(self, name: str | None) -> ZeroShotClassifier:
        key = self.resolve(name)
        inference = self.model.inference
        with self.model.lock:
            if key not in self._classifiers:
                labelset: LabelSet = self.labelsets[key]
                self._classifiers[key] = ZeroShotClassifier.build(
                    inference.model, labelset, "ecg", class_text=DEFAULT_CLASS_TEXT,
                    calibration=DEFAULT_CALIBRATION, prior=inference.label_prior,
                    terms=inference.label_prior_document.get("terms"))
            return self._classifiers[key]

    def prototypes(self, name: str | None) -> ZeroShotClassifier:
        key = self.resolve(name)
        with self.model.lock:
            if key not in self._prototypes:
                labelset: LabelSet = self.labelsets[key]
                codes = class_codes(labelset, self.model.inference.label_prior_document.get("terms"))
                embeddings, labels = self.collection.labelled_embeddings()
                y = np.array([[bool(have & codes[c.id]) for c in labelset.classes] for have in labels], dtype=int)
                if not y.any():
                    raise BackendError(f"no indexed ECG carries a label of {key!r}: nothing to build prototypes "
                                       "from", status_code=409)
                self._prototypes[key] = prototype_classifier(labelset, embeddings, y.reshape(len(labels), -1))
            return self._prototypes[key]

    def scores(self, embedding: np.ndarray, labelset: str | None, top_k: int,
               method: str = "zeroshot") -> dict[str, Any]:
        """The ``top_k`` classes of a label set for one ECG embedding, best first."""
        classifier = self.prototypes(labelset) if method == "prototypes" else self.classifier(labelset)
        scores = classifier.scores(embedding[None])[0]
        probabilities = classifier.probabilities(scores)
        order = np.argsort(-scores)[:top_k]
        return {
            "labelset": classifier.labelset.name,
            "scores": [
                {"class": classifier.class_ids[j], "display": classifier.labelset.classes[j].display,
                 "score": round(float(scores[j]), 6), "probability": round(float(probabilities[j]), 6)}
                for j in order
            ],
        }


class PlotService:
    """ECG plots; an indexed record's plot is cached per (id, layout, format)."""

    def __init__(self, collection: CollectionService, cache_size: int = 256) -> None:
        self.collection = collection
        self.record_plot = lru_cache(maxsize=cache_size)(self._record_plot)

    @staticmethod
    def plot(signal: np.ndarray, sampling_rate: float, title: str | None, layout: str, image_format: str) -> bytes:
        try:
            return plot_ecg(signal, sampling_rate, layout=layout, image_format=image_format, title=title)
        except ValueError as err:
            raise BackendError(f"cannot plot: {err}", status_code=422) from err

    def _record_plot(self, record_id: str, layout: str, image_format: str) -> bytes:
        record = self.collection.record(record_id)
        return self.plot(record.signal, record.sampling_rate, record_id, layout, image_format)


class ExplainService:
    """Grounded-only CQA captions (``--llm none``) for given labels, with passages from the knowledge store
    when the server has one: the descriptions are the grounded ones, never LLM text, so a request costs
    milliseconds. The captioner is built on first use and used by one request at a time."""

    def __init__(self, knowledge_store: str | Path | None = None) -> None:
        self.knowledge = self._open(knowledge_store) if knowledge_store else None
        self._captioner: Any = None
        self._lock = threading.Lock()

    @staticmethod
    def _open(path: str | Path) -> Any:
        """The knowledge store for CQA passages; a missing or half-built one fails at start-up."""
        from retrieval.store import KnowledgeStore, StoreError

        try:
            return KnowledgeStore.open(str(path))
        except StoreError as err:
            raise BackendError(f"cannot open knowledge store {path}: {err}") from err

    def info(self) -> dict[str, Any] | None:
        return None if self.knowledge is None else {"chunks": self.knowledge.count()}

    def explain(self, codes: list[str], *, age: float | None, sex: str | None, vocabulary: str = "plain",
                statements: list[str] | None = None) -> dict[str, Any]:
        """What ``python -m cqa explain --llm none --json`` prints (:func:`cqa.explain.explain_labels`),
        plus whether passages came from a knowledge store."""
        from cqa.explain import explain_labels

        statements = statements or []
        if not codes and not statements:
            raise BackendError("give at least one code or statement", status_code=422)
        with self._lock:
            if self._captioner is None:
                from cqa.caption import Captioner

                self._captioner = Captioner(describer=None, store=self.knowledge)
            try:
                explanation = explain_labels(self._captioner, codes, statements=statements, vocabulary=vocabulary,
                                             age=age, sex=sex)
            except ValueError as err:
                raise BackendError(f"cannot explain these labels: {err}", status_code=422) from err
        return {**explanation.to_dict(), "knowledge_store": self.knowledge is not None}
