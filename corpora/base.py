"""The record type and the abstract dataset reader every database module implements.

Readers follow torch_ecg's pattern: one subclass per database, each describing itself
(``name``, ``description``, ``label_vocabulary``) and yielding :class:`ECGRecord` objects with the
signal as float32 ``(12, T)`` millivolts in the standard lead order.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
_LEAD_ALIASES = {lead.lower(): lead for lead in STANDARD_LEADS} | {
    "avr": "aVR", "avl": "aVL", "avf": "aVF", "d1": "I", "d2": "II", "d3": "III",
}


def canonical_lead_name(name: str) -> str | None:
    """Map a header's lead name (any case, common aliases) to the standard name, or None."""
    return _LEAD_ALIASES.get(name.strip().lower())


_SEX_WORDS = {"m": "male", "male": "male", "f": "female", "female": "female"}


def comment_fields(comments: list[str]) -> dict[str, str]:
    """'Age: 74' style WFDB header comment lines -> {'age': '74'} (keys lower-cased, first wins)."""
    values: dict[str, str] = {}
    for comment in comments:
        key, sep, value = comment.partition(":")
        if sep:
            values.setdefault(key.strip().lower(), value.strip())
    return values


def normalise_id(value: str) -> str:
    """Numeric ids as CSVs write them: '40689238' and '40689238.0' name the same record or subject."""
    text = value.strip()
    try:
        return str(int(float(text)))
    except ValueError:
        return text


def parse_sex(value: Any) -> str | None:
    """Normalise a sex field in any case ("M", "Male", "female") to "male"/"female"/None."""
    if value is None or not isinstance(value, str):
        return None
    return _SEX_WORDS.get(value.strip().lower())


def parse_age(value: Any) -> float | None:
    """Age as float years, or None for blanks, "NaN", "Unknown" and negative sentinels."""
    try:
        age = float(value)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(age) or age < 0:
        return None
    return age


class RecordError(ValueError):
    """A record cannot be read; carries the record id and a human-readable reason."""

    def __init__(self, record_id: str, reason: str):
        super().__init__(f"{record_id}: {reason}")
        self.record_id = record_id
        self.reason = reason


@dataclass
class ECGRecord:
    """One ECG with its labels, in a database-independent form.

    ``labels`` maps each native label (SCP code, SNOMED CT code, machine statement, CPSC class)
    to a confidence: PTB-XL likelihoods (0-100, where 0 means "possible", not absent), else 100.
    ``signal`` may be None for metadata-only rows (e.g. PTB-XL rows whose signals are absent).
    """

    record_id: str
    dataset: str
    signal: np.ndarray | None
    sampling_rate: float | None
    subject_id: str | None = None
    age: float | None = None
    sex: str | None = None  # "male" | "female" | None
    labels: dict[str, float] = field(default_factory=dict)
    label_vocabulary: str = ""  # "scp" | "snomed" | "mimic_statement" | "cpsc2018"
    label_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-label description etc.
    report: str | None = None
    fold: int | None = None
    missing_leads: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...] | None:
        return None if self.signal is None else tuple(self.signal.shape)

    @property
    def notes(self) -> list[str]:
        """What reading changed or assumed (zero-filled or derived leads, units), for the user to see."""
        return list(self.extra.get("notes", []))


def add_notes(record: ECGRecord, notes: Sequence[str]) -> None:
    """Append ``notes`` to ``record.extra["notes"]`` (kept once each, in order)."""
    if notes:
        record.extra["notes"] = list(dict.fromkeys([*record.extra.get("notes", []), *notes]))


@dataclass
class Skip:
    """A record left out of a batch, with the reason, so nothing is dropped silently."""

    record: str
    reason: str


