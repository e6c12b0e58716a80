"""What the HTTP layer calls: one object composing the services of :mod:`esi.serve.api.services`.

Each method is one request's work, written as a few service calls: an upload is turned into a record,
fitted to the model input once and embedded once, and the answer is assembled from the zero-shot,
collection, model and plot services. The services own the model lock, the caches and the CQA captioner.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from corpora.base import STANDARD_LEADS, ECGRecord
from esi.serve.api.services import (
    KNOWLEDGE_TEXTS_COLLECTION,
    BackendError,
    CollectionService,
    ExplainService,
    ModelService,
    NotFound,
    PlotService,
    ZeroShotService,
)
from esi.serve.api.uploads import ParsedECG
from esi.serve.inference import ESIInference

DEFAULT_LABELSET = "ptbxl_superclass"

__all__ = ["DEFAULT_LABELSET", "KNOWLEDGE_TEXTS_COLLECTION", "Backend", "BackendError", "NotFound"]


def _noted_zero_filled(ecg: ParsedECG) -> list[str]:
    """Leads of an upload that its file reader zero-filled and said so: the all-zero rows, when a parse
    note says "zero-filled" (only the file readers zero-fill; WFDB/.npy/JSON uploads keep leads as sent)."""
    if not any("zero-filled" in note for note in ecg.notes):
        return []
    return [lead for lead, row in zip(STANDARD_LEADS, ecg.signal, strict=True) if not np.any(row)]


def upload_record(ecg: ParsedECG) -> ECGRecord:
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
        self.model = ModelService(model_dir, device=device)
        self.collection = CollectionService(self.model, store_dir, collection, text_collection)
        self.cqa = ExplainService(knowledge_store)
        self.zeroshot = ZeroShotService(self.model, self.collection, default_labelset)
        self.plots = PlotService(self.collection, plot_cache_size)

    @property
    def inference(self) -> ESIInference:
        return self.model.inference

    @property
    def _model_lock(self) -> threading.RLock:
        """The model lock (kept under its old name for callers that hold it, e.g. load tests)."""
        return self.model.lock

    @property
    def default_labelset(self) -> str:
        return self.zeroshot.default_labelset

    # ---- meta ----------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "model": self.model.info(),
            **self.collection.counts(),
            "default_labelset": self.zeroshot.default_labelset,
            "knowledge_store": self.cqa.info(),
        }

    def labelsets(self) -> dict[str, Any]:
        return self.zeroshot.describe()

    # ---- uploaded ECGs -------------------------------------------------------------------------------

    def classify(self, ecg: ParsedECG, labelset: str | None, top_k: int, method: str = "zeroshot") -> dict[str, Any]:
        """``method="prototypes"``: few-shot from the indexed ECGs' labels instead of class text."""
        signal, notes = self.model.prepare(upload_record(ecg))
        scores = self.zeroshot.scores(self.model.embed(signal), labelset, top_k, method)
        return {**scores, "method": method, "notes": notes}

    def nearest_texts(self, ecg: ParsedECG, k: int) -> dict[str, Any]:
        signal, notes = self.model.prepare(upload_record(ecg))
        return {"texts": self.collection.texts(self.model.embed(signal), k), "source": self.collection.text_source,
                "notes": notes}

    def caption(self, ecg: ParsedECG, method: str) -> dict[str, Any]:
        signal, notes = self.model.prepare(upload_record(ecg))
        return {"caption": self.model.caption(signal, method), "method": method, "notes": notes}

    def analyze(self, ecg: ParsedECG, *, labelset: str | None, top_k: int, k_texts: int, k_similar: int,
                method: str = "greedy") -> dict[str, Any]:
        """Everything the page shows for an upload, from one prepare and one embedding: zero-shot scores,
        nearest texts, the most similar indexed ECGs and the caption (``caption_error`` instead when the
        model has no decoder, so the rest still answers)."""
        signal, notes = self.model.prepare(upload_record(ecg))
        embedding = self.model.embed(signal)
        result: dict[str, Any] = {
            "zero_shot": self.zeroshot.scores(embedding, labelset, top_k),
            "nearest_texts": self.collection.texts(embedding, k_texts),
            "texts_source": self.collection.text_source,
            "similar": self.collection.similar(embedding, k_similar),
            "notes": notes,
        }
        return self._with_caption(result, signal, method)

    def _with_caption(self, result: dict[str, Any], signal: np.ndarray, method: str) -> dict[str, Any]:
        try:
            result["caption"] = self.model.caption(signal, method)
        except BackendError as err:
            result["caption"], result["caption_error"] = None, str(err)
        return result

    def plot_signal(self, signal: np.ndarray, sampling_rate: float, title: str | None,
                    layout: str, image_format: str) -> bytes:
        return self.plots.plot(signal, sampling_rate, title, layout, image_format)

    # ---- the indexed collection ------------------------------------------------------------------------

    def search(self, query: str, k: int) -> list[dict[str, Any]]:
        return self.collection.search(query, k)

    def record_plot(self, record_id: str, layout: str, image_format: str) -> bytes:
        return self.plots.record_plot(record_id, layout, image_format)

    def record_details(self, record_id: str, *, labelset: str | None, top_k: int, k_texts: int) -> dict[str, Any]:
        stored = self.collection.stored(record_id)
        signal, notes = self.model.prepare(self.collection.record(record_id))
        embedding = self.model.embed(signal)
        details: dict[str, Any] = {
            "id": record_id,
            "metadata": stored["metadata"] | {"report": stored.get("document") or stored["metadata"].get("report")},
            "zero_shot": self.zeroshot.scores(embedding, labelset, top_k),
            "nearest_texts": self.collection.texts(embedding, k_texts),
            "notes": notes,
        }
        details["metadata"].pop("path", None)  # a server path is no business of the client
        return self._with_caption(details, signal, "greedy")

    # ---- CQA -------------------------------------------------------------------------------------------

    def explain(self, codes: list[str], *, age: float | None, sex: str | None, vocabulary: str = "plain",
                statements: list[str] | None = None) -> dict[str, Any]:
        """A CQA caption for given labels with the passages used: :func:`cqa.explain.explain_labels`, the
        function behind ``python -m cqa explain``, with the grounded-only captioner."""
        return self.cqa.explain(codes, age=age, sex=sex, vocabulary=vocabulary, statements=statements)
