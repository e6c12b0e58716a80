"""Bad input: real records copied to tmp_path and corrupted there must give a RecordError that
names the record and the reason (or a recorded skip in batch mode), never a raw traceback."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import wfdb

from corpora.__main__ import main
from corpora.base import RecordError, Skip
from corpora.cinc import CincReader
from corpora.cpsc2018 import CPSC2018Reader
from corpora.mimic import MimicReader
from corpora.ptbxl import PTBXLReader
from corpora.synthetic import make_cpsc2018, make_mimic

N_ROWS = 6


@pytest.fixture
def ptbxl_copy(ptbxl_subset) -> Path:
    """The first rows of ptbxl-mini with their 100 Hz files, in the official layout."""
    return ptbxl_subset(N_ROWS)[0]


def _files(root: Path, record_id: str) -> Path:
    return root / "records100" / "00000" / f"{int(record_id):05d}_lr"


def _edit_csv(root: Path, record_id: str, column: str, value: str) -> None:
    path = root / "ptbxl_database.csv"
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    index = rows[0].index(column)
    for row in rows[1:]:
        if row[0] == record_id:
            row[index] = value
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def _rewrite(base: Path, transform) -> None:
    """Rewrite a real record through wfdb.wrsamp after ``transform(signal, names)``."""
    signal, fields = wfdb.rdsamp(str(base))
    signal, names = transform(signal.copy(), list(fields["sig_name"]))
    wfdb.wrsamp(base.name, fs=fields["fs"], units=["mV"] * len(names), sig_name=names, p_signal=signal,
                fmt=["16"] * len(names), adc_gain=[1000.0] * len(names), baseline=[0] * len(names),
                write_dir=str(base.parent))


def _batch(reader) -> tuple[list[str], list[Skip]]:
    skipped: list[Skip] = []
    return [r.record_id for r in reader.iter_records(skipped)], skipped


def test_truncated_dat(ptbxl_copy) -> None:
    dat = _files(ptbxl_copy, "2").with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:5000])
    with pytest.raises(RecordError, match=r"^2: header/signal length mismatch \(truncated or corrupt\)") as info:
        PTBXLReader(ptbxl_copy).read("2")
    assert info.value.record_id == "2"
    read, skipped = _batch(PTBXLReader(ptbxl_copy))
    assert "2" not in read and len(read) == N_ROWS - 1
    assert [s.record for s in skipped] == ["2"] and "truncated" in skipped[0].reason


def test_corrupt_dat_of_the_right_size_still_reads_but_longer_dat_is_rejected(ptbxl_copy) -> None:
    dat = _files(ptbxl_copy, "3").with_suffix(".dat")
    dat.write_bytes(dat.read_bytes() + b"\x00\x01" * 12)
    with pytest.raises(RecordError, match="longer than its header says"):
        PTBXLReader(ptbxl_copy).read("3")


def test_missing_dat(ptbxl_copy) -> None:
    _files(ptbxl_copy, "4").with_suffix(".dat").unlink()
    with pytest.raises(RecordError, match=r"signal file missing at 100 Hz: records100/00000/00004_lr\.dat"):
        PTBXLReader(ptbxl_copy).read("4")


def test_header_length_mismatch(ptbxl_copy) -> None:
    header = _files(ptbxl_copy, "5").with_suffix(".hea")
    lines = header.read_text().splitlines()
    lines[0] = lines[0].replace(" 1000", " 1200")
    header.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match="header says 1200 samples x 12 leads"):
        PTBXLReader(ptbxl_copy).read("5")


def test_header_format_that_does_not_match_the_bytes(ptbxl_copy) -> None:
    header = _files(ptbxl_copy, "5").with_suffix(".hea")
    original = header.read_text()
    header.write_text(original.replace(" 16 ", " 212 ", 1))
    with pytest.raises(RecordError, match=r"^5: signals in 00005_lr.dat have different formats \['16', '212'\]"):
        PTBXLReader(ptbxl_copy).read("5")
    header.write_text(original.replace(".dat 16 ", ".dat 212 "))  # goes through wfdb, which would read garbage
    with pytest.raises(RecordError, match="^5: header/signal length mismatch"):
        PTBXLReader(ptbxl_copy).read("5")


def test_wrong_lead_count_and_allow_missing_leads(ptbxl_copy) -> None:
    _rewrite(_files(ptbxl_copy, "1"), lambda s, n: (s[:, :11], n[:11]))
    with pytest.raises(RecordError, match="missing or empty leads: V6 absent"):
        PTBXLReader(ptbxl_copy).read("1")
    record = PTBXLReader(ptbxl_copy, allow_missing_leads=True).read("1")
    assert record.missing_leads == ["V6"] and record.extra["zero_filled_leads"] == ["V6"]
    assert not record.signal[11].any() and record.signal[10].any()


def test_all_nan_and_flat_leads(ptbxl_copy) -> None:
    def spoil(signal: np.ndarray, names: list[str]):
        signal[:, names.index("V2")] = np.nan
        signal[:, names.index("V3")] = 0.25
        return signal, names

    _rewrite(_files(ptbxl_copy, "6"), spoil)
    with pytest.raises(RecordError, match="V2 all-NaN, V3 flat"):
        PTBXLReader(ptbxl_copy).read("6")
    record = PTBXLReader(ptbxl_copy, allow_missing_leads=True).read("6")
    assert record.missing_leads == ["V2", "V3"]
    assert np.isfinite(record.signal).all()


def test_unknown_lead_name(ptbxl_copy) -> None:
    header = _files(ptbxl_copy, "2").with_suffix(".hea")
    header.write_text(header.read_text().replace(" V4\n", " X4\n"))
    with pytest.raises(RecordError, match="unknown lead name 'X4'"):
        PTBXLReader(ptbxl_copy).read("2")


@pytest.mark.parametrize(
    ("value", "message"),
    [("{'NORM': 100.0", "unparseable scp_codes"), ("[1, 2]", "not a dict"), ("{'NORM': 'high'}", "not a dict"),
     ("__import__('os')", "unparseable scp_codes")],
)
def test_unparseable_scp_codes(ptbxl_copy, value, message) -> None:
    _edit_csv(ptbxl_copy, "3", "scp_codes", value)
    with pytest.raises(RecordError, match=message):
        PTBXLReader(ptbxl_copy).read_metadata("3")
    _, skipped = _batch(PTBXLReader(ptbxl_copy))
    assert [s.record for s in skipped] == ["3"]


def test_unknown_codes_are_kept_and_flagged(ptbxl_copy) -> None:
    _edit_csv(ptbxl_copy, "2", "scp_codes", "{'NORM': 80.0, 'XYZ': 0.0}")
    record = PTBXLReader(ptbxl_copy).read("2")
    assert record.labels == {"NORM": 80.0, "XYZ": 0.0}
    assert record.label_info["XYZ"]["known"] is False and record.label_info["NORM"]["known"] is True


def test_bad_field_values(ptbxl_copy) -> None:
    _edit_csv(ptbxl_copy, "4", "age", "old")
    _edit_csv(ptbxl_copy, "5", "strat_fold", "x")
    _edit_csv(ptbxl_copy, "6", "age", "300")
    with pytest.raises(RecordError, match="age 'old' is not a number"):
        PTBXLReader(ptbxl_copy).read_metadata("4")
    with pytest.raises(RecordError, match="strat_fold 'x'"):
        PTBXLReader(ptbxl_copy).read_metadata("5")
    censored = PTBXLReader(ptbxl_copy).read_metadata("6")
    assert censored.age == 90.0 and censored.extra["age_censored"] is True


def test_malformed_csv_rows_are_skips_in_the_summary(ptbxl_copy, capsys) -> None:
    path = ptbxl_copy / "ptbxl_database.csv"
    lines = path.read_text().splitlines()
    lines.insert(3, "99,1.0,2.0")  # too few fields
    lines.append("abc," + ",".join([""] * 27))  # right width, bad ecg_id
    path.write_text("\n".join(lines) + "\n")
    reader = PTBXLReader(ptbxl_copy)
    with pytest.raises(RecordError, match="malformed CSV row at line 4: 3 fields, expected 28"):
        reader.read("99")
    assert main(["summary", "--dataset", "ptbxl", "--root", str(ptbxl_copy), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == N_ROWS + 2 and summary["readable"] == N_ROWS
    reasons = {s["record"]: s["reason"] for s in summary["skipped"]}
    assert "malformed CSV row" in reasons["99"] and "not a number" in next(v for k, v in reasons.items() if k != "99")


def test_summary_survives_every_corruption_at_once(ptbxl_copy, capsys) -> None:
    _files(ptbxl_copy, "1").with_suffix(".dat").write_bytes(b"")
    _files(ptbxl_copy, "2").with_suffix(".hea").write_text("garbage\n")
    _edit_csv(ptbxl_copy, "3", "scp_codes", "{")
    assert main(["summary", "--dataset", "ptbxl", "--root", str(ptbxl_copy), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["readable"] == N_ROWS - 3
    assert {s["record"] for s in summary["skipped"]} == {"1", "2", "3"}


# --- CinC ---------------------------------------------------------------------------------------

@pytest.fixture
def cinc_copy(tmp_path: Path, cinc_root: Path) -> Path:
    root = tmp_path / "cinc"
    root.mkdir()
    for name in ("dx_mapping_scored.csv", "dx_mapping_unscored.csv"):
        shutil.copy(cinc_root / name, root)
    for record in ("A0002", "E00003", "S0002", "Q0002"):
        for suffix in (".hea", ".mat"):
            shutil.copy(cinc_root / f"{record}{suffix}", root)
    return root


def test_cinc_truncated_mat(cinc_copy) -> None:
    mat = cinc_copy / "A0002.mat"
    mat.write_bytes(mat.read_bytes()[:2000])
    with pytest.raises(RecordError, match=r"^A0002: corrupt or truncated A0002\.mat"):
        CincReader(cinc_copy).read("A0002")
    read, skipped = _batch(CincReader(cinc_copy))
    assert sorted(read) == ["E00003", "Q0002", "S0002"] and skipped[0].record == "A0002"


def test_cinc_missing_mat_and_missing_val(cinc_copy) -> None:
    (cinc_copy / "Q0002.mat").unlink()
    with pytest.raises(RecordError, match="signal file missing: Q0002.mat"):
        CincReader(cinc_copy).read("Q0002")
    scipy.io.savemat(str(cinc_copy / "A0002.mat"), {"other": np.zeros((12, 10))}, format="4")
    with pytest.raises(RecordError, match="has no 'val' variable"):
        CincReader(cinc_copy).read("A0002")


def test_cinc_length_and_lead_count_mismatch(cinc_copy) -> None:
    header = cinc_copy / "E00003.hea"  # a Georgia header: goes through the fallback parser
    lines = header.read_text().splitlines()
    fields = lines[0].split()
    fields[3] = str(int(fields[3]) + 7)
    header.write_text("\n".join([" ".join(fields), *lines[1:]]) + "\n")
    with pytest.raises(RecordError, match="header/signal length mismatch: header says"):
        CincReader(cinc_copy).read("E00003")
    val = scipy.io.loadmat(str(cinc_copy / "S0002.mat"))["val"]
    scipy.io.savemat(str(cinc_copy / "S0002.mat"), {"val": val[:11]}, format="4")
    with pytest.raises(RecordError, match="wrong lead count: header has 12 leads, S0002.mat has 11"):
        CincReader(cinc_copy).read("S0002")


def test_cinc_bad_header_and_unknown_snomed_code(cinc_copy) -> None:
    header = cinc_copy / "E00003.hea"
    header.write_text("E00003.mat twelve 500 5000\n")
    with pytest.raises(RecordError, match="bad header record line"):
        CincReader(cinc_copy).read("E00003")
    q = cinc_copy / "Q0002.hea"
    text = q.read_text().splitlines()
    q.write_text("\n".join("#Dx: 999999,164889003" if line.startswith("#Dx") else line for line in text) + "\n")
    record = CincReader(cinc_copy).read("Q0002")
    assert list(record.labels) == ["999999", "164889003"]
    assert record.label_info["999999"]["known"] is False and record.label_info["164889003"]["abbreviation"] == "AF"


# --- MIMIC and CPSC2018 (synthetic fixtures, corrupted) ------------------------------------------

def test_mimic_bad_rows_and_files(tmp_path, mimic_statements) -> None:
    root = make_mimic(tmp_path, mimic_statements, n_records=4, seed=2)
    rows = list(csv.reader((root / "record_list.csv").open(newline="")))
    first, second, third = rows[1][1], rows[2][1], rows[3][1]
    dat = (root / rows[1][4]).with_suffix(".dat")
    dat.write_bytes(dat.read_bytes()[:100])
    (root / rows[2][4]).with_suffix(".hea").unlink()
    measurements = [r for r in csv.reader((root / "machine_measurements.csv").open(newline="")) if r[1] != third]
    with (root / "machine_measurements.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(measurements)
    with (root / "record_list.csv").open("a", newline="") as handle:
        handle.write("10009999,41111111,files/x\n")
    reader = MimicReader(root)
    read, skipped = _batch(reader)
    reasons = {s.record: s.reason for s in skipped}
    assert len(read) == 1
    assert "truncated" in reasons[first]
    assert "header file missing" in reasons[second]
    assert "no machine_measurements.csv row" in reasons[third]
    assert "malformed record_list.csv row" in reasons["41111111"]


def test_cpsc2018_bad_rows_and_files(tmp_path) -> None:
    root = make_cpsc2018(tmp_path, n_records=5, seed=5)
    with (root / "REFERENCE.csv").open("a", newline="") as handle:
        handle.write("A0099,12,,\nA0098,1\nA0097,3,,\n")
    (root / "A0003.mat").write_bytes(b"MATLAB 5.0 MAT-file, junk")
    scipy.io.savemat(str(root / "A0004.mat"), {"ECG": {"sex": "Male", "age": 50.0}})
    bad_leads = {"sex": "Female", "age": 40.0, "data": np.zeros((8, 3000)) + np.arange(3000)}
    scipy.io.savemat(str(root / "A0005.mat"), {"ECG": bad_leads})
    read, skipped = _batch(CPSC2018Reader(root))
    reasons = {s.record: s.reason for s in skipped}
    assert read == ["A0001", "A0002"]
    assert "label 12 is not one of the classes 1-9" in reasons["A0099"]
    assert "signal file missing: A0097.mat" in reasons["A0097"]
    assert "malformed REFERENCE.csv row" in reasons["A0098"]
    assert "corrupt or truncated" in reasons["A0003"]
    assert "lacks ['data']" in reasons["A0004"]
    assert "wrong lead count" in reasons["A0005"]
    with pytest.raises(RecordError, match="^A0005: wrong lead count"):
        CPSC2018Reader(root).read("A0005")
