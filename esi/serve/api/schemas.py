"""Pydantic models of the API's JSON answers, so ``/docs`` shows what each endpoint returns.

The app validates every answer against its model (``response_model``) and leaves out fields the backend
did not set (``caption_error``, ``plot_error``, ``stale``). Fields owned by other layers (collection
metadata, CQA findings and passages) stay free-form objects.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorResponse(BaseModel):
    """Any 4xx/5xx answer: the reason in words (or FastAPI's list of field errors for a malformed request)."""

    detail: str | list[dict[str, Any]]


# ---- meta -----------------------------------------------------------------------------------------------


class ModelInfo(BaseModel):
    name: str = Field(description="the model directory's name")
    embed_dim: int
    sampling_rate: float = Field(description="Hz the model reads; other rates are resampled")
    n_samples: int = Field(description="samples per lead the model reads; longer ECGs are cropped, shorter padded")
    has_caption_decoder: bool


class CollectionInfo(BaseModel):
    name: str
    count: int


class TextsInfo(BaseModel):
    source: str = Field(description="where ECG -> text retrieval draws its texts from")
    count: int


class KnowledgeStoreInfo(BaseModel):
    chunks: int


class PoolStats(BaseModel):
    workers: int
    max_queue: int
    running: int
    waiting: int
    rejected: int


class HealthResponse(BaseModel):
    status: str
    model: ModelInfo
    collection: CollectionInfo
    texts: TextsInfo
    default_labelset: str
    knowledge_store: KnowledgeStoreInfo | None = Field(description="null when the server has no knowledge store")
    pool: PoolStats
    stale: bool | None = Field(None, description="present (true) when the status check overran its time budget "
                                                 "and this is the last good answer")


class LabelSetInfo(BaseModel):
    name: str
    aliases: list[str]
    description: str
    n_classes: int
    classes: list[str]


class LabelSetsResponse(BaseModel):
    default: str
    labelsets: list[LabelSetInfo]


# ---- answers about an ECG -------------------------------------------------------------------------------


class ECGInfo(BaseModel):
    """The uploaded ECG as parsed (before it is fitted to the model input)."""

    name: str = Field(description="display name (sanitised; never a path)")
    format: str = Field(description="wfdb, cinc-mat, json, npy, edf, dicom, hl7-aecg, ge-muse or csv")
    sampling_rate: float
    n_samples: int
    duration_s: float
    leads: list[str]
    age: float | None
    sex: str | None
    notes: list[str] = Field(description="what parsing changed (derived leads, channels left out)")


class ClassScore(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: str = Field(alias="class", description="class id in the label set")
    display: str
    score: float = Field(description="cosine similarity (zero-shot) or prototype score")
    probability: float = Field(description="calibrated probability of the class")


class ZeroShotScores(BaseModel):
    labelset: str
    scores: list[ClassScore] = Field(description="best first")


class TextHit(BaseModel):
    id: str
    text: str
    score: float
    metadata: dict[str, Any]


class ECGHit(BaseModel):
    """An indexed ECG near a query; ``metadata`` is what was stored at indexing (never a server path)."""

    id: str
    score: float
    metadata: dict[str, Any]
    rank: int
    plot_url: str


NOTES_DOC = "what fitting the ECG to the model input changed (resampled, cropped, padded, leads zero-filled)"


class ClassifyResponse(BaseModel):
    ecg: ECGInfo
    labelset: str
    scores: list[ClassScore] = Field(description="best first")
    method: str
    notes: list[str] = Field(description=NOTES_DOC)


class RetrieveResponse(BaseModel):
    ecg: ECGInfo
    texts: list[TextHit]
    source: str
    notes: list[str] = Field(description=NOTES_DOC)


class CaptionResponse(BaseModel):
    ecg: ECGInfo
    caption: str
    method: str
    notes: list[str] = Field(description=NOTES_DOC)


class AnalyzeResponse(BaseModel):
    ecg: ECGInfo
    zero_shot: ZeroShotScores
    nearest_texts: list[TextHit]
    texts_source: str
    similar: list[ECGHit]
    notes: list[str] = Field(description=NOTES_DOC)
    caption: str | None
    caption_error: str | None = Field(None, description="present when no caption could be made")
    plot_url: str | None = Field(description="the plot as a PNG data: URL")
    plot_error: str | None = Field(None, description="present when no plot could be made")


class SearchResponse(BaseModel):
    query: str
    k: int
    results: list[ECGHit]


class RecordDetails(BaseModel):
    id: str
    metadata: dict[str, Any]
    zero_shot: ZeroShotScores
    nearest_texts: list[TextHit]
    notes: list[str] = Field(description=NOTES_DOC)
    caption: str | None
    caption_error: str | None = Field(None, description="present when no caption could be made")
    plot_url: str


# ---- CQA ------------------------------------------------------------------------------------------------


class UnknownLabel(BaseModel):
    label: str
    reason: str


class ExplainResponse(BaseModel):
    """What ``python -m cqa explain --llm none --json`` prints, plus whether passages came from a store."""

    caption: str
    findings: list[dict[str, Any]] = Field(description="recognised findings in caption order")
    negated: list[dict[str, Any]]
    unknown_labels: list[UnknownLabel]
    sources: dict[str, dict[str, Any]] = Field(description="per finding: where its description came from, and why")
    passages: list[dict[str, Any]] = Field(description="knowledge passages, each tagged with its finding")
    label_text: str
    knowledge_store: bool
