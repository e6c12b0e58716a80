"""MIMIC-IV-ECG reader (v1.0 layout).

Record ids are the ``study_id`` (MIMIC names each record after it). Signals live at
``files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN.{hea,dat}`` (500 Hz, 10 s); the ``path`` column
of ``record_list.csv`` points to them. Labels are the non-empty ``report_0`` ... ``report_17``
lines of ``machine_measurements.csv`` in order (confidence 100.0; a line repeated within a
study counts once); ``report`` is all those lines joined with newlines. MIMIC-IV-ECG has no
demographics: age and sex come from MIMIC-IV ``patients.csv`` when given (or found in the
root), age = anchor_age + (year of the ECG - anchor_year); otherwise they are None.
CSV rows are streamed with the csv module and statements interned, so the full
800,000-record tables fit in modest memory.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from .base import DatasetReader, ECGRecord, RecordError, normalise_id, parse_age, parse_sex, read_wfdb

REPORT_COLUMNS = tuple(f"report_{i}" for i in range(18))


@dataclass(frozen=True)
class _Study:
    subject_id: str
    ecg_time: str
    path: str


class MimicReader(DatasetReader):
    """MIMIC-IV-ECG: 500 Hz 10 s 12-lead ECGs with machine-generated statements."""

    name: ClassVar[str] = "mimic"
    description: ClassVar[str] = (
        "MIMIC-IV-ECG v1.0: ~800k 12-lead 10 s 500 Hz ECGs, machine-generated report statements; "
        "age/sex from MIMIC-IV patients.csv"
    )
    label_vocabulary: ClassVar[str] = "mimic_statement"

    def __init__(
        self,
        root: str | Path,
        *,
        patients: str | Path | None = None,
        allow_missing_leads: bool = False,
    ):
        """``patients``: MIMIC-IV ``patients.csv`` when it is not in ``root`` (optional)."""
        super().__init__(root, allow_missing_leads=allow_missing_leads)
        self.record_list_path = self.root / "record_list.csv"
        self.measurements_path = self.root / "machine_measurements.csv"
        for path in (self.record_list_path, self.measurements_path):
            if not path.is_file():
                raise FileNotFoundError(f"mimic: {path} not found")
        if patients is not None and not Path(patients).is_file():
            raise FileNotFoundError(f"mimic: patients file {patients} not found")
        default_patients = self.root / "patients.csv"
        self.patients_path = Path(patients) if patients else (default_patients if default_patients.is_file() else None)

    @staticmethod
    @contextmanager
    def _rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[list[str], Iterator[tuple[int, list[str]]]]]:
        """Open a CSV and stream (line number, cells) for its non-blank rows, one at a time."""
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = [name.strip() for name in next(reader, [])]
            absent = [column for column in required if column not in header]
            if absent:
                raise ValueError(f"mimic: {path.name} lacks columns {absent}")
            yield header, ((reader.line_num, row) for row in reader if any(cell.strip() for cell in row))

    @cached_property
    def _studies(self) -> tuple[list[str], dict[str, _Study], dict[str, str]]:
        """(study ids in file order, id -> study, id -> why the row is unusable)."""
        order: list[str] = []
        studies: dict[str, _Study] = {}
        bad: dict[str, str] = {}
        with self._rows(self.record_list_path, ("subject_id", "study_id", "ecg_time", "path")) as (header, rows):
            index = {name: i for i, name in enumerate(header)}
            for line, row in rows:
                study_id = normalise_id(row[index["study_id"]]) if len(row) > index["study_id"] else ""
                record_id = study_id or f"record_list.csv line {line}"
                if record_id in studies or record_id in bad:
                    record_id = f"{record_id} (line {line})"
                    bad[record_id] = f"duplicate study_id at record_list.csv line {line}"
                elif len(row) != len(header):
                    bad[record_id] = (
                        f"malformed record_list.csv row at line {line}: {len(row)} fields, expected {len(header)}"
                    )
                elif not study_id or not row[index["path"]].strip():
                    bad[record_id] = f"record_list.csv line {line} lacks study_id or path"
                else:
                    studies[record_id] = _Study(
                        subject_id=normalise_id(row[index["subject_id"]]),
                        ecg_time=row[index["ecg_time"]].strip(),
                        path=row[index["path"]].strip(),
                    )
                order.append(record_id)
        return order, studies, bad

    @cached_property
    def _statements(self) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
        """study id -> statement lines, and study id -> why its measurements row is unusable."""
        statements: dict[str, tuple[str, ...]] = {}
        bad: dict[str, str] = {}
        with self._rows(self.measurements_path, ("study_id", *REPORT_COLUMNS)) as (header, rows):
            index = {name: i for i, name in enumerate(header)}
            report_indices = [index[column] for column in REPORT_COLUMNS]
            for line, row in rows:
                if len(row) != len(header):
                    if len(row) > index["study_id"]:
                        bad[normalise_id(row[index["study_id"]])] = (
                            f"malformed machine_measurements.csv row at line {line}: "
                            f"{len(row)} fields, expected {len(header)}"
                        )
                    continue
                lines = tuple(sys.intern(row[i].strip()) for i in report_indices if row[i].strip())
                statements[normalise_id(row[index["study_id"]])] = lines
        return statements, bad

    @cached_property
    def _patients(self) -> dict[str, tuple[str, str, str]]:
        """subject id -> (gender, anchor_age, anchor_year); empty without patients.csv."""
        if self.patients_path is None:
            return {}
        required = ("subject_id", "gender", "anchor_age", "anchor_year")
        with self._rows(self.patients_path, required) as (header, rows):
            index = {name: i for i, name in enumerate(header)}
            return {
                normalise_id(row[index["subject_id"]]): (
                    row[index["gender"]], row[index["anchor_age"]], row[index["anchor_year"]]
                )
                for _, row in rows
                if len(row) == len(header)
            }

    def record_ids(self) -> list[str]:
        return list(self._studies[0])

    def read_metadata(self, record_id: str) -> ECGRecord:
        _, studies, bad = self._studies
        if record_id in bad:
            raise RecordError(record_id, bad[record_id])
        study = studies.get(record_id)
        if study is None:
            raise RecordError(record_id, "no such study_id in record_list.csv")
        statements, bad_measurements = self._statements
        if record_id in bad_measurements:
            raise RecordError(record_id, bad_measurements[record_id])
        if record_id not in statements:
            raise RecordError(record_id, "no machine_measurements.csv row for this study")
        lines = statements[record_id]
        labels = {line: 100.0 for line in lines}
        age: float | None = None
        sex: str | None = None
        extra: dict[str, Any] = {"ecg_time": study.ecg_time, "path": study.path}
        patient = self._patients.get(study.subject_id)
        if patient is not None:
            gender, anchor_age, anchor_year = patient
            sex = parse_sex(gender)
            base_age = parse_age(anchor_age)
            try:
                ecg_year = int(study.ecg_time[:4])
                age = None if base_age is None else base_age + (ecg_year - int(float(anchor_year)))
            except ValueError as err:
                raise RecordError(
                    record_id, f"cannot compute age from ecg_time {study.ecg_time!r} and anchor_year {anchor_year!r}"
                ) from err
        return ECGRecord(
            record_id=record_id,
            dataset=self.name,
            signal=None,
            sampling_rate=None,
            subject_id=study.subject_id,
            age=age,
            sex=sex,
            labels=labels,
            label_vocabulary=self.label_vocabulary,
            label_info={line: {"known": True, "statement": line} for line in labels},
            report="\n".join(labels) or None,
            extra=extra,
        )

    def read(self, record_id: str) -> ECGRecord:
        record = self.read_metadata(record_id)
        path = self.root / record.extra["path"]
        if not path.with_suffix(".hea").is_file():
            raise RecordError(record_id, f"header file missing: {record.extra['path']}.hea")
        wave = read_wfdb(record_id, path)
        self._attach_signal(record, wave.signal, wave.lead_names)
        record.sampling_rate = wave.sampling_rate
        return record

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"patients": str(self.patients_path.resolve()) if self.patients_path else None}
