"""ESI inference: load records from disk, fit them to the model's input, embed ECGs and texts, caption.

Input rules (so a user never gets a silently wrong answer):

- signals go through the one signal transform of :mod:`corpora.preprocess`: the model's export
  stage (its ``signal_preprocess``), then the model-input stage (resample with
  ``scipy.signal.resample_poly``, crop/pad, z-score over the record), exactly as its training rows did;
- a record at another sampling rate than the model's is resampled and the returned :class:`PreparedECG` says so in ``notes`` (a :class:`ResampledWarning` is emitted);
- a record longer than the model's window is cropped to its first ``n_samples``, a shorter one is
  zero-padded at the end; both are noted;
- every signal goes through :func:`corpora.base.check_signal` first: flat, near-flat and all-NaN
  leads are zero-filled, NaN runs interpolated, each with a note; no usable lead, or amplitudes no
  ECG reaches (a wrong gain or unit), is an :class:`InputError`;
- a record lacking any of the 12 standard leads in its file is rejected with :class:`InputError` naming them;
- a record path may be a WFDB record (``PATH`` without extension, ``PATH.hea``, ``PATH.dat``), a
  PhysioNet/CinC record (``PATH.hea`` + ``PATH.mat``, also ``PATH.mat``), an EDF/BDF, DICOM
  12-lead waveform, HL7 aECG or GE MUSE XML, or CSV file (:mod:`corpora.formats`; a CSV needs
  ``sampling_rate``), a ``.npy`` (12, T) millivolt array (needs ``sampling_rate``) or a ``.json``
  ``{"signal", "sampling_rate"}`` document (as the HTTP API takes them).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from corpora.base import STANDARD_LEADS, ECGRecord, RecordError, Skip, check_signal
from corpora.formats import FILE_SUFFIXES, read_ecg_file
from corpora.preprocess import Preprocess, model_input
from esi.model.embed import embed_texts, to_numpy
from esi.zeroshot.classifier import DEFAULT_QUERY_TEXT, QUERY_TEXTS


class InputError(ValueError):
    """A record cannot be used as model input; the message names the record and the reason."""


class ResampledWarning(UserWarning):
    """A record was resampled to the model's sampling rate."""


@dataclass
class PreparedECG:
    """A record fitted to the model input: ``signal`` is float32 (12, n_samples), z-scored like training."""

    record_id: str
    signal: np.ndarray
    notes: list[str] = field(default_factory=list)
    record: ECGRecord | None = None


# ---- reading one record from a path ------------------------------------------------------------