# A lead whose peak-to-peak is under this is an electrode that recorded nothing (a real lead moves by
# tenths of a millivolt; PTB-XL's resolution is 0.001 mV), and a lead straying further than this from its
# median is a wrong gain or unit (surface ECGs stay well under 20 mV; the largest in PTB-XL/CinC is ~12).
FLAT_PTP_MV = 0.005
MAX_PEAK_MV = 20.0


def _leads_phrase(leads: list[str]) -> str:
    return ("lead " if len(leads) == 1 else "leads ") + ", ".join(leads)


@dataclass
class SignalCheck:
    """What :func:`check_signal` did to a ``(12, T)`` signal, in words (``notes``) and in lead lists."""

    signal: np.ndarray
    notes: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # not in the file, zero-filled
    flat: list[str] = field(default_factory=list)  # peak-to-peak under FLAT_PTP_MV, zero-filled
    all_nan: list[str] = field(default_factory=list)  # no finite sample, zero-filled
    nan_samples: dict[str, int] = field(default_factory=dict)  # lead -> NaN samples (repaired or left)

    @property
    def zero_filled(self) -> list[str]:
        """Every lead this check (or its caller, ``absent``) zero-filled, in the standard order."""
        filled = set(self.absent) | set(self.flat) | set(self.all_nan)
        return [lead for lead in STANDARD_LEADS if lead in filled]

    def reasons(self) -> list[str]:
        """``["V2 all-NaN", "V3 flat"]``: one reason per zero-filled lead, in the standard order."""
        why = {lead: "absent" for lead in self.absent} | {lead: "all-NaN" for lead in self.all_nan}
        why |= {lead: "flat" for lead in self.flat}
        return [f"{lead} {why[lead]}" for lead in self.zero_filled]


def check_signal(
    signal: np.ndarray,
    record_id: str,
    *,
    absent: Sequence[str] = (),
    zero_filled: Sequence[str] = (),
    repair_nan: bool = True,
    require_usable: bool = True,
) -> SignalCheck:
    """The one sanity check every path (readers, uploads, :func:`esi.inference.fit_to_model`) runs on a
    ``(12, T)`` millivolt signal in :data:`STANDARD_LEADS` order, so bad input never passes silently.

    - leads named in ``absent`` (not in the file), flat or near-flat leads (peak-to-peak under
      :data:`FLAT_PTP_MV`) and all-NaN leads become zeros, each kind with a note;
      ``zero_filled`` names leads a caller already zero-filled and noted (skipped without a new note);
    - partial NaN (or infinite) runs are linearly interpolated with a note giving the count per lead
      (``repair_nan``; readers leave them for preprocessing, which records them);
    - a lead straying more than :data:`MAX_PEAK_MV` from its median (a wrong gain or unit) is an error;
    - so is a signal with no usable lead left (``require_usable``).

    Returns a :class:`SignalCheck` with a float32 copy (the input is not modified); raises
    :class:`RecordError` naming the record and the leads.
    """
    data = np.array(signal, dtype=np.float32)
    if data.ndim != 2 or data.shape[0] != len(STANDARD_LEADS):
        raise RecordError(record_id, f"expected a (12, T) signal in the standard lead order, got shape {data.shape}")
    if data.shape[1] == 0:
        raise RecordError(record_id, "signal has no samples")
    unknown = sorted(set(absent) - set(STANDARD_LEADS))
    if unknown:
        raise RecordError(record_id, f"unknown lead name(s) {unknown} among the absent leads")
    check = SignalCheck(data, absent=[lead for lead in STANDARD_LEADS if lead in set(absent)])
    skip = set(absent) | set(zero_filled)
    too_large: dict[str, float] = {}
    usable = 0
    for index, lead in enumerate(STANDARD_LEADS):
        values = data[index]
        if lead in skip:
            values[:] = 0.0
            continue
        finite = np.isfinite(values)
        if not finite.any():
            check.all_nan.append(lead)
            values[:] = 0.0
            continue
        real = values[finite].astype(np.float64)
        if real.max() - real.min() < FLAT_PTP_MV:
            check.flat.append(lead)
            values[:] = 0.0
            continue
        usable += 1
        peak = float(np.abs(real - np.median(real)).max())
        if peak > MAX_PEAK_MV:
            too_large[lead] = peak
        if not finite.all():
            check.nan_samples[lead] = int((~finite).sum())
            if repair_nan:
                positions = np.arange(values.size)
                values[:] = np.interp(positions, positions[finite], values[finite])
    if too_large:
        leads = list(too_large)
        raise RecordError(
            record_id,
            f"{_leads_phrase(leads)} stray{'s' if len(leads) == 1 else ''} up to {max(too_large.values()):.1f} mV "
            f"from the median, beyond the {MAX_PEAK_MV:g} mV an ECG reaches: wrong gain or units?",
        )
    groups = [(check.absent, "missing"), (check.all_nan, "all NaN"),
              (check.flat, f"flat (peak-to-peak under {FLAT_PTP_MV:g} mV)")]
    if require_usable and not usable:
        described = [f"{_leads_phrase(leads)} {why}" for leads, why in groups if leads]
        already = [lead for lead in STANDARD_LEADS if lead in set(zero_filled) - set(check.absent)]
        if already:
            described.insert(0, f"{_leads_phrase(already)} zero-filled before")
        raise RecordError(record_id, "no usable lead: " + "; ".join(described))
    check.notes = [f"{_leads_phrase(leads)} {why}, zero-filled" for leads, why in groups if leads]
    if check.nan_samples and repair_nan:
        counts = ", ".join(f"{lead} {count}" for lead, count in check.nan_samples.items())
        check.notes.append(
            f"repaired {sum(check.nan_samples.values())} NaN samples by linear interpolation ({counts})")
    return check


