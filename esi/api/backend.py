"""What the HTTP layer calls: the ESI model, the indexed ECG collection, texts, label sets and CQA.

The backend owns one :class:`esi.inference.ESIInference` and serialises model calls with a lock: the
Hugging Face fast tokenizer inside the text tower is not safe to call from several threads at once,
and on a small CPU machine concurrent forward passes only compete for the same cores.

Nothing here opens a path that came from a client. Label set names are matched against the
shipped label sets only (``esi.labelsets.load_labelset`` would also open a JSON *path*), and a
record's signal is read from the ``path`` stored in the collection's metadata, looked up by an id
that must exist in the collection.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np

from corpora.base import STANDARD_LEADS, ECGRecord
from esi.api.uploads import ParsedECG
from esi.inference import ESIInference, InputError, load_record
from esi.labelsets import LabelSet, available_labelsets
from esi.plotting import plot_ecg
from esi.search import (
    ECGIndex,
    SearchError,
    TextIndex,
    ephemeral_client,
    hit_to_dict,
    knowledge_texts,
    open_collection,
)
from esi.zeroshot import (
    DEFAULT_CALIBRATION,
    DEFAULT_CLASS_TEXT,
    ZeroShotClassifier,
    class_codes,
    prototype_classifier,
)

log = logging.getLogger(__name__)

DEFAULT_LABELSET = "ptbxl_superclass"
KNOWLEDGE_TEXTS_COLLECTION = "esi-knowledge-texts"


class BackendError(Exception):
    """An error with an HTTP status: the message is shown to the client as ``detail``."""

    status_code = 500

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code


class NotFound(BackendError):
    status_code = 404


class _LRU:
    """A small thread-safe LRU cache (values computed outside the lock)."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = compute()
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value


def _noted_zero_filled(ecg: ParsedECG) -> list[str]:
    """Leads of an upload that its file reader zero-filled and said so: the all-zero rows, when a parse
    note says "zero-filled" (only the file readers zero-fill; WFDB/.npy/JSON uploads keep leads as sent)."""
    if not any("zero-filled" in note for note in ecg.notes):
        return []
    return [lead for lead, row in zip(STANDARD_LEADS, ecg.signal, strict=True) if not np.any(row)]