def _record_base(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() in (".hea", ".dat", ".mat"):
        path = path.with_suffix("")
    if not path.with_suffix(".hea").is_file():
        raise InputError(f"{path}: no WFDB header {path.with_suffix('.hea').name} (give PATH, PATH.hea or PATH.mat)")
    return path


def _signal_files(header: Path) -> list[str]:
    names = []
    for line in header.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
        if line.strip() and not line.startswith("#"):
            names.append(line.split()[0])
    return names


def load_record(path: str | Path, *, sampling_rate: float | None = None) -> ECGRecord:
    """Read one ECG from disk with its labels and demographics; the format follows the extension.

    ``sampling_rate`` (Hz) is needed for files that do not carry one (CSV, ``.npy``); for the
    others it must agree with the file's own rate, so a wrong assumption is an error, not a resample.
    Notes on what reading changed (derived or zero-filled leads) are in ``record.notes``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if sampling_rate is not None and not (math.isfinite(sampling_rate) and sampling_rate > 0):
        raise InputError(f"{path.name}: sampling rate must be a positive number of Hz, got {sampling_rate!r}")
    if suffix in FILE_SUFFIXES or suffix in (".npy", ".json"):
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        record = _read_single_file(path, suffix, sampling_rate)
    else:
        record = _read_wfdb_or_cinc(path)
    rate = record.sampling_rate
    if sampling_rate is not None and rate is not None and abs(rate - sampling_rate) > 1e-6:
        raise InputError(f"{record.record_id}: the file gives its sampling rate as {rate:g} Hz; "
                         f"the sampling rate given, {sampling_rate:g} Hz, contradicts it")
    return record


def _read_single_file(path: Path, suffix: str, sampling_rate: float | None) -> ECGRecord:
    """One-file formats: :mod:`corpora.formats` readers, and .npy/.json through the API's own parsers."""
    if suffix in FILE_SUFFIXES:
        try:
            return read_ecg_file(path, sampling_rate=sampling_rate)
        except RecordError as err:
            raise InputError(str(err)) from err
    from esi.serve.api.uploads import UploadError, parse_json_signal, parse_npy

    if suffix == ".npy" and sampling_rate is None:
        raise InputError(f"{path.stem}: {path.name} is a bare array with no sampling rate; give one "
                         "(--sampling-rate HZ)")
    try:
        data = path.read_bytes()
        parsed = (parse_npy(path.name, data, sampling_rate, math.inf) if suffix == ".npy"
                  else parse_json_signal(data, math.inf))
    except OSError as err:
        raise InputError(f"{path.stem}: cannot read {path.name}: {err}") from err
    except UploadError as err:
        message = err.message if err.message.startswith(path.name) else f"{path.name}: {err.message}"
        raise InputError(f"{path.stem}: {message}") from err
    return ECGRecord(record_id=path.stem, dataset="file", signal=parsed.signal, sampling_rate=parsed.sampling_rate,
                     age=parsed.age, sex=parsed.sex, extra={"path": str(path), "format": parsed.source_format,
                                                            "notes": list(parsed.notes)})


def _read_wfdb_or_cinc(path: Path) -> ECGRecord:
    base = _record_base(path)
    record_id = base.name
    try:
        files = _signal_files(base.with_suffix(".hea"))
    except OSError as err:
        raise InputError(f"{record_id}: cannot read header: {err}") from err
    try:
        if files and all(name.lower().endswith(".mat") for name in files):
            from corpora.base import parse_wfdb_header
            from corpora.cinc import CincReader

            # The tolerant parser first: it refuses a zero/missing gain that wfdb.rdheader silently reads as 200.
            header = parse_wfdb_header(base.with_suffix(".hea").read_text(encoding="utf-8", errors="replace"),
                                       record_id)
            _require_all_leads(record_id, header.lead_names)
            reader = CincReader.for_record(base.with_suffix(".hea"))
            reader.allow_missing_leads = True  # flat/all-NaN leads: zero-filled with a note, as for WFDB
            record = reader.read(record_id)
            record.missing_leads = []  # none absent (checked above); the zero-filled ones are in the notes
            return record
        return _read_plain_wfdb(record_id, base)
    except RecordError as err:
        raise InputError(str(err)) from err


def _require_all_leads(record_id: str, lead_names: Sequence[str]) -> None:
    """A header lacking one of the 12 standard leads is refused (ESI reads all 12) before any data is read."""
    from corpora.base import canonical_lead_name

    present = {canonical_lead_name(name) for name in lead_names}
    absent = [lead for lead in STANDARD_LEADS if lead not in present]
    if absent:
        raise RecordError(record_id, "missing or empty leads: " + ", ".join(f"{lead} absent" for lead in absent))


def _read_plain_wfdb(record_id: str, base: Path) -> ECGRecord:
    """A WFDB record: leads absent from the header are an error; flat or all-NaN ones are zero-filled
    with a note (the same rule as uploads and :func:`fit_to_model`)."""
    from corpora.base import comment_fields, parse_age, parse_sex, read_wfdb, standardise_leads

    wave = read_wfdb(record_id, base)
    check = standardise_leads(record_id, wave.signal, wave.lead_names)
    if check.absent:
        raise RecordError(record_id, "missing or empty leads: " + ", ".join(check.reasons()))
    fields = comment_fields(wave.comments)
    labels = {c.strip(): 100.0 for c in fields.get("dx", "").split(",") if c.strip()}
    extra: dict[str, Any] = {"path": str(base)}
    if check.zero_filled:
        extra["zero_filled_leads"] = check.zero_filled
    if check.notes:
        extra["notes"] = check.notes
    return ECGRecord(
        record_id=record_id, dataset="file", signal=check.signal, sampling_rate=wave.sampling_rate,
        age=parse_age(fields.get("age")), sex=parse_sex(fields.get("sex")), labels=labels,
        label_vocabulary="snomed" if labels else "", extra=extra,
    )


# ---- fitting a record to the model input ---------------------------------------------------------

def fit_to_model(record: ECGRecord, sampling_rate: float, n_samples: int, *, warn: bool = True,
                 preprocess: Mapping[str, Any] | None = None) -> PreparedECG:
    """Check, resample, crop or pad one record to ``(12, n_samples)`` at ``sampling_rate``; notes say what changed.

    :func:`corpora.base.check_signal` runs first (the one check shared by the readers, the API and the
    CLI): flat/all-NaN leads zero-filled and NaN runs interpolated, each noted; no usable lead or an
    absurd amplitude is an :class:`InputError`. The notes start with the reader's (``record.notes``).
    ``preprocess`` (the model's ``signal_preprocess``) is the ``corpora`` transform its training signals
    were exported with; it is applied next, so a raw record reaches the model as training data did.
    """
    rid = record.record_id
    if record.signal is None:
        raise InputError(f"{rid}: record has no signal (metadata-only row)")
    signal = np.asarray(record.signal, dtype=np.float32)
    if signal.ndim != 2 or signal.shape[0] != len(STANDARD_LEADS):
        raise InputError(f"{rid}: signal must be (12, T) in the standard lead order, got shape {signal.shape}")
    if record.missing_leads:
        raise InputError(f"{rid}: missing leads {', '.join(record.missing_leads)}; ESI needs all 12 leads")
    try:
        check = check_signal(signal, rid, zero_filled=record.extra.get("zero_filled_leads", ()))
    except RecordError as err:
        raise InputError(str(err)) from err
    notes: list[str] = [*record.notes, *check.notes]
    signal = check.signal
    if preprocess is not None:
        from dataclasses import replace

        try:
            record = Preprocess(**preprocess)(replace(record, signal=signal))
        except RecordError as err:
            raise InputError(str(err)) from err
        signal = np.asarray(record.signal, dtype=np.float32)
    if not np.isfinite(signal).all():
        raise InputError(f"{rid}: signal contains NaN or infinite samples after preprocessing")
    rate = record.sampling_rate
    if rate is None or not math.isfinite(rate) or rate <= 0:
        raise InputError(f"{rid}: unknown sampling rate")
    if abs(rate - sampling_rate) > 1e-6:
        note = f"resampled from {rate:g} Hz to {sampling_rate:g} Hz"
        notes.append(note)
        if warn:
            warnings.warn(f"{rid}: {note}", ResampledWarning, stacklevel=2)
    length = signal.shape[1] * sampling_rate / rate
    if length > n_samples + 0.5:
        notes.append(f"cropped to the first {n_samples / sampling_rate:g} s of {length / sampling_rate:g} s")
    elif length < n_samples - 0.5:
        notes.append(f"zero-padded from {length / sampling_rate:g} s to {n_samples / sampling_rate:g} s")
    # The model-input stage its training rows went through (resample, crop/pad, z-score over the record).
    try:
        signal = model_input(sampling_rate, n_samples)(signal, float(rate), rid)
    except RecordError as err:
        raise InputError(str(err)) from err
    return PreparedECG(rid, np.ascontiguousarray(signal, dtype=np.float32), list(dict.fromkeys(notes)), record)


@dataclass(frozen=True)
class ModelInput:
    """What a model takes: input rate and length, and its training export's preprocessing."""

    sampling_rate: float
    n_samples: int
    preprocess: Mapping[str, Any] | None = None

    def fit(self, record: ECGRecord, *, warn: bool = True) -> PreparedECG:
        return fit_to_model(record, self.sampling_rate, self.n_samples, warn=warn, preprocess=self.preprocess)

    @property
    def key(self) -> tuple[float, int, str]:
        """Hashable: models with equal keys see identical inputs (so loaded records can be shared)."""
        return self.sampling_rate, self.n_samples, json.dumps(self.preprocess, sort_keys=True)


# ---- the model wrapper -----------------------------------------------------------------------------

def load_model(model_dir: str | Path, device: str = "cpu"):
    """An :class:`esi.model.ESIModel` from a saved directory, in eval mode."""
    from esi.model.model import ESIModel

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not an ESI model directory (no config.json)")
    model = ESIModel.from_pretrained(model_dir, map_location=device)
    return model.to(device).eval()




class ESIInference:
    """Batched, gradient-free use of a trained ESI model."""

    def __init__(self, model: Any, *, device: str = "cpu", batch_size: int = 256):
        self.model_dir = Path(model) if isinstance(model, str | Path) else None
        self.model = load_model(model, device) if isinstance(model, str | Path) else model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        config = self.model.config
        self.input = ModelInput(float(config.sampling_rate), int(config.n_samples), config.signal_preprocess)
        self.embed_dim = int(config.embed_dim)

    @property
    def sampling_rate(self) -> float:
        return self.input.sampling_rate

    @property
    def label_prior(self) -> dict[str, float]:
        """Training-fold label counts saved with the model (``label_prior.json``); empty when absent."""
        return {str(k): float(v) for k, v in self.label_prior_document.get("labels", {}).items()}

    @cached_property
    def label_prior_document(self) -> dict[str, Any]:
        """The whole ``label_prior.json`` (counts and each code's hierarchy names); {} when absent."""
        path = self.model_dir / "label_prior.json" if self.model_dir else None
        if path is None or not path.is_file():
            return {}
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            valid = all(isinstance(v, int | float) for v in document["labels"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise InputError(f"{path}: unreadable label prior ({err})") from err
        if not valid:
            raise InputError(f"{path}: label counts must be numbers")
        return document

    def query_embedding(self, query: str, query_text: str = DEFAULT_QUERY_TEXT) -> np.ndarray:
        """(D,) unit embedding of a text query: as typed (``raw``) or expanded into the texts the model
        was trained on (``views``, :func:`esi.train.views.expand_query`)."""
        from esi.train.views import expand_query
        from retrieval.store import QueryError, validate_query

        if query_text not in QUERY_TEXTS:
            raise InputError(f"query text must be one of {', '.join(QUERY_TEXTS)}, got {query_text!r}")
        try:  # the knowledge store's rules: the text tower is English MiniLM too, so the same queries fail
            query = validate_query(query)
        except QueryError as error:
            raise InputError(f"text query: {error}") from error
        texts, weights = ([query], [1.0]) if query_text == "raw" else expand_query(query, self.label_prior_document)
        vectors = self.embed_texts(texts)
        mean = (vectors * np.asarray(weights, dtype=np.float32)[:, None]).sum(axis=0)
        return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)

    @property
    def n_samples(self) -> int:
        return self.input.n_samples

    # inputs
    def prepare(self, record: ECGRecord, *, warn: bool = True) -> PreparedECG:
        return self.input.fit(record, warn=warn)

    def prepare_path(self, path: str | Path, *, sampling_rate: float | None = None) -> PreparedECG:
        return self.prepare(load_record(path, sampling_rate=sampling_rate))

    # embeddings
    @torch.inference_mode()
    def embed_signals(self, signals: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised ECG embeddings (N, D) for signals already fitted to the model input."""
        array = np.asarray(signals, dtype=np.float32)
        if array.ndim != 3 or array.shape[1] != len(STANDARD_LEADS):
            raise InputError(f"signals must be (N, 12, T), got shape {array.shape}")
        if len(array) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        out = []
        for start in range(0, len(array), self.batch_size):
            batch = torch.from_numpy(array[start:start + self.batch_size]).to(self.device)
            out.append(to_numpy(self.model.encode_ecg(batch)))
        return np.concatenate(out)

    def embed_records(
        self, records: Iterable[ECGRecord], *, skipped: list[Skip] | None = None, progress: bool = False,
        total: int | None = None,
    ) -> tuple[np.ndarray, list[PreparedECG]]:
        """Embed records in batches; unusable ones go to ``skipped`` (or raise when it is None)."""
        kept: list[PreparedECG] = []
        chunks: list[np.ndarray] = []
        pending: list[PreparedECG] = []

        def flush() -> None:
            if pending:
                chunks.append(self.embed_signals(np.stack([p.signal for p in pending])))
                kept.extend(pending)
                pending.clear()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResampledWarning)  # batch mode: the notes carry it
            for record in tqdm(records, total=total, disable=not progress, desc="embedding ECGs", unit="ecg"):
                try:
                    prepared = self.prepare(record, warn=False)
                except InputError as err:
                    if skipped is None:
                        raise
                    skipped.append(Skip(record.record_id, str(err)))
                    continue
                prepared.record = _without_signal(record)
                pending.append(prepared)
                if len(pending) >= self.batch_size:
                    flush()
            flush()
        embeddings = np.concatenate(chunks) if chunks else np.zeros((0, self.embed_dim), dtype=np.float32)
        return embeddings, kept

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return embed_texts(self.model, list(texts), batch_size=self.batch_size)

    # captions
    def caption(self, signals: np.ndarray, *, method: str = "greedy", num_beams: int = 3,
                max_len: int | None = None) -> list[str]:
        """Draft captions for fitted signals (N, 12, T) with greedy or beam decoding."""
        array = np.asarray(signals, dtype=np.float32)
        if array.ndim == 2:
            array = array[None]
        out: list[str] = []
        for start in range(0, len(array), self.batch_size):
            batch = torch.from_numpy(array[start:start + self.batch_size]).to(self.device)
            out.extend(self.model.generate_caption(batch, max_len=max_len, method=method, num_beams=num_beams))
        return out


def _without_signal(record: ECGRecord) -> ECGRecord:
    """A shallow copy without the signal, so batch results do not keep every waveform in memory."""
    from dataclasses import replace

    return replace(record, signal=None)