def arrange_leads(
    record_id: str,
    signal: np.ndarray,
    lead_names: list[str],
    *,
    allow_missing_leads: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Reorder a ``(n_leads, T)`` signal to :data:`STANDARD_LEADS` as float32 and validate it.

    Leads that are absent from the header, or present but all-NaN or flat (an electrode that
    recorded nothing; see :func:`check_signal`), count as *missing*: they raise :class:`RecordError`
    unless ``allow_missing_leads``, in which case they become zeros and are returned in the
    missing list, so a filled lead is never mistaken for a recorded one. Partial NaN runs are kept
    (preprocessing repairs and records them).
    """
    check = standardise_leads(record_id, signal, lead_names)
    if not allow_missing_leads:
        refuse_zero_filled(record_id, check)
    return check.signal, check.zero_filled


def refuse_zero_filled(record_id: str, check: SignalCheck) -> None:
    """The readers' default: any lead the check zero-filled (absent, all-NaN, flat) is a RecordError."""
    if check.zero_filled:
        raise RecordError(record_id, "missing or empty leads: " + ", ".join(check.reasons()))


def standardise_leads(record_id: str, signal: np.ndarray, lead_names: Sequence[str]) -> SignalCheck:
    """Reorder a ``(n_leads, T)`` signal with header lead names to the standard order and run
    :func:`check_signal` on it (absent leads zero-filled and noted, NaN left for preprocessing)."""
    if signal.ndim != 2 or signal.shape[0] != len(lead_names):
        raise RecordError(
            record_id, f"signal shape {signal.shape} does not match {len(lead_names)} header leads"
        )
    if signal.shape[1] == 0:
        raise RecordError(record_id, "signal has no samples")
    rows: dict[str, int] = {}
    for index, raw_name in enumerate(lead_names):
        lead = canonical_lead_name(raw_name)
        if lead is None:
            raise RecordError(record_id, f"unknown lead name {raw_name!r} (expected the 12 standard leads)")
        if lead in rows:
            raise RecordError(record_id, f"lead {lead} appears twice in the header")
        rows[lead] = index
    out = np.zeros((len(STANDARD_LEADS), signal.shape[1]), dtype=np.float32)
    for position, lead in enumerate(STANDARD_LEADS):
        if lead in rows:
            out[position] = np.asarray(signal[rows[lead]], dtype=np.float32)
    absent = [lead for lead in STANDARD_LEADS if lead not in rows]
    return check_signal(out, record_id, absent=absent, repair_nan=False)


# Bytes per sample of the formats whose .dat size the header fixes (212 packs 2 samples in 3 bytes).
_BYTES_PER_SAMPLE: dict[str, float] = {"16": 2, "24": 3, "32": 4, "80": 1, "8": 1, "61": 2, "212": 1.5}
# Physical units -> factor to millivolts.
_TO_MV = {"mv": 1.0, "uv": 1e-3, "\u00b5v": 1e-3, "\u03bcv": 1e-3, "v": 1e3}
_GAIN_FIELD = re.compile(r"^(?P<gain>[-+0-9.eE]+)(?:\((?P<baseline>[-+0-9]+)\))?(?:/(?P<units>\S+))?$")


@dataclass
class WfdbHeader:
    """The facts of a WFDB header that readers need (see :func:`parse_wfdb_header`)."""

    n_sig: int
    fs: float
    sig_len: int
    file_names: list[str]
    fmts: list[str]
    gains: list[float]
    baselines: list[int]
    units: list[str]
    lead_names: list[str]
    comments: list[str] = field(default_factory=list)
    parser: str = "own"
    # the header's own tokens, for callers that rewrite it (API uploads swap in safe file names)
    record_tokens: list[str] = field(default_factory=list)
    signal_tokens: list[list[str]] = field(default_factory=list)


def parse_wfdb_header(text: str, record_id: str) -> WfdbHeader:
    """Small tolerant WFDB header parser (single-segment records).

    Accepts what ``wfdb.rdheader`` rejects in some CinC files (a record name carrying ".mat").
    Gain fields look like ``1000``, ``1000/mV`` or ``1000.0(0)/mV``; a missing baseline is the
    ADC zero. A gain of 0 or no gain field is a :class:`RecordError`: the WFDB spec reads both as
    200 ADC units/mV, a guess that is wrong for most 12-lead data (PTB-XL's gain is 1000, so a
    zeroed gain would scale every amplitude 5x with nothing to show for it).
    """
    lines = [line.strip() for line in text.splitlines()]
    comments = [line.lstrip("#").strip() for line in lines if line.startswith("#")]
    body = [line for line in lines if line and not line.startswith("#")]
    if not body:
        raise RecordError(record_id, "header has no record line")
    fields = body[0].split()
    try:
        if re.search(r"/\d+$", fields[0]):  # "name/n_segments"
            raise ValueError("multi-segment records are not supported")
        n_sig = int(fields[1])
        fs = float(fields[2].split("/")[0].split("(")[0]) if len(fields) > 2 else 250.0
        sig_len = int(fields[3]) if len(fields) > 3 else 0
    except (IndexError, ValueError) as err:
        raise RecordError(record_id, f"bad header record line {body[0]!r}: {err}") from err
    signal_lines = body[1:]
    if len(signal_lines) != n_sig:
        raise RecordError(record_id, f"header announces {n_sig} signals but has {len(signal_lines)} signal lines")
    header = WfdbHeader(n_sig, fs, sig_len, [], [], [], [], [], [], comments, record_tokens=fields)
    no_gain: list[str] = []
    for line in signal_lines:
        parts = line.split()
        header.signal_tokens.append(parts)
        if len(parts) < 2:
            raise RecordError(record_id, f"bad header signal line {line!r}")
        gain, baseline, units = 0.0, None, "mV"
        if len(parts) > 2:
            match = _GAIN_FIELD.match(parts[2])
            if match is None:
                raise RecordError(record_id, f"bad gain field {parts[2]!r} in header")
            try:
                gain = float(match["gain"])
            except ValueError as err:
                raise RecordError(record_id, f"bad gain field {parts[2]!r} in header") from err
            if not np.isfinite(gain):
                raise RecordError(record_id, f"gain {parts[2]!r} in header is not a finite number")
            baseline = int(match["baseline"]) if match["baseline"] is not None else None
            units = match["units"] or "mV"
        if gain == 0:
            no_gain.append(" ".join(parts[8:]) if len(parts) > 8 else f"sig{len(header.lead_names)}")
        try:
            adc_zero = int(parts[4]) if len(parts) > 4 else 0
        except ValueError as err:
            raise RecordError(record_id, f"bad ADC zero {parts[4]!r} in header") from err
        header.file_names.append(parts[0])
        header.fmts.append(parts[1])
        header.gains.append(gain)
        header.baselines.append(adc_zero if baseline is None else baseline)
        header.units.append(units)
        header.lead_names.append(" ".join(parts[8:]) if len(parts) > 8 else f"sig{len(header.lead_names)}")
    if no_gain:
        raise RecordError(
            record_id,
            f"header gain 0 or missing for {_leads_phrase(no_gain)}: WFDB would assume its default of "
            "200 ADC units/mV, only a guess (PTB-XL records use 1000/mV); write the real gain into the header",
        )
    return header


def signal_file(record_id: str, directory: Path, file_name: str) -> Path:
    """``directory / file_name`` for a signal file that a header names, or :class:`RecordError`
    when it would leave ``directory`` (absolute name, ``..`` step, symlink pointing out).

    A header is input like any other: such a name would make another file's bytes this record's
    signal (exported, captioned and scored under its id). Only the path is examined (``resolve``
    follows links without opening anything), so a refused file is never opened.
    """
    name = Path(file_name)
    if name.is_absolute() or ".." in name.parts:
        raise RecordError(record_id, f"header names signal file {file_name!r} outside the record's folder; refused")
    candidate = directory / name
    try:
        inside = candidate.resolve().is_relative_to(directory.resolve())
    except (OSError, RuntimeError, ValueError) as err:  # symlink loop, NUL byte in the name
        raise RecordError(record_id, f"cannot resolve signal file {file_name!r}: {err}") from err
    if not inside:
        raise RecordError(
            record_id, f"signal file {file_name!r} is a link leading outside the record's folder; refused")
    return candidate


def mv_factors(record_id: str, units: list[str]) -> np.ndarray:
    """Per-lead factors that turn the header's physical units into millivolts."""
    try:
        return np.asarray([_TO_MV[(unit or "mV").strip().lower()] for unit in units], dtype=np.float64)
    except KeyError as err:
        raise RecordError(record_id, f"signal units {err.args[0]!r} are not a voltage") from err


@dataclass
class WfdbSignal:
    """What :func:`read_wfdb` returns: ``(n_leads, T)`` physical signal in mV plus header facts."""

    signal: np.ndarray
    sampling_rate: float
    lead_names: list[str]
    comments: list[str]
    reader: str = "wfdb"


def _check_size(record_id: str, data_path: Path, sig_len: int, n_sig: int, per_sample: float) -> None:
    expected = int(np.ceil(sig_len * n_sig * per_sample))
    actual = data_path.stat().st_size
    if not expected <= actual <= expected + (1 if per_sample % 1 else 0):  # 212 may pad one byte
        problem = "truncated or corrupt" if actual < expected else "longer than its header says"
        raise RecordError(
            record_id,
            f"header/signal length mismatch ({problem}): header says {sig_len} samples x {n_sig} leads "
            f"({expected} bytes) but {data_path.name} holds {actual} bytes",
        )


def _read_format16(record_id: str, path: Path, header: WfdbHeader) -> WfdbSignal | None:
    """Fast path for the common case (one interleaved format-16 file, no offsets/skew/multi-frame);
    returns None for anything else. Same arithmetic as wfdb: (digital - baseline) / gain in float64,
    -32768 = missing sample (NaN)."""
    if set(header.fmts) != {"16"} or len(set(header.file_names)) != 1 or header.sig_len <= 0:
        return None
    data_path = signal_file(record_id, path.parent, header.file_names[0])
    if not data_path.is_file():
        raise RecordError(record_id, f"signal file missing: {data_path.name}")
    _check_size(record_id, data_path, header.sig_len, header.n_sig, 2)
    try:
        digital = np.fromfile(data_path, dtype="<i2").reshape(header.sig_len, header.n_sig).T
    except (OSError, ValueError) as err:
        raise RecordError(record_id, f"cannot read {data_path.name}: {err}") from err
    baselines = np.asarray(header.baselines, dtype=np.float64)[:, None]
    gains = np.asarray(header.gains, dtype=np.float64)[:, None]
    physical = (digital.astype(np.float64) - baselines) / gains
    physical[digital == -32768] = np.nan
    physical *= mv_factors(record_id, header.units)[:, None]
    return WfdbSignal(physical.astype(np.float32), header.fs, header.lead_names, header.comments, reader="own")


def load_matlab(record_id: str, path: Path) -> dict[str, Any]:
    """``scipy.io.loadmat`` with its many failure modes on damaged files turned into RecordError."""
    import struct

    import scipy.io

    if not path.is_file():
        raise RecordError(record_id, f"signal file missing: {path.name}")
    try:
        return scipy.io.loadmat(str(path))
    except (ValueError, OSError, TypeError, EOFError, IndexError, KeyError, struct.error, UnicodeDecodeError,
            scipy.io.matlab.MatReadError) as err:
        raise RecordError(record_id, f"corrupt or truncated {path.name}: {type(err).__name__}: {err}") from err


def read_wfdb(record_id: str, path: Path) -> WfdbSignal:
    """Read a WFDB record (``path`` without extension) as mV, or raise :class:`RecordError` saying why.

    Single-file format-16 records (all of PTB-XL and MIMIC-IV-ECG) are read with
    :func:`parse_wfdb_header` + numpy, about 100x faster than ``wfdb.rdrecord`` (whose header
    parsing dominates); results are identical (tested). Everything else goes through
    ``wfdb.rdrecord``, whose errors (missing files, truncated .dat, bad header) are translated.
    A .dat longer than its header says is rejected too (wfdb would silently ignore the surplus),
    and so is a header naming a signal file outside the record's folder (:func:`signal_file`).
    """
    header_path = path.with_suffix(".hea")
    if not header_path.is_file():
        raise RecordError(record_id, f"header file missing: {header_path.name}")
    try:
        text = header_path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise RecordError(record_id, f"cannot read {header_path.name}: {err}") from err
    header = parse_wfdb_header(text, record_id)
    for file_name in dict.fromkeys(header.file_names):  # before anything (wfdb included) opens them
        signal_file(record_id, path.parent, file_name)
    formats: dict[str, set[str]] = {}
    for file_name, fmt in zip(header.file_names, header.fmts):
        formats.setdefault(file_name, set()).add(fmt.split("+")[0].split("x")[0].split(":")[0])
    for file_name, found in formats.items():
        if len(found) > 1:  # the WFDB spec requires one format per signal file
            raise RecordError(record_id, f"signals in {file_name} have different formats {sorted(found)}")
    fast = _read_format16(record_id, path, header)
    if fast is not None:
        return fast

    import wfdb  # imported here so the fast path and metadata-only use do not pay for it

    try:
        record = wfdb.rdrecord(str(path))
    except FileNotFoundError as err:
        raise RecordError(record_id, f"signal file missing: {Path(err.filename or '').name or err}") from err
    except ValueError as err:  # includes wfdb's HeaderSyntaxError and "Samples were not loaded correctly"
        raise RecordError(record_id, f"cannot read WFDB record {path.name}: {err} (truncated or corrupt?)") from err
    except (OSError, EOFError, IndexError, TypeError) as err:
        raise RecordError(record_id, f"cannot read WFDB record {path.name}: {type(err).__name__}: {err}") from err
    if record.p_signal is None or record.n_sig == 0:
        raise RecordError(record_id, f"WFDB record {path.name} has no signals")
    files = set(record.file_name or [])
    if len(files) == 1 and all(offset in (None, 0) for offset in (record.byte_offset or [None])):
        per_sample = _BYTES_PER_SAMPLE.get(str(record.fmt[0])) if len(set(record.fmt)) == 1 else None
        data_path = path.parent / next(iter(files))
        if per_sample is not None and data_path.is_file():
            _check_size(record_id, data_path, record.sig_len, record.n_sig, per_sample)
    factors = mv_factors(record_id, list(record.units or ["mV"] * record.n_sig))
    return WfdbSignal(
        signal=(np.asarray(record.p_signal, dtype=np.float64).T * factors[:, None]).astype(np.float32),
        sampling_rate=float(record.fs),
        lead_names=list(record.sig_name),
        comments=list(record.comments or []),
    )


class DatasetReader(ABC):
    """Abstract reader: list record ids, read one record, iterate with recorded skips.

    ``allow_missing_leads``: by default a record lacking a standard lead (absent, all-NaN or
    flat) is a :class:`RecordError`; with it the lead is zero-filled and listed in
    ``ECGRecord.missing_leads`` (and ``extra["zero_filled_leads"]``).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    label_vocabulary: ClassVar[str]

    def __init__(self, root: str | Path, *, allow_missing_leads: bool = False):
        self.root = Path(root)
        self.allow_missing_leads = allow_missing_leads
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.name}: dataset root {self.root} is not a directory")

    def _attach_signal(self, record: ECGRecord, signal: np.ndarray, lead_names: list[str]) -> None:
        """Put ``signal`` on ``record`` in the standard lead order (:func:`check_signal`), noting any
        zero-filled leads in ``missing_leads``, ``extra["zero_filled_leads"]`` and ``extra["notes"]``."""
        check = standardise_leads(record.record_id, signal, lead_names)
        if not self.allow_missing_leads:
            refuse_zero_filled(record.record_id, check)
        record.signal, record.missing_leads = check.signal, check.zero_filled
        if record.missing_leads:
            record.extra["zero_filled_leads"] = list(record.missing_leads)
        add_notes(record, check.notes)

    @abstractmethod
    def record_ids(self) -> list[str]:
        """All record ids this reader knows, in a stable order."""

    @abstractmethod
    def read(self, record_id: str) -> ECGRecord:
        """Read one record with its signal; raise :class:`RecordError` with a reason on bad input."""

    def signal_path(self, record_id: str) -> Path | None:
        """The record's signal on disk (WFDB base path, no suffix) where the reader knows it, else None."""
        return None

    def read_metadata(self, record_id: str) -> ECGRecord:
        """Read labels and demographics without the signal (cheap; used for captioning)."""
        record = self.read(record_id)
        record.signal = None
        return record

    def iter_records(
        self, skipped: list[Skip] | None = None, *, metadata_only: bool = False
    ) -> Iterator[ECGRecord]:
        """Yield readable records; unreadable ones are appended to ``skipped`` (or raised if None)."""
        for record_id in self.record_ids():
            try:
                yield self.read_metadata(record_id) if metadata_only else self.read(record_id)
            except RecordError as err:
                if skipped is None:
                    raise
                skipped.append(Skip(err.record_id, err.reason))

    def __iter__(self) -> Iterator[ECGRecord]:
        return self.iter_records()

    def __len__(self) -> int:
        return len(self.record_ids())

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "label_vocabulary": self.label_vocabulary,
            "root": str(self.root.resolve()),
            "allow_missing_leads": self.allow_missing_leads,
        }