class Backend:
    """ESI operations for the API; construct once per app (loads the model, opens the collections)."""

    def __init__(
        self,
        model_dir: str | Path,
        store_dir: str | Path,
        *,
        collection: str = "ecg",
        text_collection: str | None = None,
        knowledge_store: str | Path | None = None,
        default_labelset: str = DEFAULT_LABELSET,
        device: str = "cpu",
        plot_cache_size: int = 256,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.store_dir = Path(store_dir)
        self.inference = ESIInference(self.model_dir, device=device)
        self._model_lock = threading.RLock()
        try:
            ecg_collection = open_collection(
                str(self.store_dir), collection, kind="ecg", inference=self.inference,
                model_dir=str(self.model_dir), create=False,
            )
        except (SearchError, ValueError) as err:
            raise BackendError(f"cannot open ECG collection {collection!r} in {self.store_dir}: {err}") from err
        self.collection_name = collection
        self.ecg_index = ECGIndex(self.inference, ecg_collection)
        self.text_index, self.text_source = self._open_texts(text_collection)
        self._knowledge = self._open_knowledge(knowledge_store) if knowledge_store else None
        self._captioner = None
        self._cqa_lock = threading.Lock()
        self._labelsets = available_labelsets()
        self.default_labelset = self._labelset_name(default_labelset)
        self._classifiers: dict[str, ZeroShotClassifier] = {}
        self._prototypes: dict[str, ZeroShotClassifier] = {}
        self._records = _LRU(64)
        self._plots = _LRU(plot_cache_size)
        self._query_embeddings = _LRU(512)

    # ---- setup ---------------------------------------------------------------------------------------

    def _open_texts(self, name: str | None) -> tuple[TextIndex, str]:
        """The text collection for ECG -> text retrieval.

        A named collection must already exist in the store. Without a name, the built-in knowledge
        corpus is used, embedded once and kept in the store as ``KNOWLEDGE_TEXTS_COLLECTION`` (ids are
        content hashes, so a restart only embeds new or changed passages); a store that cannot be
        written to gets an in-memory copy instead.
        """
        if name:
            try:
                collection = open_collection(str(self.store_dir), name, kind="text", inference=self.inference,
                                             create=False)
            except (SearchError, ValueError) as err:
                raise BackendError(f"cannot open text collection {name!r} in {self.store_dir}: {err}") from err
            return TextIndex(self.inference, collection), f"collection {name}"
        items = knowledge_texts()
        try:
            collection = open_collection(str(self.store_dir), KNOWLEDGE_TEXTS_COLLECTION, kind="text",
                                         inference=self.inference, model_dir=str(self.model_dir))
            source = f"knowledge corpus (collection {KNOWLEDGE_TEXTS_COLLECTION})"
        except (SearchError, ValueError) as err:
            log.warning("cannot keep knowledge texts in %s (%s); embedding them in memory", self.store_dir, err)
            collection = open_collection(ephemeral_client(), KNOWLEDGE_TEXTS_COLLECTION, kind="text",
                                         inference=self.inference)
            source = "knowledge corpus (in memory)"
        index = TextIndex(self.inference, collection)
        wanted = {item.id for item in items}
        present = [h.id for h in collection.get(sorted(wanted))]
        if len(present) < len(wanted):
            log.info("embedding %d knowledge passages for ECG->text retrieval (once per store; a few "
                     "minutes on a small CPU)", len(wanted) - len(present))
        with self._model_lock:
            added = index.add_texts(items)
        if added:
            log.info("embedded %d knowledge passages into %s", added, source)
        return index, source

    @staticmethod
    def _open_knowledge(path: str | Path):
        """The knowledge store for CQA passages; a missing or half-built one fails at start-up."""
        from retrieval.store import KnowledgeStore, StoreError

        try:
            return KnowledgeStore.open(str(path))
        except StoreError as err:
            raise BackendError(f"cannot open knowledge store {path}: {err}") from err

    def _labelset_name(self, name: str | None) -> str:
        """Resolve a shipped label set by name or alias; never treats the name as a path."""
        if not name:
            return self.default_labelset
        wanted = name.strip().lower()
        for labelset in self._labelsets.values():
            if wanted in {labelset.name.lower(), *(a.lower() for a in labelset.aliases)}:
                return labelset.name
        raise BackendError(
            f"unknown label set {name!r}; available: {', '.join(sorted(self._labelsets))}", status_code=422
        )

    def classifier(self, name: str | None) -> ZeroShotClassifier:
        key = self._labelset_name(name)
        with self._model_lock:
            if key not in self._classifiers:
                labelset: LabelSet = self._labelsets[key]
                self._classifiers[key] = ZeroShotClassifier.build(
                    self.inference.model, labelset, "ecg", class_text=DEFAULT_CLASS_TEXT,
                    calibration=DEFAULT_CALIBRATION, prior=self.inference.label_prior,
                    terms=self.inference.label_prior_document.get("terms"))
            return self._classifiers[key]

    # ---- meta ----------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        config = self.inference.model.config
        return {
            "status": "ok",
            "model": {
                "name": self.model_dir.name,
                "embed_dim": self.inference.embed_dim,
                "sampling_rate": self.inference.sampling_rate,
                "n_samples": self.inference.n_samples,
                "has_caption_decoder": bool(config.has_decoder),
            },
            "collection": {"name": self.collection_name, "count": self.ecg_index.collection.count()},
            "texts": {"source": self.text_source, "count": self.text_index.collection.count()},
            "default_labelset": self.default_labelset,
            "knowledge_store": None if self._knowledge is None else {"chunks": self._knowledge.count()},
        }

    def labelsets(self) -> dict[str, Any]:
        return {
            "default": self.default_labelset,
            "labelsets": [
                {"name": ls.name, "aliases": list(ls.aliases), "description": ls.description,
                 "n_classes": len(ls.classes), "classes": ls.class_ids}
                for ls in self._labelsets.values()
            ],
        }

    # ---- model work on one signal --------------------------------------------------------------------

    def _prepare(self, record: ECGRecord) -> tuple[np.ndarray, list[str]]:
        try:
            prepared = self.inference.prepare(record, warn=False)
        except InputError as err:
            raise BackendError(str(err), status_code=422) from err
        return prepared.signal, prepared.notes

    def _embed(self, signal: np.ndarray) -> np.ndarray:
        with self._model_lock:
            return self.inference.embed_signals(signal[None])[0]

    def prototypes(self, name: str | None) -> ZeroShotClassifier:
        """Few-shot classifier: each class is the mean embedding of the indexed ECGs labelled with it."""
        key = self._labelset_name(name)
        with self._model_lock:
            if key not in self._prototypes:
                labelset: LabelSet = self._labelsets[key]
                codes = class_codes(labelset, self.inference.label_prior_document.get("terms"))
                _, embeddings, metas = self.ecg_index.collection.items()
                labels = [set(json.loads(m["labels"])) if isinstance(m.get("labels"), str) else set() for m in metas]
                y = np.array([[bool(have & codes[c.id]) for c in labelset.classes] for have in labels], dtype=int)
                if not y.any():
                    raise BackendError(f"no indexed ECG carries a label of {key!r}: nothing to build prototypes "
                                       "from", status_code=409)
                self._prototypes[key] = prototype_classifier(labelset, embeddings, y.reshape(len(labels), -1))
            return self._prototypes[key]

    def _scores(self, embedding: np.ndarray, labelset: str | None, top_k: int,
                method: str = "zeroshot") -> dict[str, Any]:
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

    def _texts(self, embedding: np.ndarray, k: int) -> list[dict[str, Any]]:
        hits = self.text_index.retrieve(embedding, k=k)
        return [{"id": h.id, "text": h.document or "", "score": round(float(h.score), 6),
                 "metadata": dict(h.metadata)} for h in hits]

    def _caption(self, signal: np.ndarray, method: str) -> str:
        if not self.inference.model.config.has_decoder:
            raise BackendError("this model was trained without a caption decoder", status_code=409)
        with self._model_lock:
            return self.inference.caption(signal[None], method=method)[0]

    @staticmethod
    def _upload_record(ecg: ParsedECG) -> ECGRecord:
        """The upload as a record. Its parse notes (derived leads, channels left out, ...) go into
        ``extra["notes"]``, which ``fit_to_model`` puts first in the response's ``notes``; leads the file
        reader already zero-filled and noted are passed as ``zero_filled_leads`` so they are not noted twice
        (once as "all NaN", again as "flat")."""
        extra: dict[str, Any] = {"notes": list(ecg.notes)}
        filled = _noted_zero_filled(ecg)
        if filled:
            extra["zero_filled_leads"] = filled
        return ECGRecord(record_id=ecg.name, dataset="upload", signal=ecg.signal,
                         sampling_rate=ecg.sampling_rate, age=ecg.age, sex=ecg.sex, extra=extra)

    def classify(self, ecg: ParsedECG, labelset: str | None, top_k: int, method: str = "zeroshot") -> dict[str, Any]:
        """``method="prototypes"``: few-shot from the indexed ECGs' labels instead of class text."""
        signal, notes = self._prepare(self._upload_record(ecg))
        return {**self._scores(self._embed(signal), labelset, top_k, method), "method": method, "notes": notes}

    def nearest_texts(self, ecg: ParsedECG, k: int) -> dict[str, Any]:
        signal, notes = self._prepare(self._upload_record(ecg))
        return {"texts": self._texts(self._embed(signal), k), "source": self.text_source, "notes": notes}

    def caption(self, ecg: ParsedECG, method: str) -> dict[str, Any]:
        signal, notes = self._prepare(self._upload_record(ecg))
        return {"caption": self._caption(signal, method), "method": method, "notes": notes}

    def analyze(self, ecg: ParsedECG, *, labelset: str | None, top_k: int, k_texts: int, k_similar: int,
                method: str = "greedy") -> dict[str, Any]:
        """Everything the page shows for an upload, from one prepare and one embedding: zero-shot scores,
        nearest texts, the most similar indexed ECGs and the caption (``caption_error`` instead when the
        model has no decoder, so the rest still answers)."""
        signal, notes = self._prepare(self._upload_record(ecg))
        embedding = self._embed(signal)
        result: dict[str, Any] = {
            "zero_shot": self._scores(embedding, labelset, top_k),
            "nearest_texts": self._texts(embedding, k_texts),
            "texts_source": self.text_source,
            "similar": self._similar(embedding, k_similar),
            "notes": notes,
        }
        try:
            result["caption"] = self._caption(signal, method)
        except BackendError as err:
            result["caption"], result["caption_error"] = None, str(err)
        return result

    def plot_signal(self, signal: np.ndarray, sampling_rate: float, title: str | None,
                    layout: str, image_format: str) -> bytes:
        try:
            return plot_ecg(signal, sampling_rate, layout=layout, image_format=image_format, title=title)
        except ValueError as err:
            raise BackendError(f"cannot plot: {err}", status_code=422) from err

    # ---- the indexed collection ------------------------------------------------------------------------

    def search(self, query: str, k: int) -> list[dict[str, Any]]:
        def embed() -> np.ndarray:
            with self._model_lock:
                return self.inference.query_embedding(query)

        return self._similar(self._query_embeddings.get(query, embed), k)

    def _similar(self, embedding: np.ndarray, k: int) -> list[dict[str, Any]]:
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

    def _stored(self, record_id: str) -> dict[str, Any]:
        hits = self.ecg_index.collection.get([record_id])
        if not hits:
            raise NotFound(f"no ECG with id {record_id!r} in collection {self.collection_name!r}")
        return hit_to_dict(hits[0])

    def _load_signal(self, record_id: str) -> ECGRecord:
        """The stored record's signal, read from the path recorded at indexing time (cached)."""

        def load() -> ECGRecord:
            stored = self._stored(record_id)
            path = stored["metadata"].get("path")
            if not path:
                raise NotFound(f"ECG {record_id!r} was indexed without a signal path; it cannot be shown")
            try:
                return load_record(path)
            except (InputError, OSError, ValueError) as err:
                raise NotFound(f"the signal of ECG {record_id!r} is not readable on this server: {err}") from err

        return self._records.get(record_id, load)

    def record_plot(self, record_id: str, layout: str, image_format: str) -> bytes:
        def render() -> bytes:
            record = self._load_signal(record_id)
            return self.plot_signal(record.signal, record.sampling_rate, record_id, layout, image_format)

        return self._plots.get((record_id, layout, image_format), render)

    def record_details(self, record_id: str, *, labelset: str | None, top_k: int, k_texts: int) -> dict[str, Any]:
        stored = self._stored(record_id)
        record = self._load_signal(record_id)
        signal, notes = self._prepare(record)
        embedding = self._embed(signal)
        details: dict[str, Any] = {
            "id": record_id,
            "metadata": stored["metadata"] | {"report": stored.get("document") or stored["metadata"].get("report")},
            "zero_shot": self._scores(embedding, labelset, top_k),
            "nearest_texts": self._texts(embedding, k_texts),
            "notes": notes,
        }
        details["metadata"].pop("path", None)  # a server path is no business of the client
        try:
            details["caption"] = self._caption(signal, "greedy")
        except BackendError as err:
            details["caption"], details["caption_error"] = None, str(err)
        return details

    # ---- CQA -------------------------------------------------------------------------------------------

    def explain(self, codes: list[str], *, age: float | None, sex: str | None, vocabulary: str = "plain",
                statements: list[str] | None = None) -> dict[str, Any]:
        """A CQA caption for given labels, grounded in the knowledge corpus, with the passages used.

        Mirrors ``python -m cqa explain --llm none --json`` (that logic lives in ``cqa.__main__``, not in a
        library function): the descriptions are the grounded ones, never LLM text, so a request costs
        milliseconds; passages come from ``--knowledge-store`` when the server has one.
        """
        from cqa.caption import label_text

        statements = statements or []
        if not codes and not statements:
            raise BackendError("give at least one code or statement", status_code=422)
        vocab = "" if vocabulary == "plain" else vocabulary
        labels = {code: 100.0 for code in codes}
        with self._cqa_lock:
            captioner = self._get_captioner()
            normalizer = captioner.normalizer
            try:
                normalized = normalizer.normalize(labels, vocab)
                if statements:
                    normalized = normalizer.merge(
                        normalized, normalizer.normalize({s: 100.0 for s in statements}, "mimic_statement"))
                labels.update({s: 100.0 for s in statements})
                caption = captioner.caption(normalized, age=age, sex=sex, labels=labels,
                                            text_of_labels=label_text(labels, vocab), with_passages=True)
            except ValueError as err:
                raise BackendError(f"cannot explain these labels: {err}", status_code=422) from err
        passages = [dict(p.to_dict() if hasattr(p, "to_dict") else {"text": str(p)}, finding=finding_id)
                    for finding_id, items in caption.passages.items() for p in items]
        return {
            "caption": caption.caption,
            "findings": [f.to_dict() for f in caption.findings],
            "negated": [f.to_dict() for f in caption.negated],
            "unknown_labels": caption.unknown_labels,
            "sources": caption.sources,
            "passages": passages,
            "label_text": caption.label_text,
            "knowledge_store": self._knowledge is not None,
        }

    def _get_captioner(self):
        """Grounded-only captioner (``--llm none``), built on first use; callers hold ``_cqa_lock``."""
        if self._captioner is None:
            from cqa.caption import Captioner

            self._captioner = Captioner(describer=None, store=self._knowledge)
        return self._captioner
