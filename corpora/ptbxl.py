"""PTB-XL reader (official PhysioNet layout, or a metadata-only copy of ``ptbxl_database.csv``).

Record ids are the ``ecg_id`` as a decimal string ("1", "2", ...). ``rate`` picks
``records100/`` (``filename_lr``) or ``records500/`` (``filename_hr``); rows without a file at
that rate raise :class:`RecordError` (a recorded skip in batch mode), they are never dropped
silently. Labels are the ``scp_codes`` likelihoods, kept even when 0.0 (PTB-XL uses 0 for
"statement present, likelihood unknown"). ``label_info`` joins each code with
``scp_statements.csv``; codes missing from that table are kept with ``known: False``.

Ages: PTB-XL v1.0.1+ encodes ages above 89 as 300; such ages become 90.0 with
``extra["age_censored"] = True``. Sex is 0 = male, 1 = female (PTB-XL convention).
"""

from __future__ import annotations

import ast
import csv
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from .base import DatasetReader, ECGRecord, RecordError, normalise_id, read_wfdb

_SEX = {"0": "male", "1": "female"}
_RATE_COLUMN = {100: "filename_lr", 500: "filename_hr"}
# Columns that become ECGRecord fields; every other non-empty column goes to ``extra``.
_CORE_COLUMNS = {"ecg_id", "patient_id", "age", "sex", "report", "scp_codes", "strat_fold"}
_REQUIRED_COLUMNS = ("ecg_id", "patient_id", "age", "sex", "report", "scp_codes", "strat_fold")
_CENSORED_AGE = 300.0


def _flag(value: str) -> bool:
    """scp_statements.csv marks membership with "1.0" and leaves the cell empty otherwise."""
    try:
        return float(value) == 1.0
    except ValueError:
        return False


