"""Turn an uploaded ECG into a ``(12, T)`` float32 millivolt signal in the standard lead order.

Accepted inputs:

* a WFDB record: ``.hea`` + the ``.dat`` file(s) its signal lines name;
* a PhysioNet/CinC 2020 record: ``.hea`` + MATLAB v4 ``.mat`` (``val`` array of ADC units);
* JSON ``{"signal": [[...] x 12], "sampling_rate": Hz, "leads": [...]?, "age"?, "sex"?, "name"?}``;
* a ``.npy`` array of shape ``(12, T)`` in millivolts (with a separate ``sampling_rate``);
* one file users export (:mod:`corpora.formats`): EDF/BDF, DICOM ECG waveform, HL7 aECG or GE MUSE
  XML, or CSV (a header row of lead names; a ``sampling_rate`` field unless it has a time column).

Every signal passes :func:`corpora.base.check_signal` here (amplitudes no ECG reaches, i.e. a wrong gain
or unit, are a 422), and again in :func:`esi.serve.inference.fit_to_model`, which zero-fills flat leads,
repairs NaN runs and refuses a signal with no usable lead, saying so in the response's ``notes``.
What parsing itself changed (derived limb leads, channels left out) is in ``ecg.notes``.

Units (WFDB/CinC headers) and age/sex follow the readers' rules (:func:`corpora.base.mv_factors`,
:func:`corpora.base.parse_age`, :func:`corpora.base.parse_sex`), so an upload and the same file read by
``load_record`` agree.

Security: nothing a client sends is ever used as a filesystem path. Uploaded bytes stay in
memory; only the WFDB ``.dat`` reader needs files, and it gets a private
:class:`tempfile.TemporaryDirectory` in which the header is *rewritten* to fixed names
(``record.hea``, ``signal0.dat``, ...). A header that names ``../../etc/passwd`` therefore only
ever resolves to one of the uploaded files, or is rejected.
"""

from __future__ import annotations

import io
import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from corpora.base import (
    STANDARD_LEADS,
    RecordError,
    WfdbHeader,
    canonical_lead_name,
    check_signal,
    comment_fields,
    mv_factors,
    parse_age,
    parse_sex,
    parse_wfdb_header,
)
from corpora.formats import FILE_SUFFIXES, NEEDS_SAMPLING_RATE, read_ecg_file

MIN_SAMPLING_RATE = 50.0
MAX_SAMPLING_RATE = 10_000.0
MIN_SECONDS = 1.0
MAX_HEADER_BYTES = 64 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_DATA_SUFFIXES = (".dat", ".mat")


class UploadError(ValueError):
    """Malformed ECG input; ``status_code`` is 400 (unreadable request) or 422 (invalid content)."""

    def __init__(self, message: str, status_code: int = 422):
        super().__init__(message)
        self.message = message
        self.status_code = status_code


@dataclass
class ParsedECG:
    """An uploaded ECG, standardised; ``name`` is sanitised and for display only."""

    name: str
    signal: np.ndarray  # (12, T) float32 mV, STANDARD_LEADS order
    sampling_rate: float
    source_format: str  # "wfdb" | "cinc-mat" | "json" | "npy" | "edf" | "dicom" | "hl7-aecg" | "ge-muse" | "csv"
    age: float | None = None
    sex: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.signal.shape[1] / self.sampling_rate

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": self.source_format,
            "sampling_rate": self.sampling_rate,
            "n_samples": int(self.signal.shape[1]),
            "duration_s": round(self.duration_s, 3),
            "leads": list(STANDARD_LEADS),
            "age": self.age,
            "sex": self.sex,
            "notes": list(self.notes),
        }


def sanitize_name(name: str | None, default: str = "upload", max_length: int = 64) -> str:
    """A display-safe base name: last path component only, ``[A-Za-z0-9._-]``, no leading dot."""
    if not name:
        return default
    base = PureWindowsPath(PurePosixPath(str(name)).name).name  # strips both / and \ components
    base = _SAFE_NAME.sub("_", base).lstrip(".")[:max_length]
    return base or default


# --------------------------------------------------------------------------------------------
# validation shared by every input format


