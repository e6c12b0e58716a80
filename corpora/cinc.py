"""PhysioNet/CinC Challenge 2020/2021 format reader (CPSC, CPSC-Extra, INCART, PTB, PTB-XL,
Georgia, Chapman-Shaoxing, Ningbo).

Each record is a WFDB header (``#Age``, ``#Sex``, ``#Dx`` comment lines, Dx = SNOMED CT codes)
plus a MATLAB v4 ``.mat`` whose ``val`` holds the digital ``(n_leads, T)`` signal. Headers are
read with ``wfdb.rdheader``; the ones it rejects (Georgia ``E*`` headers name the record
"E00001.mat" on their first line) go through :func:`corpora.base.parse_wfdb_header`, a small
tolerant parser (``extra["header_parser"] == "fallback"``).
Records keep their native rate (500 Hz, 1000 Hz for PTB ``S*``, 257 Hz for INCART ``I*``).
Header-only records (INCART in the shared copy) are recorded skips "signal file missing".
Empty ``#Dx`` gives empty labels; ``#Age: NaN`` gives age None; sex is read in any case.
Known wrong header gains (see :data:`KNOWN_GAIN_ERRORS`) are corrected and flagged in
``extra["gain_corrected"]``, so that all sources come out in true millivolts.
"""

from __future__ import annotations

import csv
import re
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .base import (
    DatasetReader,
    ECGRecord,
    RecordError,
    WfdbHeader,
    comment_fields,
    load_matlab,
    mv_factors,
    parse_age,
    parse_sex,
    parse_wfdb_header,
    signal_file,
)

DX_MAPPING_FILES = ("dx_mapping_scored.csv", "dx_mapping_unscored.csv")
# Record-name prefix -> source database, as named in the Challenge's dx_mapping tables.
_SOURCES = {
    "A": "CPSC", "Q": "CPSC-Extra", "I": "StPetersburg", "S": "PTB", "HR": "PTB-XL",
    "E": "Georgia", "JS": "Chapman-Shaoxing/Ningbo",
}
# Known wrong ADC gains in the CinC 2020 headers: (record prefix, header gain) -> true gain.
# HR* (PTB-XL) digital values equal PTB-XL's own (gain 1000/mV; checked against
# records500/00000/00001_hr), and S* (PTB Diagnostic ECG Database, native gain 2000/mV) carry a
# factor-1000 unit slip. Only these exact header values are corrected (opt out with
# ``correct_known_gains=False``); Georgia's 4880/mV is kept as written (not verified either way).
KNOWN_GAIN_ERRORS: dict[tuple[str, float], float] = {("HR", 200.0): 1000.0, ("S", 2000000.0): 2000.0}


def load_dx_mapping(paths: list[Path]) -> dict[str, dict[str, Any]]:
    """SNOMED CT code -> {name, abbreviation, scored} from the Challenge's dx_mapping CSVs."""
    mapping: dict[str, dict[str, Any]] = {}
    for path in paths:
        scored = "unscored" not in path.name
        with path.open(newline="", encoding="utf-8") as handle:
            for line_number, row in enumerate(csv.DictReader(handle), start=2):
                code = (row.get("SNOMED CT Code") or row.get("SNOMEDCTCode") or "").strip()
                if not code:
                    raise ValueError(f"{path}: line {line_number} has no SNOMED CT code")
                mapping.setdefault(code, {
                    "known": True,
                    "name": (row.get("Dx") or "").strip() or None,
                    "abbreviation": (row.get("Abbreviation") or "").strip() or None,
                    "scored": scored,
                })
    return mapping


