"""The ESI HTTP API and search page (FastAPI).

``create_app(model_dir, store_dir, collection=...)`` builds the app; ``python -m esi serve`` runs it
with uvicorn. Endpoints (all JSON unless an image is asked for; interactive docs at ``/docs``, each JSON
answer's schema a model in :mod:`esi.serve.api.schemas`; the work is done by :class:`esi.serve.api.backend.Backend`):

=======  ==================================  ======================================================
GET      ``/``                               the search page (static HTML + JS)
GET      ``/api/health``                     model, collection and store status
GET      ``/api/labelsets``                  zero-shot label sets
POST     ``/api/classify``                   zero-shot scores for an uploaded ECG
POST     ``/api/retrieve``                   ECG -> nearest texts for an uploaded ECG
POST     ``/api/caption``                    generated caption for an uploaded ECG
POST     ``/api/plot``                       PNG/SVG plot of an uploaded ECG
POST     ``/api/analyze``                    all of it at once for an uploaded ECG: plot, scores, caption,
                                             nearest texts and the most similar indexed ECGs (the page)
GET      ``/api/search``                     text -> ECG search over the indexed collection
GET      ``/api/records/{id}``               an indexed ECG: caption, zero-shot scores, nearest texts
GET      ``/api/records/{id}/plot``          PNG/SVG plot of an indexed ECG
POST     ``/api/explain``                    CQA caption with knowledge passages for given codes
=======  ==================================  ======================================================

An uploaded ECG is multipart ``files`` (``.hea`` + ``.dat``/``.mat``, or one ``.npy`` with a
``sampling_rate`` field, or one ``.json``) or a JSON body ``{"signal": 12 x T, "sampling_rate": Hz}``.

Under load: every endpoint that runs the model or renders a plot (upload parsing included) runs on a
:class:`esi.serve.api.limits.WorkerPool` of ``workers`` threads with at most ``max_queue`` jobs waiting; past
that it answers 503 with ``Retry-After`` at once. ``/api/health`` never waits on that pool or on the model
lock. A JSON body with NaN/Infinity (or a number that overflows to inf) is a 422 naming the field.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from esi.serve.api import schemas
from esi.serve.api.backend import Backend, BackendError
from esi.serve.api.limits import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_UPLOAD_SECONDS,
    DEFAULT_WORKERS,
    BodySizeLimitMiddleware,
    FiniteJSONMiddleware,
    NonFiniteJSONError,
    PoolFull,
    WorkerPool,
    loads_finite,
)
from esi.serve.api.uploads import ParsedECG, UploadError, parse_json_signal, parse_upload
from esi.serve.plotting import MEDIA_TYPES

log = logging.getLogger(__name__)

MAX_FILES = 8
MAX_QUERY_CHARS = 1000
MAX_K = 50
HEALTH_TIMEOUT_S = 1.0
# Documented error answers ({"detail": ...}) of the endpoints that take an ECG or run the model.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.ErrorResponse, "description": why} for code, why in (
        (400, "unreadable request body"), (404, "no such indexed ECG"),
        (409, "the model or collection cannot answer this (no caption decoder, no labelled ECGs)"),
        (413, "request body too large"), (415, "unsupported content type"),
        (422, "invalid input, named in detail"), (503, "busy: retry after Retry-After seconds"))
}

T = TypeVar("T")


class JSONSignal(BaseModel):
    """An ECG sent as JSON: 12 rows of samples in millivolts (standard lead order unless ``leads``)."""

    model_config = ConfigDict(allow_inf_nan=False)

    signal: list[list[float]] = Field(description="12 lists of samples (mV), one per lead")
    sampling_rate: float = Field(description="samples per second (Hz)", examples=[500])
    leads: list[str] | None = Field(None, description="lead names of the rows; default I, II, III, aVR, ...")
    age: float | None = None
    sex: str | None = Field(None, description="male/female")
    name: str | None = Field(None, description="a display name (never used as a path)")


class ExplainRequest(BaseModel):
    """Labels to explain, with optional demographics (as ``python -m cqa explain``)."""

    model_config = ConfigDict(allow_inf_nan=False)  # age=1e999 parses as inf: a 422, not a silent value

    codes: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=50, examples=[["AFIB", "LVH"]],
        description="labels: codes, names or abbreviations, read in `vocabulary`")
    vocabulary: Literal["plain", "scp", "snomed", "mimic_statement", "cpsc2018"] = "plain"
    statements: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        default_factory=list, max_length=50, description="machine-statement / report lines (MIMIC style)")
    age: float | None = Field(None, ge=0, le=130)
    sex: Literal["male", "female"] | None = None


_ECG_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An ECG: multipart files (WFDB .hea+.dat, CinC .hea+.mat, .npy, .json) or a JSON signal.",
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object",
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "sampling_rate": {"type": "number", "description": "Hz; required for .npy"},
                },
                "required": ["files"],
            }},
            "application/json": {"schema": JSONSignal.model_json_schema()},
        },
    }
}


def _static_dir() -> Path:
    return Path(str(resources.files("esi.serve.api") / "static"))


@dataclass
class RawECG:
    """An ECG request body as received, not yet parsed (parsing is CPU work for a worker thread)."""

    json_body: bytes | None = None
    files: dict[str, bytes] | None = None
    sampling_rate: str | None = None


async def read_raw_ecg(request: Request) -> RawECG:
    """Read the ECG in a request body (JSON or multipart) into memory; checks the content type only.

    Starlette spools multipart parts over 1 MiB to anonymous temporary files; no client-supplied name
    is ever used for a file (see :mod:`esi.serve.api.uploads`).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        return RawECG(json_body=await request.body())
    if content_type != "multipart/form-data":
        raise HTTPException(415, f"send the ECG as multipart/form-data files or application/json; "
                                 f"got content type {content_type or 'none'!r}")
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
    except MultiPartException as err:
        raise HTTPException(400, f"malformed multipart body: {err.message}") from None
    try:
        files: dict[str, bytes] = {}
        sampling_rate = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                name = value.filename or key
                if name in files:
                    raise UploadError(f"file {name!r} was uploaded twice")
                files[name] = await value.read()
            elif key == "sampling_rate":
                sampling_rate = value
        return RawECG(files=files, sampling_rate=sampling_rate)
    finally:
        await form.close()