def _check_sampling_rate(value: Any, source: str) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise UploadError(f"{source}: sampling_rate must be a number; got {value!r}") from None
    if not math.isfinite(rate) or not MIN_SAMPLING_RATE <= rate <= MAX_SAMPLING_RATE:
        raise UploadError(
            f"{source}: sampling_rate {value!r} is outside {MIN_SAMPLING_RATE:g}-{MAX_SAMPLING_RATE:g} Hz"
        )
    return rate


def _finish(
    name: str, signal: np.ndarray, lead_names: list[str] | None, sampling_rate: float,
    source_format: str, max_seconds: float, age: Any = None, sex: Any = None, notes: list[str] | None = None,
) -> ParsedECG:
    """Reorder to the standard leads and check shape, length and values.

    NaN samples and flat leads are kept as sent: :func:`esi.serve.inference.fit_to_model` repairs or
    zero-fills them with notes in the response (or refuses a signal with no usable lead); infinite
    samples count as NaN. Amplitudes no ECG reaches are refused here (422), as a wrong gain or unit.
    """
    if signal.ndim != 2:
        raise UploadError(f"{name}: signal must be 2-D (12 leads x T samples); got shape {signal.shape}")
    n_leads, n_samples = signal.shape
    if n_leads != len(STANDARD_LEADS):
        hint = " (it looks transposed: send 12 rows of samples)" if n_samples == len(STANDARD_LEADS) else ""
        raise UploadError(f"{name}: expected 12 leads, got {n_leads}{hint}")
    if lead_names is not None:
        canonical = [canonical_lead_name(lead) for lead in lead_names]
        unknown = [raw for raw, lead in zip(lead_names, canonical) if lead is None]
        if unknown:
            raise UploadError(f"{name}: unknown lead name(s) {unknown}; expected {list(STANDARD_LEADS)}")
        if sorted(canonical) != sorted(STANDARD_LEADS):
            duplicated = sorted({lead for lead in canonical if canonical.count(lead) > 1})
            raise UploadError(f"{name}: leads must be the 12 standard leads once each; duplicated {duplicated}")
        signal = signal[[canonical.index(lead) for lead in STANDARD_LEADS]]
    seconds = n_samples / sampling_rate
    if seconds < MIN_SECONDS:
        raise UploadError(f"{name}: {n_samples} samples at {sampling_rate:g} Hz is {seconds:.2f} s; need >= {MIN_SECONDS:g} s")
    if seconds > max_seconds:
        raise UploadError(f"{name}: record is {seconds:.1f} s long; the limit is {max_seconds:g} s")
    signal = np.asarray(signal, dtype=np.float32)
    signal = np.where(np.isinf(signal), np.float32(np.nan), signal)
    try:
        check_signal(signal, name, repair_nan=False, require_usable=False)
    except RecordError as err:
        raise UploadError(f"{name}: {err.reason}") from None
    return ParsedECG(
        name=name, signal=np.ascontiguousarray(signal), sampling_rate=sampling_rate,
        source_format=source_format, age=parse_age(age), sex=parse_sex(sex), notes=list(notes or []),
    )


# --------------------------------------------------------------------------------------------
# JSON and .npy


def parse_json_signal(body: bytes | dict[str, Any], max_seconds: float) -> ParsedECG:
    """``{"signal": 12 x T, "sampling_rate": Hz, ...}`` (signal in millivolts)."""
    if isinstance(body, bytes | bytearray):
        try:
            body = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UploadError(f"request body is not valid JSON: {err}", status_code=400) from None
    if not isinstance(body, dict):
        raise UploadError("JSON body must be an object with 'signal' and 'sampling_rate'")
    name = sanitize_name(body.get("name") if isinstance(body.get("name"), str) else None, "json-signal")
    if "signal" not in body:
        raise UploadError(f"{name}: JSON body has no 'signal' (12 lists of samples in mV)")
    if "sampling_rate" not in body:
        raise UploadError(f"{name}: JSON body has no 'sampling_rate' (Hz)")
    rate = _check_sampling_rate(body["sampling_rate"], name)
    raw = body["signal"]
    if not isinstance(raw, list) or not raw or not all(isinstance(row, list) for row in raw):
        raise UploadError(f"{name}: 'signal' must be a list of 12 lists of numbers")
    lengths = {len(row) for row in raw}
    if len(lengths) != 1:
        raise UploadError(f"{name}: signal rows have different lengths {sorted(lengths)}")
    try:
        signal = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError):
        raise UploadError(f"{name}: 'signal' must contain only numbers") from None
    leads = body.get("leads")
    if leads is not None and (not isinstance(leads, list) or not all(isinstance(x, str) for x in leads)):
        raise UploadError(f"{name}: 'leads' must be a list of lead names")
    if leads is not None and len(leads) != signal.shape[0]:
        raise UploadError(f"{name}: {len(leads)} lead names for {signal.shape[0]} signal rows")
    return _finish(name, signal, leads, rate, "json", max_seconds, body.get("age"), body.get("sex"))


