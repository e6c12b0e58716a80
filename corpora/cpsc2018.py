"""CPSC2018 / ICBEB 2018 reader (original release format).

Each record ``A0001.mat`` holds a struct ``ECG`` with ``sex``, ``age`` and ``data``
(12 x T, mV, 500 Hz, leads I..V6); ``REFERENCE.csv`` (Recording, First_label, Second_label,
Third_label) gives up to three of the nine classes 1-9. Labels use the class abbreviations
(Normal, AF, I-AVB, LBBB, RBBB, PAC, PVC, STD, STE) with confidence 100.0; ``label_info``
gives the full name, class number and rank (1 = First_label). Recordings without a reference
row (the hidden test set) are read with empty labels and ``extra["unlabelled"] = True``.
"""

from __future__ import annotations

import csv
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from .base import STANDARD_LEADS, DatasetReader, ECGRecord, RecordError, load_matlab, parse_age, parse_sex

CPSC_RATE = 500.0
CPSC_CLASSES: dict[int, tuple[str, str]] = {
    1: ("Normal", "normal"),
    2: ("AF", "atrial fibrillation"),
    3: ("I-AVB", "first-degree atrioventricular block"),
    4: ("LBBB", "left bundle branch block"),
    5: ("RBBB", "right bundle branch block"),
    6: ("PAC", "premature atrial contraction"),
    7: ("PVC", "premature ventricular contraction"),
    8: ("STD", "ST-segment depression"),
    9: ("STE", "ST-segment elevation"),
}
_LABEL_COLUMNS = ("First_label", "Second_label", "Third_label")


def _struct_field(struct: np.ndarray, name: str) -> Any:
    """Unwrap a field of a loadmat struct (nested 1x1 object arrays) to a Python value/array."""
    value = struct[name]
    while isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        value = value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "US":
        return "".join(value.ravel().tolist())
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iuf":
        return value.item()
    return value


class CPSC2018Reader(DatasetReader):
    """CPSC2018: 6,877 12-lead 500 Hz ECGs (6-60 s) labelled with 9 rhythm/morphology classes."""

    name: ClassVar[str] = "cpsc2018"
    description: ClassVar[str] = (
        "China Physiological Signal Challenge 2018 (ICBEB): 12-lead 500 Hz ECGs of 6-60 s, "
        "up to three of nine classes per record"
    )
    label_vocabulary: ClassVar[str] = "cpsc2018"

    @cached_property
    def _reference(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        """Recording -> raw label cells, and recording -> why its row is malformed."""
        path = self.root / "REFERENCE.csv"
        labels: dict[str, list[str]] = {}
        bad: dict[str, str] = {}
        if not path.is_file():
            return labels, bad
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [cell.strip() for cell in next(reader, [])]
            if not header or header[0] != "Recording":
                raise ValueError(f"cpsc2018: {path} does not start with a 'Recording' column")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                recording = row[0].strip() or f"REFERENCE.csv line {reader.line_num}"
                if len(row) != len(header):
                    bad[recording] = (
                        f"malformed REFERENCE.csv row at line {reader.line_num}: {len(row)} fields, expected {len(header)}"
                    )
                else:
                    labels[recording] = [cell.strip() for cell in row[1:]]
        return labels, bad

    def record_ids(self) -> list[str]:
        labels, bad = self._reference
        stems = {path.stem for path in self.root.glob("*.mat") if not path.name.startswith(".")}
        return sorted(stems | set(labels) | set(bad))

    def _labels(self, record_id: str) -> tuple[dict[str, float], dict[str, dict[str, Any]], bool]:
        labels_by_record, bad = self._reference
        if record_id in bad:
            raise RecordError(record_id, bad[record_id])
        if record_id not in labels_by_record:
            return {}, {}, False
        labels: dict[str, float] = {}
        info: dict[str, dict[str, Any]] = {}
        for rank, cell in enumerate(labels_by_record[record_id], start=1):
            if not cell:
                continue
            try:
                number = int(float(cell))
            except ValueError as err:
                raise RecordError(record_id, f"REFERENCE.csv label {cell!r} is not a class number") from err
            if number not in CPSC_CLASSES:
                raise RecordError(record_id, f"REFERENCE.csv label {number} is not one of the classes 1-9")
            abbreviation, full_name = CPSC_CLASSES[number]
            if abbreviation not in labels:
                labels[abbreviation] = 100.0
                info[abbreviation] = {"known": True, "name": full_name, "class": number, "rank": rank}
        return labels, info, True

    def _load(self, record_id: str) -> np.ndarray:
        path = self.root / f"{record_id}.mat"
        content = load_matlab(record_id, path)
        struct = content.get("ECG")
        if not isinstance(struct, np.ndarray) or struct.dtype.names is None:
            raise RecordError(record_id, f"{path.name} has no 'ECG' struct")
        missing = [name for name in ("sex", "age", "data") if name not in struct.dtype.names]
        if missing:
            raise RecordError(record_id, f"'ECG' struct in {path.name} lacks {missing}")
        return struct.reshape(-1)[0]

    def read_metadata(self, record_id: str) -> ECGRecord:
        return self._record(record_id, with_signal=False)

    def read(self, record_id: str) -> ECGRecord:
        return self._record(record_id, with_signal=True)

    def _record(self, record_id: str, *, with_signal: bool) -> ECGRecord:
        labels, info, labelled = self._labels(record_id)  # a bad REFERENCE row is reported first
        struct = self._load(record_id)
        sex_value = _struct_field(struct, "sex")
        age_value = _struct_field(struct, "age")
        record = ECGRecord(
            record_id=record_id,
            dataset=self.name,
            signal=None,
            sampling_rate=CPSC_RATE,
            age=parse_age(age_value),
            sex=parse_sex(sex_value if isinstance(sex_value, str) else None),
            labels=labels,
            label_vocabulary=self.label_vocabulary,
            label_info=info,
            extra={} if labelled else {"unlabelled": True},
        )
        if with_signal:
            data = _struct_field(struct, "data")
            if not isinstance(data, np.ndarray) or data.ndim != 2 or data.dtype.kind not in "iuf":
                raise RecordError(record_id, "'ECG.data' is not a 2-D numeric array")
            if data.shape[0] != len(STANDARD_LEADS):
                raise RecordError(record_id, f"wrong lead count: 'ECG.data' has {data.shape[0]} rows, expected 12")
            self._attach_signal(record, data, list(STANDARD_LEADS))
        return record