class CincReader(DatasetReader):
    """CinC 2020/2021 records: SNOMED CT Dx codes, native rate, no free text."""

    name: ClassVar[str] = "cinc"
    description: ClassVar[str] = (
        "PhysioNet/CinC Challenge 2020/2021 format (CPSC, Georgia, PTB, INCART, Chapman-Shaoxing, "
        "Ningbo): WFDB header + MATLAB v4 .mat, SNOMED CT diagnoses"
    )
    label_vocabulary: ClassVar[str] = "snomed"
    correct_known_gains: bool = True  # class default too, for instances built by for_record

    def __init__(
        self,
        root: str | Path,
        *,
        dx_mapping: list[str | Path] | None = None,
        correct_known_gains: bool = True,
        allow_missing_leads: bool = False,
    ):
        """``dx_mapping``: the dx_mapping CSVs when they are not in ``root``."""
        super().__init__(root, allow_missing_leads=allow_missing_leads)
        self.correct_known_gains = correct_known_gains
        paths = [Path(p) for p in dx_mapping] if dx_mapping else [self.root / n for n in DX_MAPPING_FILES]
        absent = [str(p) for p in paths if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"cinc: SNOMED mapping file(s) {absent} not found; pass dx_mapping=[...]")
        self.dx_mapping_paths = paths
        self.snomed = load_dx_mapping(paths)

    @classmethod
    def for_record(
        cls, header: str | Path, *, dx_mapping: list[str | Path] | None = None, correct_known_gains: bool = True
    ) -> CincReader:
        """A reader over the single record ``header`` (.hea) without scanning its folder.

        The dx_mapping CSVs are taken from ``dx_mapping`` or from next to the header; when
        neither exists the codes are still read, with ``label_info`` marking them unknown.
        """
        header = Path(header).with_suffix(".hea")
        paths = [Path(p) for p in dx_mapping] if dx_mapping else [header.parent / n for n in DX_MAPPING_FILES]
        reader = cls.__new__(cls)
        DatasetReader.__init__(reader, header.parent)
        reader.correct_known_gains = correct_known_gains
        reader.dx_mapping_paths = [p for p in paths if p.is_file()]
        reader.snomed = load_dx_mapping(reader.dx_mapping_paths)
        reader.__dict__["_headers"] = {header.stem: header}
        return reader

    @cached_property
    def _headers(self) -> dict[str, Path]:
        headers: dict[str, Path] = {}
        for path in sorted(self.root.rglob("*.hea")):
            record_id = path.stem
            if record_id in headers:
                record_id = str(path.relative_to(self.root).with_suffix(""))
            headers[record_id] = path
        return headers

    def record_ids(self) -> list[str]:
        return list(self._headers)

    def signal_path(self, record_id: str) -> Path | None:
        header = self._headers.get(record_id)
        return header.with_suffix("").resolve() if header is not None else None

    def _header(self, record_id: str) -> tuple[Path, WfdbHeader]:
        path = self._headers.get(record_id)
        if path is None:
            raise RecordError(record_id, f"no header {record_id}.hea under {self.root}")
        import wfdb

        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            raise RecordError(record_id, f"cannot read header: {err}") from err
        # wfdb.rdheader silently reads a gain of 0 (or none) as its default 200/mV; the shared parser
        # refuses both, so run it first (its RecordError names the lead) before trusting wfdb's values
        parsed = parse_wfdb_header(text, record_id)
        try:
            header = wfdb.rdheader(str(path.with_suffix("")))
            return path, WfdbHeader(
                n_sig=int(header.n_sig), fs=float(header.fs), sig_len=int(header.sig_len or 0),
                file_names=list(header.file_name), fmts=[str(f) for f in header.fmt],
                gains=[float(g) for g in header.adc_gain], baselines=[int(b) for b in header.baseline],
                units=[u or "mV" for u in (header.units or ["mV"] * header.n_sig)],
                lead_names=list(header.sig_name), comments=list(header.comments or []), parser="wfdb",
            )
        except (ValueError, TypeError, IndexError):  # wfdb rejects some valid CinC headers
            parsed.parser = "fallback"
            return path, parsed

    def read_metadata(self, record_id: str) -> ECGRecord:
        path, header = self._header(record_id)
        return self._metadata(record_id, path, header)

    def _metadata(self, record_id: str, path: Path, header: WfdbHeader) -> ECGRecord:
        info = comment_fields(header.comments)
        labels: dict[str, float] = {}
        for code in (info.get("dx") or "").split(","):
            if code.strip():
                labels[code.strip()] = 100.0
        label_info = {
            code: dict(self.snomed.get(code) or {"known": False, "name": None, "abbreviation": None, "scored": False})
            for code in labels
        }
        prefix = re.match(r"[A-Za-z]+", record_id)
        extra: dict[str, Any] = {"header_parser": header.parser, "header": path.name}
        if prefix and prefix.group(0) in _SOURCES:
            extra["source"] = _SOURCES[prefix.group(0)]
        for key in ("rx", "hx", "sx"):
            if info.get(key) and info[key].lower() != "unknown":
                extra[key] = info[key]
        return ECGRecord(
            record_id=record_id,
            dataset=self.name,
            signal=None,
            sampling_rate=header.fs,
            age=parse_age(info.get("age")),
            sex=parse_sex(info.get("sex")),
            labels=labels,
            label_vocabulary=self.label_vocabulary,
            label_info=label_info,
            extra=extra,
        )

    def read(self, record_id: str) -> ECGRecord:
        path, header = self._header(record_id)
        record = self._metadata(record_id, path, header)
        files = set(header.file_names)
        if len(files) != 1:
            raise RecordError(record_id, f"expected one signal file, header names {sorted(files)}")
        mat_path = signal_file(record_id, path.parent, files.pop())
        if not mat_path.is_file():
            raise RecordError(record_id, f"signal file missing: {mat_path.name}")
        content = load_matlab(record_id, mat_path)
        if "val" not in content:
            raise RecordError(record_id, f"{mat_path.name} has no 'val' variable")
        digital = np.asarray(content["val"])
        if digital.ndim != 2 or not np.issubdtype(digital.dtype, np.number):
            raise RecordError(record_id, f"'val' in {mat_path.name} is not a 2-D numeric array")
        if digital.shape[0] != header.n_sig:
            raise RecordError(
                record_id, f"wrong lead count: header has {header.n_sig} leads, {mat_path.name} has {digital.shape[0]}"
            )
        if header.sig_len and digital.shape[1] != header.sig_len:
            raise RecordError(
                record_id,
                f"header/signal length mismatch: header says {header.sig_len} samples, "
                f"{mat_path.name} has {digital.shape[1]}",
            )
        gains_list = list(header.gains)
        prefix = re.match(r"[A-Za-z]+", record_id)
        if self.correct_known_gains and prefix:
            fixes = {g: KNOWN_GAIN_ERRORS.get((prefix.group(0), g)) for g in set(gains_list)}
            fixes = {wrong: right for wrong, right in fixes.items() if right is not None}
            if fixes:
                gains_list = [fixes.get(g, g) for g in gains_list]
                record.extra["gain_corrected"] = {f"{wrong:g}": right for wrong, right in fixes.items()}
        gains = np.asarray(gains_list, dtype=np.float64)[:, None]
        baselines = np.asarray(header.baselines, dtype=np.float64)[:, None]
        factors = mv_factors(record_id, header.units)[:, None]
        physical = ((digital.astype(np.float64) - baselines) / gains * factors).astype(np.float32)
        self._attach_signal(record, physical, header.lead_names)
        return record

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "dx_mapping": [str(p.resolve()) for p in self.dx_mapping_paths],
            "correct_known_gains": self.correct_known_gains,
        }