def parse_npy(name: str, data: bytes, sampling_rate: Any, max_seconds: float) -> ParsedECG:
    """A ``(12, T)`` millivolt array saved with ``numpy.save`` (pickles refused)."""
    if sampling_rate is None:
        raise UploadError(f"{name}: a .npy upload needs a 'sampling_rate' form field (Hz)")
    rate = _check_sampling_rate(sampling_rate, name)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UploadError(f"{name}: not a readable .npy array ({err})") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise UploadError(f"{name}: .npy must hold a numeric array; got dtype {getattr(array, 'dtype', None)}")
    return _finish(name, array.astype(np.float32), None, rate, "npy", max_seconds)


def parse_ecg_file(name: str, data: bytes, sampling_rate: Any, max_seconds: float) -> ParsedECG:
    """One exported file (EDF, DICOM, aECG/MUSE XML, CSV) read by :func:`corpora.formats.read_ecg_file`.

    ``sampling_rate`` is required for a CSV without a time column and, for the formats that carry
    their own rate, must agree with it. A lead the file lacks (and that cannot be derived from I and
    II) is refused, as for WFDB uploads: the model reads all 12.
    """
    rate = None if sampling_rate in (None, "") else _check_sampling_rate(sampling_rate, name)
    try:
        record = read_ecg_file(data, name=name, sampling_rate=rate)
    except RecordError as err:
        reason = err.reason  # the formats' reasons name the file already
        raise UploadError(reason if reason.startswith(name) else f"{name}: {reason}") from None
    if record.missing_leads:
        raise UploadError(f"{name}: missing leads {', '.join(record.missing_leads)}; ESI needs all 12 leads")
    file_rate = _check_sampling_rate(record.sampling_rate, name)
    if rate is not None and abs(file_rate - rate) > 1e-6 and Path(name).suffix.lower() not in NEEDS_SAMPLING_RATE:
        raise UploadError(f"{name}: the file gives its sampling rate as {file_rate:g} Hz; "
                          f"sampling_rate {rate:g} contradicts it")
    return _finish(name, record.signal, None, file_rate, str(record.extra.get("format", "file")), max_seconds,
                   record.age, record.sex, notes=record.notes)


# --------------------------------------------------------------------------------------------
# WFDB headers (tolerant: CinC/Georgia headers that wfdb.rdheader rejects are accepted)


def _parse_header(name: str, data: bytes) -> WfdbHeader:
    """The shared tolerant parser (``corpora.base.parse_wfdb_header``) behind upload-size checks."""
    if len(data) > MAX_HEADER_BYTES:
        raise UploadError(f"{name}: header is {len(data)} bytes; a .hea file is at most {MAX_HEADER_BYTES}")
    if b"\x00" in data:
        raise UploadError(f"{name}: not a WFDB header (binary content)")
    try:
        header = parse_wfdb_header(data.decode("utf-8", errors="replace"), name)
    except RecordError as err:
        raise UploadError(f"{name}: {err.reason}") from None
    if header.n_sig != len(STANDARD_LEADS):
        raise UploadError(f"{name}: expected 12 leads, the header declares {header.n_sig}")
    return header


def _mv_factors(name: str, units: list[str]) -> np.ndarray:
    """Per-lead factors to millivolts from the header's units (:func:`corpora.base.mv_factors`, as the
    readers use), as a column; a unit that is not a voltage is a 422."""
    try:
        return mv_factors(name, units)[:, None]
    except RecordError as err:
        raise UploadError(f"{name}: {err.reason} (expected mV, uV or V)") from None