def parse_raw_ecg(raw: RawECG, max_seconds: float) -> ParsedECG:
    """Parse a read body; JSON numbers must be finite (422 naming the field, see ``loads_finite``)."""
    if raw.json_body is None:
        return parse_upload(raw.files or {}, raw.sampling_rate, max_seconds=max_seconds)
    try:
        body = loads_finite(raw.json_body)
    except NonFiniteJSONError as err:
        raise UploadError(str(err)) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UploadError(f"request body is not valid JSON: {err}", status_code=400) from None
    return parse_json_signal(body, max_seconds)


async def read_ecg(request: Request, max_seconds: float) -> ParsedECG:
    """Read and parse the ECG in a request body in one go (parses on the caller's thread)."""
    return parse_raw_ecg(await read_raw_ecg(request), max_seconds)


class HealthProbe:
    """``backend.health()`` on its own thread with a time budget, so health answers fast under any load.

    It never touches the worker pool or the model lock; concurrent health requests share one
    in-flight check (so a slow store cannot pile up threads), and a check that overruns the budget
    answers with the last good result marked ``"stale": true``.
    """

    def __init__(self, backend: Backend, pool: WorkerPool, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
        self.backend = backend
        self.pool = pool
        self.timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="esi-api-health")
        self._pending: Future | None = None
        self._last: dict[str, Any] = backend.health()  # at start-up: a broken store fails create_app

    async def get(self) -> dict[str, Any]:
        if self._pending is None or self._pending.done():
            self._pending = self._executor.submit(self.backend.health)
        try:
            result = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._pending)), self.timeout_s)
        except TimeoutError:
            result = {**self._last, "stale": True}
        else:
            self._last = result
        return {**result, "pool": self.pool.stats()}


