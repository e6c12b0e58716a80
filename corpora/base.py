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


class DatasetReader(ABC):
    """Abstract reader: list record ids, read one record, iterate with recorded skips."""

    name: ClassVar[str]
    description: ClassVar[str]
    label_vocabulary: ClassVar[str]

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.name}: dataset root {self.root} is not a directory")

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
            "root": str(self.root),
        }