def _match_data_files(name: str, header: WfdbHeader, data_files: dict[str, bytes]) -> dict[str, str]:
    """Map each file name in the header to an uploaded data file (by sanitised base name)."""
    referenced = list(dict.fromkeys(header.file_names))
    mapping: dict[str, str] = {}
    for ref in referenced:
        safe = sanitize_name(ref)
        if safe in data_files:
            mapping[ref] = safe
    missing = [ref for ref in referenced if ref not in mapping]
    if missing and len(referenced) == 1 and len(data_files) == 1:
        mapping[referenced[0]] = next(iter(data_files))  # one record, renamed on the client
        missing = []
    if missing:
        shown = [sanitize_name(ref) for ref in missing]
        raise UploadError(
            f"{name}: the header references data file(s) {shown} that were not uploaded"
            f" (uploaded: {sorted(data_files) or 'none'})"
        )
    return mapping


def _read_mat(name: str, header: WfdbHeader, files: dict[str, bytes], mapping: dict[str, str]) -> np.ndarray:
    from scipy.io import loadmat

    if len(mapping) != 1:
        raise UploadError(f"{name}: a CinC .mat record must keep all signals in one .mat file")
    mat_name = next(iter(mapping.values()))
    try:
        content = loadmat(io.BytesIO(files[mat_name]))
    except (ValueError, TypeError, OSError, NotImplementedError) as err:
        raise UploadError(f"{mat_name}: not a readable MATLAB .mat file ({err})") from None
    arrays = {k: v for k, v in content.items() if not k.startswith("__") and isinstance(v, np.ndarray)}
    values = arrays.get("val", next(iter(arrays.values()), None) if len(arrays) == 1 else None)
    if values is None or values.ndim != 2:
        raise UploadError(f"{mat_name}: expected a 2-D 'val' array (leads x samples); found {sorted(arrays)}")
    if values.shape[0] != header.n_sig and values.shape[1] == header.n_sig:
        values = values.T
    if values.shape[0] != header.n_sig:
        raise UploadError(f"{mat_name}: array has shape {values.shape}; the header declares {header.n_sig} leads")
    gains = np.array(header.gains, dtype=np.float64)[:, None]
    baselines = np.array(header.baselines, dtype=np.float64)[:, None]
    factors = _mv_factors(name, header.units)
    return ((values.astype(np.float64) - baselines) / gains * factors).astype(np.float32)


_BYTES_PER_SAMPLE = {"8": 1.0, "16": 2.0, "61": 2.0, "24": 3.0, "32": 4.0, "80": 1.0, "160": 2.0, "212": 1.5,
                     "310": 4 / 3, "311": 4 / 3}


def _check_dat_sizes(name: str, header: WfdbHeader, files: dict[str, bytes], mapping: dict[str, str]) -> None:
    """Name a truncated .dat clearly instead of letting wfdb fail with a reshape error."""
    if not header.sig_len:
        return
    for ref, uploaded in mapping.items():
        fmts = [fmt for file_name, fmt in zip(header.file_names, header.fmts, strict=True) if file_name == ref]
        per_sample = [_BYTES_PER_SAMPLE.get(fmt.split("+")[0].split("x")[0].split(":")[0]) for fmt in fmts]
        if any(b is None for b in per_sample):
            continue  # an exotic format: let wfdb decide
        expected = int(math.ceil(header.sig_len * sum(per_sample)))
        if len(files[uploaded]) < expected:
            raise UploadError(
                f"{name}: {uploaded} has {len(files[uploaded])} bytes but the header's {header.sig_len} samples"
                f" x {len(fmts)} signals need {expected} (truncated or wrong file?)"
            )


def _read_dat(name: str, header: WfdbHeader, files: dict[str, bytes], mapping: dict[str, str]) -> np.ndarray:
    """Read with wfdb from a private temp dir holding a rewritten header and fixed file names."""
    import wfdb

    _check_dat_sizes(name, header, files, mapping)
    fixed = {ref: f"signal{i}.dat" for i, ref in enumerate(mapping)}
    record_line = ["record", *header.record_tokens[1:]]
    signal_lines = [" ".join([fixed[tokens[0]], *tokens[1:]]) for tokens in header.signal_tokens]
    with tempfile.TemporaryDirectory(prefix="esi-upload-") as tmp:
        directory = Path(tmp)
        (directory / "record.hea").write_text("\n".join([" ".join(record_line), *signal_lines]) + "\n")
        for ref, fixed_name in fixed.items():
            (directory / fixed_name).write_bytes(files[mapping[ref]])
        try:
            record = wfdb.rdrecord(str(directory / "record"), physical=True)
        except (ValueError, IndexError, KeyError, OSError, TypeError) as err:
            raise UploadError(f"{name}: WFDB could not read the record ({type(err).__name__}: {err})") from None
    if record.p_signal is None:
        raise UploadError(f"{name}: WFDB record has no signal")
    factors = _mv_factors(name, list(record.units or ["mV"] * record.p_signal.shape[1]))
    return (record.p_signal.T * factors).astype(np.float32)


