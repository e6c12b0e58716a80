"""Small synthetic fixtures in the exact on-disk layouts of datasets we cannot ship.

MIMIC-IV-ECG and the original CPSC2018 files are not in ../shared/data, so tests and demos
build look-alikes here: same folder layout, file formats, CSV columns and header conventions,
with ECG-like signals (a beat train of Gaussian P-QRS-T waves projected onto the 12 leads, so
Einthoven's and Goldberger's relations hold) instead of real recordings. MIMIC statements are
real lines passed in by the caller (e.g. from ``mimic-statements/statements.txt``).
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import numpy as np

from .base import STANDARD_LEADS

# (name, offset from R peak in s, amplitude in lead II in mV, width in s)
_WAVES = (("P", -0.18, 0.15, 0.022), ("Q", -0.028, -0.12, 0.009), ("R", 0.0, 1.1, 0.011),
          ("S", 0.028, -0.3, 0.011), ("T", 0.30, 0.32, 0.045))
# Per-wave amplitude factors for lead I (lead II is 1.0) and V1..V6.
_LEAD_I = {"P": 0.5, "Q": 0.6, "R": 0.6, "S": 0.5, "T": 0.6}
_PRECORDIAL = {
    "P": (0.5, 0.6, 0.6, 0.6, 0.6, 0.5),
    "Q": (0.0, 0.0, 0.3, 0.6, 0.8, 0.8),
    "R": (0.2, 0.4, 0.7, 1.2, 1.3, 1.0),
    "S": (3.0, 3.5, 2.2, 1.2, 0.6, 0.3),
    "T": (-0.2, 0.9, 1.1, 1.0, 0.9, 0.7),
}
MIMIC_LEAD_ORDER = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
CPSC_CLASSES = ("Normal", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")


def synthetic_ecg(
    fs: float,
    duration_s: float,
    *,
    heart_rate: float = 70.0,
    rr_jitter: float = 0.03,
    noise_mv: float = 0.01,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A float32 ``(12, T)`` mV beat train in :data:`STANDARD_LEADS` order.

    ``rr_jitter`` is the relative spread of RR intervals (large values mimic an irregular rhythm).
    """
    rng = rng or np.random.default_rng(0)
    n = int(round(fs * duration_s))
    t = np.arange(n) / fs
    beats: list[float] = []
    position = rng.uniform(0.2, 0.6)
    while position < duration_s + 1.0:
        beats.append(position)
        position += max(0.3, 60.0 / heart_rate * (1.0 + rr_jitter * rng.standard_normal()))
    lead_i = np.zeros(n)
    lead_ii = np.zeros(n)
    precordial = np.zeros((6, n))
    for beat in beats:
        for name, offset, amplitude, width in _WAVES:
            shape = amplitude * np.exp(-0.5 * ((t - beat - offset) / width) ** 2)
            lead_ii += shape
            lead_i += _LEAD_I[name] * shape
            precordial += np.outer(_PRECORDIAL[name], shape)
    wander = 0.05 * np.sin(2 * np.pi * 0.15 * t + rng.uniform(0, 2 * np.pi))
    lead_i = lead_i + wander
    lead_ii = lead_ii + wander
    leads = {
        "I": lead_i,
        "II": lead_ii,
        "III": lead_ii - lead_i,
        "aVR": -(lead_i + lead_ii) / 2,
        "aVL": lead_i - lead_ii / 2,
        "aVF": lead_ii - lead_i / 2,
    }
    for index in range(6):
        leads[f"V{index + 1}"] = precordial[index] + wander
    signal = np.stack([leads[lead] for lead in STANDARD_LEADS])
    signal += noise_mv * rng.standard_normal(signal.shape)
    return signal.astype(np.float32)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    """Write a CSV atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", newline="", encoding="utf-8", dir=path.parent,
                                         prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


MACHINE_MEASUREMENT_COLUMNS = (
    ["subject_id", "study_id", "cart_id", "ecg_time"] + [f"report_{i}" for i in range(18)]
    + ["bandwidth", "filtering", "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end", "t_end",
       "p_axis", "qrs_axis", "t_axis"]
)


def make_mimic(
    out: str | Path,
    statements: list[str],
    *,
    n_records: int = 6,
    seed: int = 0,
    with_patients: bool = True,
) -> Path:
    """Write a MIMIC-IV-ECG look-alike under ``out`` and return it.

    Layout: ``record_list.csv``, ``machine_measurements.csv``, ``patients.csv`` (MIMIC-IV
    hosp columns) and ``files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN.{hea,dat}`` written by
    ``wfdb.wrsamp`` at 500 Hz, 10 s, format 16, 200 adu/mV, MIMIC's lead order (aVF before
    aVL). Each record gets 1-4 statements sampled from ``statements``; the first record has a
    short NaN gap in V3 (MIMIC stores such gaps as WFDB missing samples). Subject 0 has two
    studies, so subject ids repeat as in the real data.
    """
    import wfdb

    if not statements:
        raise ValueError("make_mimic needs at least one real statement line")
    out = Path(out)
    rng = np.random.default_rng(seed)
    subjects = [10000032 + 1117 * i for i in range(max(1, n_records - 1))]
    record_rows: list[list[object]] = []
    measurement_rows: list[list[object]] = []
    patient_rows: dict[int, list[object]] = {}
    for index in range(n_records):
        subject = subjects[max(0, index - 1)]
        study = 40000000 + int(rng.integers(0, 9_999_999))
        year = 2150 + int(rng.integers(0, 30))
        ecg_time = f"{year}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d} {rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}:00"
        relative = Path("files") / f"p{str(subject)[:4]}" / f"p{subject}" / f"s{study}"
        folder = out / relative
        folder.mkdir(parents=True, exist_ok=True)
        signal = synthetic_ecg(500, 10.0, heart_rate=float(rng.uniform(50, 110)), rng=rng).astype(np.float64)
        if index == 0:
            signal[STANDARD_LEADS.index("V3"), 1200:1300] = np.nan
        order = [STANDARD_LEADS.index(lead) for lead in MIMIC_LEAD_ORDER]
        wfdb.wrsamp(
            str(study), fs=500, units=["mV"] * 12, sig_name=list(MIMIC_LEAD_ORDER),
            p_signal=signal[order].T, fmt=["16"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12,
            write_dir=str(folder),
        )
        chosen = list(rng.choice(len(statements), size=int(rng.integers(1, 5)), replace=False))
        reports = [statements[i] for i in chosen] + [""] * (18 - len(chosen))
        record_rows.append([subject, study, str(relative / str(study)), ecg_time, str(relative / str(study))])
        measurement_rows.append(
            [subject, study, 6848 + index, ecg_time, *reports, "0.005-150 Hz", "60 Hz notch Baseline filter",
             int(rng.integers(600, 1100)), 40, 128, 168, 260, 532, 60, 40, 55]
        )
        if subject not in patient_rows:
            patient_rows[subject] = [subject, "M" if rng.random() < 0.5 else "F", int(rng.integers(20, 90)),
                                     year - int(rng.integers(0, 5)), "2011 - 2013", ""]
    _write_csv(out / "record_list.csv", ["subject_id", "study_id", "file_name", "ecg_time", "path"], record_rows)
    _write_csv(out / "machine_measurements.csv", list(MACHINE_MEASUREMENT_COLUMNS), measurement_rows)
    if with_patients:
        _write_csv(out / "patients.csv", ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group",
                                          "dod"], list(patient_rows.values()))
    return out


def make_cpsc2018(out: str | Path, *, n_records: int = 6, seed: int = 0) -> Path:
    """Write a CPSC2018 (ICBEB) TrainingSet look-alike under ``out`` and return it.

    ``A0001.mat`` ... hold a struct ``ECG`` with ``sex`` ("Male"/"Female"), ``age`` and
    ``data`` (12, T) in mV at 500 Hz, leads I..V6, 6-15 s long, as in the original release;
    ``REFERENCE.csv`` has Recording,First_label,Second_label,Third_label with classes 1-9
    (Normal, AF, I-AVB, LBBB, RBBB, PAC, PVC, STD, STE). Record 2 carries two labels.
    """
    import scipy.io

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows: list[list[object]] = []
    for index in range(n_records):
        name = f"A{index + 1:04d}"
        first = index % len(CPSC_CLASSES) + 1
        jitter = 0.25 if first == 2 else 0.03  # AF: irregular RR
        duration = float(rng.integers(6, 16))
        data = synthetic_ecg(500, duration, heart_rate=float(rng.uniform(55, 100)), rr_jitter=jitter, rng=rng)
        struct = {"sex": "Male" if index % 2 == 0 else "Female", "age": float(rng.integers(18, 90)),
                  "data": data.astype(np.float64)}
        target = out / f"{name}.mat"
        temporary = out / f".{name}.tmp.mat"
        scipy.io.savemat(str(temporary), {"ECG": struct})
        os.replace(temporary, target)
        labels: list[object] = [first, "", ""]
        if index == 1:
            labels = [first, 8, ""]
        rows.append([name, *labels])
    _write_csv(out / "REFERENCE.csv", ["Recording", "First_label", "Second_label", "Third_label"], rows)
    return out