def load_scp_statements(path: str | Path) -> dict[str, dict[str, Any]]:
    """Parse ``scp_statements.csv`` into code -> description, category and class flags."""
    path = Path(path)
    statements: dict[str, dict[str, Any]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty scp_statements file")
        columns = {name: index for index, name in enumerate(header)}
        for required in ("description", "diagnostic", "form", "rhythm", "diagnostic_class",
                         "diagnostic_subclass", "Statement Category"):
            if required not in columns:
                raise ValueError(f"{path}: column {required!r} missing from scp_statements")
        for line_number, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise ValueError(f"{path}: line {line_number} has {len(row)} fields, expected {len(header)}")
            code = row[0].strip()

            def cell(name: str, row: list[str] = row) -> str | None:
                value = row[columns[name]].strip()
                return value or None

            statements[code] = {
                "known": True,
                "description": cell("description"),
                "statement_category": cell("Statement Category"),
                "diagnostic": _flag(row[columns["diagnostic"]]),
                "form": _flag(row[columns["form"]]),
                "rhythm": _flag(row[columns["rhythm"]]),
                "diagnostic_class": cell("diagnostic_class"),
                "diagnostic_subclass": cell("diagnostic_subclass"),
            }
    return statements


def unknown_scp_info() -> dict[str, Any]:
    """label_info for a code that scp_statements.csv does not list (kept, flagged unknown)."""
    return {
        "known": False, "description": None, "statement_category": None, "diagnostic": False,
        "form": False, "rhythm": False, "diagnostic_class": None, "diagnostic_subclass": None,
    }


class PTBXLReader(DatasetReader):
    """PTB-XL: 12-lead 10-s ECGs at 100 or 500 Hz with SCP-ECG statements and German/English reports."""

    name: ClassVar[str] = "ptbxl"
    description: ClassVar[str] = (
        "PTB-XL (Wagner et al. 2020): 12-lead 10 s ECGs, SCP-ECG statements with likelihoods, "
        "free-text reports, stratified folds 1-10"
    )
    label_vocabulary: ClassVar[str] = "scp"

    def __init__(
        self,
        root: str | Path,
        *,
        rate: int = 100,
        scp_statements: str | Path | None = None,
        allow_missing_leads: bool = False,
    ):
        """``root``: the PTB-XL folder, or a ``ptbxl_database.csv``-style file (metadata only
        unless its folder also holds the signals). ``scp_statements``: path to
        ``scp_statements.csv`` when it is not next to the database CSV."""
        if rate not in _RATE_COLUMN:
            raise ValueError(f"ptbxl: rate must be 100 or 500, not {rate}")
        root = Path(root)
        if root.is_dir():
            self.database_csv = root / "ptbxl_database.csv"
            self.signal_root = root
        elif root.is_file():
            self.database_csv = root
            self.signal_root = root.parent
        else:
            raise FileNotFoundError(f"ptbxl: {root} is neither the PTB-XL folder nor a database CSV")
        if not self.database_csv.is_file():
            raise FileNotFoundError(f"ptbxl: {self.database_csv} not found")
        self.root = root
        self.allow_missing_leads = allow_missing_leads
        self.rate = rate
        statements_path = Path(scp_statements) if scp_statements else self.database_csv.parent / "scp_statements.csv"
        if not statements_path.is_file():
            raise FileNotFoundError(
                f"ptbxl: scp_statements.csv not found at {statements_path}; pass scp_statements=PATH"
            )
        self.scp_statements_path = statements_path
        self.statements = load_scp_statements(statements_path)

    @cached_property
    def _rows(self) -> tuple[list[str], dict[str, dict[str, str]], dict[str, str]]:
        """(ids in file order, id -> row, id -> reason for malformed rows)."""
        order: list[str] = []
        rows: dict[str, dict[str, str]] = {}
        bad: dict[str, str] = {}
        with self.database_csv.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"ptbxl: {self.database_csv} is empty")
            missing = [column for column in _REQUIRED_COLUMNS if column not in header]
            if missing:
                raise ValueError(f"ptbxl: {self.database_csv} lacks columns {missing}")
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                first = row[0].strip()
                try:
                    record_id = str(int(float(first)))
                except ValueError:
                    record_id = f"line {line}"
                if record_id in rows or record_id in bad:
                    record_id = f"{record_id} (line {line})"
                    bad[record_id] = f"duplicate ecg_id {first!r} at line {line}"
                elif len(row) != len(header):
                    bad[record_id] = f"malformed CSV row at line {line}: {len(row)} fields, expected {len(header)}"
                elif record_id.startswith("line "):
                    bad[record_id] = f"malformed CSV row at line {line}: ecg_id {first!r} is not a number"
                else:
                    rows[record_id] = dict(zip(header, row))
                order.append(record_id)
        return order, rows, bad

    def record_ids(self) -> list[str]:
        return list(self._rows[0])

    def _row(self, record_id: str) -> dict[str, str]:
        _, rows, bad = self._rows
        if record_id in bad:
            raise RecordError(record_id, bad[record_id])
        if record_id not in rows:
            raise RecordError(record_id, f"no such ecg_id in {self.database_csv.name}")
        return rows[record_id]

    def read_metadata(self, record_id: str) -> ECGRecord:
        row = self._row(record_id)
        text = row["scp_codes"].strip()
        try:
            codes = ast.literal_eval(text) if text else {}
        except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
            raise RecordError(record_id, f"unparseable scp_codes {text[:80]!r}: {type(err).__name__}") from err
        if not isinstance(codes, dict) or not all(
            isinstance(code, str) and isinstance(value, int | float) and not isinstance(value, bool)
            for code, value in codes.items()
        ):
            raise RecordError(record_id, f"scp_codes is not a dict of code -> likelihood: {text[:80]!r}")
        labels = {code: float(value) for code, value in codes.items()}
        label_info = {code: dict(self.statements.get(code) or unknown_scp_info()) for code in labels}

        extra: dict[str, Any] = {
            column: value for column, value in row.items() if column not in _CORE_COLUMNS and value.strip()
        }
        age_text = row["age"].strip()
        age: float | None = None
        if age_text:
            try:
                age = float(age_text)
            except ValueError as err:
                raise RecordError(record_id, f"age {age_text!r} is not a number") from err
            if age >= _CENSORED_AGE:
                age, extra["age_censored"] = 90.0, True
        sex_text = row["sex"].strip()
        sex_key = sex_text[:-2] if sex_text.endswith(".0") else sex_text
        if sex_text and sex_key not in _SEX:
            raise RecordError(record_id, f"sex {sex_text!r} is not 0 (male) or 1 (female)")
        fold_text = row["strat_fold"].strip()
        try:
            fold = int(float(fold_text)) if fold_text else None
        except ValueError as err:
            raise RecordError(record_id, f"strat_fold {fold_text!r} is not an integer") from err
        patient = row["patient_id"].strip()
        subject_id = normalise_id(patient) if patient else None
        report = row["report"].strip() or None
        return ECGRecord(
            record_id=record_id,
            dataset=self.name,
            signal=None,
            sampling_rate=None,
            subject_id=subject_id,
            age=age,
            sex=_SEX.get(sex_key),
            labels=labels,
            label_vocabulary=self.label_vocabulary,
            label_info=label_info,
            report=report,
            fold=fold,
            extra=extra,
        )

    def signal_path(self, record_id: str) -> Path | None:
        relative = (self._row(record_id).get(_RATE_COLUMN[self.rate]) or "").strip()
        return (self.signal_root / relative).resolve() if relative else None

    def read(self, record_id: str) -> ECGRecord:
        record = self.read_metadata(record_id)
        column = _RATE_COLUMN[self.rate]
        relative = record.extra.get(column, "").strip()
        if not relative:
            raise RecordError(record_id, f"no {self.rate} Hz signal listed ({column} is empty)")
        if Path(relative).is_absolute() or ".." in Path(relative).parts:  # the CSV is input too
            raise RecordError(record_id, f"{column} {relative!r} points outside the dataset folder; refused")
        path = self.signal_root / relative
        for suffix in (".hea", ".dat"):
            if not path.with_suffix(suffix).is_file():
                raise RecordError(record_id, f"signal file missing at {self.rate} Hz: {relative}{suffix}")
        wave = read_wfdb(record_id, path)
        if wave.sampling_rate != self.rate:
            raise RecordError(record_id, f"header says {wave.sampling_rate:g} Hz, expected {self.rate} Hz")
        self._attach_signal(record, wave.signal, wave.lead_names)
        record.sampling_rate = wave.sampling_rate
        return record

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"rate": self.rate, "scp_statements": str(self.scp_statements_path.resolve())}