def parse_record_files(files: dict[str, bytes], max_seconds: float) -> ParsedECG:
    """A WFDB (.hea + .dat) or CinC (.hea + .mat) record from uploaded files keyed by client name."""
    safe_files: dict[str, bytes] = {}
    for client_name, data in files.items():
        safe = sanitize_name(client_name)
        if safe in safe_files:
            raise UploadError(f"two uploaded files are both named {safe!r}")
        safe_files[safe] = data
    headers = [n for n in safe_files if n.lower().endswith(".hea")]
    if len(headers) != 1:
        raise UploadError(
            f"a WFDB/CinC upload needs exactly one .hea file; got {len(headers)} among {sorted(safe_files)}"
        )
    header_name = headers[0]
    header = _parse_header(header_name, safe_files[header_name])
    name = sanitize_name(header.record_tokens[0].removesuffix(".mat"), default=header_name.removesuffix(".hea"))
    data_files = {n: d for n, d in safe_files.items() if n.lower().endswith(_DATA_SUFFIXES)}
    if not data_files:
        raise UploadError(f"{header_name}: no .dat or .mat signal file was uploaded with the header")
    mapping = _match_data_files(header_name, header, data_files)
    is_mat = all(target.lower().endswith(".mat") for target in mapping.values())
    if is_mat:
        signal = _read_mat(header_name, header, safe_files, mapping)
    elif any(target.lower().endswith(".mat") for target in mapping.values()):
        raise UploadError(f"{header_name}: mixing .mat and .dat signal files is not supported")
    else:
        signal = _read_dat(header_name, header, safe_files, mapping)
    if 0 < header.sig_len < signal.shape[1]:
        signal = signal[:, : header.sig_len]
    rate = _check_sampling_rate(header.fs, header_name)
    fields = comment_fields(header.comments)
    return _finish(
        name, signal, header.lead_names, rate, "cinc-mat" if is_mat else "wfdb", max_seconds,
        fields.get("age"), fields.get("sex"),
    )


_SINGLE_SUFFIXES = (".npy", ".json", *FILE_SUFFIXES)


def parse_upload(
    files: dict[str, bytes], sampling_rate: Any = None, *, max_seconds: float = 120.0
) -> ParsedECG:
    """Dispatch uploaded files by extension: one ``.npy`` / ``.json`` / exported file (EDF, DICOM,
    XML, CSV), or a WFDB/CinC record."""
    if not files:
        raise UploadError("no file was uploaded (send a .hea + .dat/.mat pair, a .npy or a .json)")
    lowered = {sanitize_name(n).lower(): n for n in files}
    singles = [n for n in lowered if n.endswith(_SINGLE_SUFFIXES)]
    if singles:
        if len(files) != 1:
            raise UploadError(f"upload a single {', '.join(_SINGLE_SUFFIXES)} file on its own; got {sorted(lowered)}")
        client_name = lowered[singles[0]]
        if singles[0].endswith(".json"):
            return parse_json_signal(files[client_name], max_seconds)
        if singles[0].endswith(".npy"):
            return parse_npy(sanitize_name(client_name), files[client_name], sampling_rate, max_seconds)
        return parse_ecg_file(sanitize_name(client_name), files[client_name], sampling_rate, max_seconds)
    unknown = [n for n in lowered if not n.endswith((".hea", *_DATA_SUFFIXES))]
    if unknown:
        raise UploadError(f"unsupported file type(s) {unknown}; send .hea + .dat/.mat, .npy, .json, "
                          f"or one {', '.join(FILE_SUFFIXES)} file")
    return parse_record_files(files, max_seconds)
