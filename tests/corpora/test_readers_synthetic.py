"""MIMIC-IV-ECG and CPSC2018 readers on synthetic fixtures built in tmp_path in the exact layouts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from corpora.base import STANDARD_LEADS, Skip
from corpora.cpsc2018 import CPSC2018Reader
from corpora.mimic import REPORT_COLUMNS, MimicReader
from corpora.registry import READERS, get_reader, list_readers
from corpora.synthetic import make_cpsc2018, make_mimic, synthetic_ecg

LEAD = {lead: i for i, lead in enumerate(STANDARD_LEADS)}
CLASS_ORDER = ("Normal", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")  # CPSC2018 classes 1-9


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory, mimic_statements) -> Path:
    return make_mimic(tmp_path_factory.mktemp("mimic"), mimic_statements, n_records=6, seed=3)


@pytest.fixture(scope="module")
def cpsc_root(tmp_path_factory) -> Path:
    return make_cpsc2018(tmp_path_factory.mktemp("cpsc"), n_records=9, seed=4)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_mimic_layout_matches_the_release(mimic_root) -> None:
    records = _rows(mimic_root / "record_list.csv")
    assert list(records[0]) == ["subject_id", "study_id", "file_name", "ecg_time", "path"]
    for row in records:
        path = mimic_root / row["path"]
        subject, study = row["subject_id"], row["study_id"]
        assert path.parts[-4:] == (f"p{subject[:4]}", f"p{subject}", f"s{study}", study)
        assert path.with_suffix(".hea").is_file() and path.with_suffix(".dat").is_file()
    header = (mimic_root / records[0]["path"]).with_suffix(".hea").read_text().splitlines()
    assert header[0].split()[1:4] == ["12", "500", "5000"]
    assert [line.split()[-1] for line in header[1:13]][3:6] == ["aVR", "aVF", "aVL"]


def test_mimic_reader_labels_reports_and_demographics(mimic_root, mimic_statements) -> None:
    reader = MimicReader(mimic_root)
    skipped: list[Skip] = []
    records = list(reader.iter_records(skipped))
    assert skipped == [] and len(records) == 6
    measurements = {row["study_id"]: row for row in _rows(mimic_root / "machine_measurements.csv")}
    patients = {row["subject_id"]: row for row in _rows(mimic_root / "patients.csv")}
    vocabulary = set(mimic_statements)
    for record in records:
        lines = [measurements[record.record_id][c] for c in REPORT_COLUMNS if measurements[record.record_id][c]]
        assert list(record.labels) == lines and set(lines) <= vocabulary
        assert record.report == "\n".join(lines)
        assert record.label_vocabulary == "mimic_statement"
        patient = patients[record.subject_id]
        year = int(record.extra["ecg_time"][:4])
        assert record.age == float(patient["anchor_age"]) + year - int(patient["anchor_year"])
        assert record.sex == {"M": "male", "F": "female"}[patient["gender"]]
        assert record.signal.shape == (12, 5000) and record.sampling_rate == 500.0
    assert len({r.subject_id for r in records}) < len(records)  # a subject with two studies


def test_mimic_leads_are_reordered_to_the_standard_order(mimic_root) -> None:
    record = MimicReader(mimic_root).read(_rows(mimic_root / "record_list.csv")[1]["study_id"])
    s = record.signal.astype(np.float64)

    def rms(x: np.ndarray) -> float:
        return float(np.sqrt(np.mean(x**2)))

    # Goldberger: aVF = II - I/2 and aVL = I - II/2 up to the per-lead noise (0.01 mV) and
    # quantisation; with aVL/aVF left in MIMIC's file order the residual is several times larger.
    avf, avl = s[LEAD["II"]] - s[LEAD["I"]] / 2, s[LEAD["I"]] - s[LEAD["II"]] / 2
    assert rms(s[LEAD["aVF"]] - avf) < 0.02 and rms(s[LEAD["aVL"]] - avl) < 0.02
    assert rms(s[LEAD["aVL"]] - avf) > 5 * rms(s[LEAD["aVF"]] - avf)
    assert rms(s[LEAD["III"]] - (s[LEAD["II"]] - s[LEAD["I"]])) < 0.02


def test_mimic_nan_gap_is_kept_for_preprocessing_to_handle(mimic_root) -> None:
    first = _rows(mimic_root / "record_list.csv")[0]["study_id"]
    signal = MimicReader(mimic_root).read(first).signal
    nan_rows = {int(i) for i in np.where(np.isnan(signal).any(axis=1))[0]}
    assert nan_rows == {LEAD["V3"]} and np.isnan(signal).sum() == 100


def test_mimic_without_patients_has_no_demographics(tmp_path, mimic_statements) -> None:
    root = make_mimic(tmp_path, mimic_statements, n_records=2, seed=1, with_patients=False)
    record = next(iter(MimicReader(root)))
    assert record.age is None and record.sex is None and record.labels
    with pytest.raises(FileNotFoundError, match="patients"):
        MimicReader(root, patients=tmp_path / "nope.csv")


def test_cpsc2018_fixture_is_the_original_mat_struct(cpsc_root) -> None:
    content = scipy.io.loadmat(str(cpsc_root / "A0001.mat"))
    struct = content["ECG"][0, 0]
    assert set(struct.dtype.names) == {"sex", "age", "data"}
    assert struct["data"].shape[0] == 12 and 6 * 500 <= struct["data"].shape[1] <= 15 * 500
    assert list(_rows(cpsc_root / "REFERENCE.csv")[0]) == ["Recording", "First_label", "Second_label", "Third_label"]


def test_cpsc2018_reader(cpsc_root) -> None:
    reader = CPSC2018Reader(cpsc_root)
    records = {r.record_id: r for r in reader}
    reference = {row["Recording"]: row for row in _rows(cpsc_root / "REFERENCE.csv")}
    assert set(records) == set(reference)
    for record_id, record in records.items():
        struct = scipy.io.loadmat(str(cpsc_root / f"{record_id}.mat"))["ECG"][0, 0]
        np.testing.assert_array_equal(record.signal, struct["data"].astype(np.float32))
        assert record.sampling_rate == 500.0
        assert record.sex == str(struct["sex"][0]).lower()
        assert record.age == float(struct["age"][0, 0])
        numbers = [int(reference[record_id][c]) for c in ("First_label", "Second_label", "Third_label")
                   if reference[record_id][c]]
        assert list(record.labels) == [CLASS_ORDER[n - 1] for n in numbers]
        assert [record.label_info[k]["class"] for k in record.labels] == numbers
    assert list(records["A0002"].labels) == ["AF", "STD"]


def test_synthetic_signal_looks_like_an_ecg() -> None:
    fs = 500
    signal = synthetic_ecg(fs, 10.0, heart_rate=75.0, rr_jitter=0.0, noise_mv=0.0)
    lead_ii = signal[LEAD["II"]]
    peaks = np.where((lead_ii[1:-1] > lead_ii[:-2]) & (lead_ii[1:-1] >= lead_ii[2:]) & (lead_ii[1:-1] > 0.6))[0]
    rr = np.diff(peaks) / fs
    assert len(peaks) in (12, 13) and np.allclose(rr, 60 / 75, atol=0.01)
    assert 0.8 < lead_ii.max() < 1.5 and signal[LEAD["V1"]].min() < -0.5  # tall R in II, deep S in V1


def test_registry_builds_every_reader(mimic_root, cpsc_root, ptbxl_root, cinc_root) -> None:
    roots = {"ptbxl": ptbxl_root, "mimic": mimic_root, "cinc": cinc_root, "cpsc2018": cpsc_root}
    assert set(READERS) == set(roots)
    assert [d["name"] for d in list_readers()] == list(READERS)
    for name, root in roots.items():
        reader = get_reader(name, root)
        assert reader.name == name and reader.describe()["label_vocabulary"] == READERS[name].label_vocabulary
    with pytest.raises(ValueError, match="unknown dataset"):
        get_reader("ludb", ptbxl_root)