def create_app(
    model_dir: str | Path,
    store_dir: str | Path,
    *,
    collection: str = "ecg",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_upload_seconds: float = DEFAULT_MAX_UPLOAD_SECONDS,
    workers: int = DEFAULT_WORKERS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    backend: Backend | None = None,
    **backend_options: Any,
) -> FastAPI:
    """Build the app; the model and the collection are opened now so a bad path fails at start-up.

    ``workers`` threads run the model/plot work with at most ``max_queue`` requests waiting for one;
    more are refused with 503 + ``Retry-After`` rather than left waiting.
    """
    pool = WorkerPool(workers, max_queue)  # before the model: bad pool sizes fail fast
    backend = backend or Backend(model_dir, store_dir, collection=collection, **backend_options)
    health_probe = HealthProbe(backend, pool)
    # FastAPIOffline: FastAPI whose /docs and /redoc load Swagger UI / ReDoc from the package, not a CDN,
    # so the docs work on a machine without internet.
    app = FastAPIOffline(
        title="ESI — ECG Semantic Integrator API",
        version="1.0",
        description=(
            "Zero-shot classification, ECG↔text retrieval, captioning, CQA explanations and plots for "
            "12-lead ECGs. Send an ECG as multipart `files` (WFDB `.hea` + `.dat`, CinC `.hea` + `.mat`, one "
            "`.npy` with a `sampling_rate` field, or one `.json`) or as a JSON body "
            "`{\"signal\": 12 x T (mV), \"sampling_rate\": Hz}`. The search page is at `/`."
        ),
    )
    app.state.backend = backend
    app.state.pool = pool
    # add_middleware puts the last one outermost: the size limit runs first, then the NaN check.
    app.add_middleware(FiniteJSONMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_body_bytes)

    async def run(function: Callable[..., T], *args: Any) -> T:
        """Blocking work on the bounded pool (never on the event loop, never an unbounded wait)."""
        return await pool.run(function, *args)

    async def run_upload(request: Request, work: Callable[[ParsedECG], dict[str, Any]]) -> dict[str, Any]:
        """Read the body here, then parse it and run ``work`` on it in one pool job."""
        raw = await read_raw_ecg(request)

        def job() -> dict[str, Any]:
            ecg = parse_raw_ecg(raw, max_upload_seconds)
            return {"ecg": ecg.describe(), **work(ecg)}

        return await run(job)

    @app.exception_handler(PoolFull)
    async def _pool_full(_: Request, err: PoolFull) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503,
                            headers={"Retry-After": str(err.retry_after_s)})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler, except that a non-finite input echoed back cannot make the 422 a 500.
        return JSONResponse({"detail": _finite_json(jsonable_encoder(err.errors()))}, status_code=422)

    @app.exception_handler(UploadError)
    async def _upload_error(_: Request, err: UploadError) -> JSONResponse:
        return JSONResponse({"detail": err.message}, status_code=err.status_code)

    @app.exception_handler(BackendError)
    async def _backend_error(_: Request, err: BackendError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=err.status_code)

    static = _static_dir()
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(static / "index.html", media_type="text/html")

    @app.get("/api/health", tags=["meta"], summary="Model, collection, knowledge-store and worker-pool status",
             response_model=schemas.HealthResponse, response_model_exclude_unset=True)
    async def health() -> dict[str, Any]:
        return await health_probe.get()

    @app.get("/api/labelsets", tags=["meta"], summary="Zero-shot label sets",
             response_model=schemas.LabelSetsResponse)
    async def labelsets() -> dict[str, Any]:  # static data: no lock, no I/O
        return backend.labelsets()

    # ---- uploaded ECGs ---------------------------------------------------------------------------

    @app.post("/api/classify", tags=["ecg"], summary="Zero-shot classification of an uploaded ECG",
              openapi_extra=_ECG_BODY_DOC, response_model=schemas.ClassifyResponse, responses=ERRORS)
    async def classify(
        request: Request,
        labelset: Annotated[str | None, Query(description="label set name (see /api/labelsets)")] = None,
        top_k: Annotated[int, Query(ge=1, le=200)] = 10,
        method: Annotated[Literal["zeroshot", "prototypes"], Query(
            description="zeroshot: class text; prototypes: few-shot, each class is the mean embedding of the "
                        "indexed ECGs labelled with it")] = "zeroshot",
    ) -> dict[str, Any]:
        return await run_upload(request, lambda ecg: backend.classify(ecg, labelset, top_k, method))

    @app.post("/api/retrieve", tags=["ecg"], summary="ECG -> text retrieval for an uploaded ECG",
              openapi_extra=_ECG_BODY_DOC, response_model=schemas.RetrieveResponse, responses=ERRORS)
    async def retrieve(request: Request, k: Annotated[int, Query(ge=1, le=MAX_K)] = 5) -> dict[str, Any]:
        return await run_upload(request, lambda ecg: backend.nearest_texts(ecg, k))

    @app.post("/api/caption", tags=["ecg"], summary="Generate a caption for an uploaded ECG",
              openapi_extra=_ECG_BODY_DOC, response_model=schemas.CaptionResponse, responses=ERRORS)
    async def caption(
        request: Request,
        method: Annotated[str, Query(pattern="^(greedy|beam)$")] = "greedy",
    ) -> dict[str, Any]:
        return await run_upload(request, lambda ecg: backend.caption(ecg, method))

    @app.post("/api/plot", tags=["ecg"], summary="Plot an uploaded ECG (PNG or SVG)",
              openapi_extra=_ECG_BODY_DOC,
              responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}}, **ERRORS})
    async def plot_upload(
        request: Request,
        format: Annotated[str, Query(pattern="^(png|svg)$")] = "png",
        layout: Annotated[str, Query(pattern="^(3x4|12row)$")] = "3x4",
    ) -> Response:
        raw = await read_raw_ecg(request)

        def job() -> bytes:
            ecg = parse_raw_ecg(raw, max_upload_seconds)
            return backend.plot_signal(ecg.signal, ecg.sampling_rate, ecg.name, layout, format)

        return Response(await run(job), media_type=MEDIA_TYPES[format])

    @app.post("/api/analyze", tags=["ecg"], openapi_extra=_ECG_BODY_DOC,
              summary="Plot, zero-shot scores, caption, nearest texts and similar indexed ECGs for an upload",
              response_model=schemas.AnalyzeResponse, response_model_exclude_unset=True, responses=ERRORS)
    async def analyze(
        request: Request,
        labelset: Annotated[str | None, Query(description="label set name (see /api/labelsets)")] = None,
        top_k: Annotated[int, Query(ge=1, le=200)] = 5,
        k_texts: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
        k_similar: Annotated[int, Query(ge=1, le=MAX_K)] = 4,
        method: Annotated[str, Query(pattern="^(greedy|beam)$")] = "greedy",
        layout: Annotated[str, Query(pattern="^(3x4|12row)$")] = "3x4",
    ) -> dict[str, Any]:
        """One request for the page's "your ECG" panel: the upload is parsed once, embedded once and
        plotted in the same pool job. The plot is a PNG ``data:`` URL (an upload has no id a follow-up
        GET could name); each similar ECG has a ``plot_url`` like ``/api/search`` results. A plot or
        caption that cannot be made leaves ``plot_error`` / ``caption_error`` and the rest answers."""

        def work(ecg: ParsedECG) -> dict[str, Any]:
            result = backend.analyze(ecg, labelset=labelset, top_k=top_k, k_texts=k_texts,
                                     k_similar=k_similar, method=method)
            try:
                image = backend.plot_signal(ecg.signal, ecg.sampling_rate, ecg.name, layout, "png")
            except BackendError as err:
                result["plot_url"], result["plot_error"] = None, str(err)
            else:
                result["plot_url"] = "data:image/png;base64," + base64.b64encode(image).decode("ascii")
            return result

        result = await run_upload(request, work)
        for rank, hit in enumerate(result["similar"], start=1):
            hit["rank"] = rank
            hit["plot_url"] = _plot_url(hit["id"], layout)
        return result

    # ---- the indexed collection ---------------------------------------------------------------------

    @app.get("/api/search", tags=["collection"], summary="Text -> ECG search over the indexed collection",
             response_model=schemas.SearchResponse, responses=ERRORS)
    async def search(
        q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="free-text query")],
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 8,
        layout: Annotated[str, Query(pattern="^(3x4|12row)$")] = "3x4",
    ) -> dict[str, Any]:
        if not q.strip():
            raise HTTPException(422, "query is blank")
        hits = await run(backend.search, q.strip(), k)
        for rank, hit in enumerate(hits, start=1):
            hit["rank"] = rank
            hit["plot_url"] = _plot_url(hit["id"], layout)
        return {"query": q.strip(), "k": k, "results": hits}

    # The plot route comes first: with the :path converter (ids may contain '/') the details route
    # would otherwise also match '.../plot'.
    @app.get("/api/records/{record_id:path}/plot", tags=["collection"], name="record_plot",
             summary="Plot an indexed ECG (PNG or SVG)",
             responses={200: {"content": {"image/png": {}, "image/svg+xml": {}}}, **ERRORS})
    async def record_plot(
        record_id: Annotated[str, PathParam(max_length=200)],
        format: Annotated[str, Query(pattern="^(png|svg)$")] = "png",
        layout: Annotated[str, Query(pattern="^(3x4|12row)$")] = "3x4",
    ) -> Response:
        image = await run(backend.record_plot, record_id, layout, format)
        return Response(image, media_type=MEDIA_TYPES[format], headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/records/{record_id:path}", tags=["collection"],
             summary="An indexed ECG with its caption, zero-shot scores and nearest texts",
             response_model=schemas.RecordDetails, response_model_exclude_unset=True, responses=ERRORS)
    async def record(
        record_id: Annotated[str, PathParam(max_length=200)],
        labelset: str | None = None,
        top_k: Annotated[int, Query(ge=1, le=200)] = 5,
        k_texts: Annotated[int, Query(ge=1, le=MAX_K)] = 5,
    ) -> dict[str, Any]:
        details = await run(lambda: backend.record_details(record_id, labelset=labelset, top_k=top_k,
                                                           k_texts=k_texts))
        details["plot_url"] = _plot_url(record_id, "3x4")
        return details

    # ---- CQA ----------------------------------------------------------------------------------------

    @app.post("/api/explain", tags=["cqa"], summary="CQA: a grounded caption with passages for given codes",
              response_model=schemas.ExplainResponse, responses=ERRORS)
    async def explain(request: ExplainRequest) -> dict[str, Any]:
        return await run(lambda: backend.explain(request.codes, age=request.age, sex=request.sex,
                                                 vocabulary=request.vocabulary, statements=request.statements))

    return app


def _plot_url(record_id: str, layout: str) -> str:
    """The PNG plot URL of an indexed ECG (ids are percent-encoded; '/' and ':' kept for readability)."""
    return f"/api/records/{quote(record_id, safe='/:')}/plot?format=png&layout={layout}"


def _finite_json(value: Any) -> Any:
    """``value`` with non-finite floats as the strings ``NaN``/``Infinity``/``-Infinity`` (JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list | tuple):
        return [_finite_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _finite_json(item) for key, item in value.items()}
    return value


__all__ = ["RawECG", "create_app", "parse_raw_ecg", "read_ecg", "read_raw_ecg"]
