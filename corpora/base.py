"""The record type and the abstract dataset reader every database module implements.

Readers follow torch_ecg's pattern: one subclass per database, each describing itself
(``name``, ``description``, ``label_vocabulary``) and yielding :class:`ECGRecord` objects with the
signal as float32 ``(12, T)`` millivolts in the standard lead order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
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


@dataclass
class Skip:
    """A record left out of a batch, with the reason, so nothing is dropped silently."""

    record: str
    reason: str


def arrange_leads(
    record_id: str,
    signal: np.ndarray,
    lead_names: list[str],
    *,
    allow_missing_leads: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Reorder a ``(n_leads, T)`` signal to :data:`STANDARD_LEADS` as float32 and validate it.

    Leads that are absent from the header, or present but all-NaN or perfectly flat (an
    electrode that recorded nothing), count as *missing*: they raise :class:`RecordError`
    unless ``allow_missing_leads``, in which case they become zeros and are returned in the
    missing list, so a filled lead is never mistaken for a recorded one.
    """
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
    missing: list[str] = []
    reasons: list[str] = []
    for position, lead in enumerate(STANDARD_LEADS):
        if lead not in rows:
            missing.append(lead)
            reasons.append(f"{lead} absent")
            continue
        values = np.asarray(signal[rows[lead]], dtype=np.float32)
        finite = np.isfinite(values)
        if not finite.any():
            missing.append(lead)
            reasons.append(f"{lead} all-NaN")
            continue
        if np.ptp(values[finite]) == 0:
            missing.append(lead)
            reasons.append(f"{lead} flat")
            continue
        out[position] = values
    if missing and not allow_missing_leads:
        raise RecordError(record_id, "missing or empty leads: " + ", ".join(reasons))
    return out, missing


# Formats with whole bytes per sample, whose .dat size the header fixes exactly.
_BYTES_PER_SAMPLE = {"16": 2, "24": 3, "32": 4, "80": 1, "8": 1, "61": 2}


@dataclass
class WfdbSignal:
    """What :func:`read_wfdb` returns: ``(n_leads, T)`` physical signal plus header facts."""

    signal: np.ndarray
    sampling_rate: float
    lead_names: list[str]
    comments: list[str]
    base_date: Any = None
    base_time: Any = None


def read_wfdb(record_id: str, path: Path) -> WfdbSignal:
    """Read a WFDB record (``path`` without extension) or raise :class:`RecordError` saying why.

    wfdb's own errors (missing files, truncated .dat, bad header) are translated, and a .dat
    longer than the header's length is rejected too (wfdb would silently ignore the surplus).
    """
    import wfdb  # imported here so metadata-only use does not pay for it

    header = path.with_suffix(".hea")
    if not header.is_file():
        raise RecordError(record_id, f"header file missing: {header.name}")
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
        (file_name,) = files
        per_sample = _BYTES_PER_SAMPLE.get(str(record.fmt[0])) if len(set(record.fmt)) == 1 else None
        data_path = path.parent / file_name
        if per_sample is not None and data_path.is_file():
            expected = record.sig_len * record.n_sig * per_sample
            actual = data_path.stat().st_size
            if actual != expected:
                raise RecordError(
                    record_id,
                    f"header/signal length mismatch: header says {record.sig_len} samples x {record.n_sig} leads "
                    f"({expected} bytes) but {file_name} holds {actual} bytes",
                )
    return WfdbSignal(
        signal=np.asarray(record.p_signal, dtype=np.float32).T,
        sampling_rate=float(record.fs),
        lead_names=list(record.sig_name),
        comments=list(record.comments or []),
        base_date=record.base_date,
        base_time=record.base_time,
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

    def _arrange(self, record_id: str, signal: np.ndarray, lead_names: list[str]) -> tuple[np.ndarray, list[str]]:
        return arrange_leads(record_id, signal, lead_names, allow_missing_leads=self.allow_missing_leads)

    @abstractmethod
    def record_ids(self) -> list[str]:
        """All record ids this reader knows, in a stable order."""

    @abstractmethod
    def read(self, record_id: str) -> ECGRecord:
        """Read one record with its signal; raise :class:`RecordError` with a reason on bad input."""

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
