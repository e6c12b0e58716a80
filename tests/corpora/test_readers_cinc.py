"""CinC 2020 reader on every record of the shared cinc2020 folder (Georgia and 1000 Hz included)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import wfdb

from corpora.base import STANDARD_LEADS, RecordError, Skip, parse_wfdb_header
from corpora.cinc import KNOWN_GAIN_ERRORS, CincReader
from corpora.ptbxl import PTBXLReader


@pytest.fixture(scope="module")
def cinc(cinc_root: Path) -> tuple[CincReader, dict, list[Skip]]:
    reader = CincReader(cinc_root)
    skipped: list[Skip] = []
    records = {r.record_id: r for r in reader.iter_records(skipped)}
    return reader, records, skipped


def _comment(path: Path, key: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"#{key}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{path} has no #{key}")


def test_every_record_with_a_signal_is_read_and_header_only_ones_are_skips(cinc, cinc_root) -> None:
    _, records, skipped = cinc
    with_signal = {p.stem for p in cinc_root.glob("*.mat")}
    header_only = {p.stem for p in cinc_root.glob("*.hea")} - with_signal
    assert set(records) == with_signal and len(with_signal) == 73
    assert {s.record for s in skipped} == header_only and header_only
    assert all(s.reason.startswith("signal file missing") for s in skipped)


def test_native_rates_and_header_lengths_are_kept(cinc, cinc_root) -> None:
    _, records, _ = cinc
    assert {r.sampling_rate for r in records.values()} == {500.0, 1000.0}
    for record_id, record in records.items():
        first = (cinc_root / f"{record_id}.hea").read_text().splitlines()[0].split()
        assert record.signal.dtype == np.float32
        assert record.signal.shape == (12, int(first[3]))
        assert record.sampling_rate == float(first[2])
    assert all(records[r].sampling_rate == 1000.0 for r in records if r.startswith("S"))


def test_georgia_headers_rejected_by_wfdb_use_the_fallback_parser(cinc, cinc_root) -> None:
    _, records, _ = cinc
    rejected = []
    for record_id in records:
        try:
            wfdb.rdheader(str(cinc_root / record_id))
        except ValueError:
            rejected.append(record_id)
    assert rejected and all(r.startswith("E") for r in rejected)
    for record_id in rejected:
        assert records[record_id].extra["header_parser"] == "fallback"
        digital = scipy.io.loadmat(str(cinc_root / f"{record_id}.mat"))["val"]
        header = parse_wfdb_header((cinc_root / f"{record_id}.hea").read_text(), record_id)
        assert header.lead_names == list(STANDARD_LEADS)
        expected = (digital / np.asarray(header.gains)[:, None]).astype(np.float32)
        np.testing.assert_allclose(records[record_id].signal, expected, rtol=1e-6)


def test_signals_equal_wfdb_where_wfdb_can_read_them(cinc, cinc_root) -> None:
    _, records, _ = cinc
    for record_id in ("A0001", "Q0001", "HR00001", "S0001"):
        expected, fields = wfdb.rdsamp(str(cinc_root / record_id))
        scale = 1.0
        corrected = records[record_id].extra.get("gain_corrected")
        if corrected:
            ((wrong, right),) = corrected.items()
            scale = float(wrong) / right
        assert fields["sig_name"] == list(STANDARD_LEADS)
        np.testing.assert_allclose(records[record_id].signal, (expected.T * scale).astype(np.float32), rtol=1e-6)


def test_known_wrong_gains_are_corrected_and_flagged(cinc, cinc_root, ptbxl_root) -> None:
    reader, records, _ = cinc
    # HR00001 is PTB-XL record 1: after the correction both give the same millivolts.
    hr = records["HR00001"]
    assert hr.extra["gain_corrected"] == {"200": KNOWN_GAIN_ERRORS[("HR", 200.0)]}
    original = PTBXLReader(ptbxl_root, rate=500).read("1").signal
    np.testing.assert_allclose(hr.signal, original, atol=1e-6)
    raw = CincReader(cinc_root, correct_known_gains=False).read("HR00001")
    np.testing.assert_allclose(raw.signal, hr.signal * 5, rtol=1e-5)
    assert "gain_corrected" not in records["A0001"].extra


def test_demographics_and_dx_labels_follow_the_header_comments(cinc, cinc_root) -> None:
    _, records, _ = cinc
    for record_id, record in records.items():
        header = cinc_root / f"{record_id}.hea"
        sex = _comment(header, "Sex").lower()
        assert record.sex == {"m": "male", "male": "male", "f": "female", "female": "female"}[sex]
        age = _comment(header, "Age")
        assert record.age == (None if age.lower() == "nan" else float(age))
        codes = [c.strip() for c in _comment(header, "Dx").split(",") if c.strip()]
        assert list(record.labels) == list(dict.fromkeys(codes))
        assert all(v == 100.0 for v in record.labels.values())
    assert any(r.age is None for r in records.values())
    assert any(not r.labels for r in records.values())  # empty #Dx is not an error


def test_snomed_names_come_from_the_dx_mapping_tables(cinc, cinc_root) -> None:
    _, records, _ = cinc
    table = {}
    for name in ("dx_mapping_scored.csv", "dx_mapping_unscored.csv"):
        with (cinc_root / name).open() as handle:
            for row in csv.DictReader(handle):
                table.setdefault(row["SNOMED CT Code"], (row["Dx"], row["Abbreviation"], "unscored" not in name))
    seen = 0
    for record in records.values():
        for code, info in record.label_info.items():
            seen += 1
            if code in table:
                assert (info["name"], info["abbreviation"], info["scored"]) == table[code] and info["known"]
            else:
                assert info["known"] is False and code in record.labels
    assert seen > 20
    assert records["E00018"].label_info["426177001"]["abbreviation"] == "SB"


def test_missing_dx_mapping_is_a_clear_error(tmp_path, cinc_root) -> None:
    with pytest.raises(FileNotFoundError, match="dx_mapping"):
        CincReader(tmp_path)
    reader = CincReader(tmp_path, dx_mapping=[cinc_root / "dx_mapping_scored.csv"])
    assert reader.record_ids() == []
    with pytest.raises(RecordError, match="no header"):
        reader.read("A0001")


def test_for_record_reads_one_record_with_or_without_the_mapping(tmp_path, cinc_root) -> None:
    reader = CincReader.for_record(cinc_root / "E00018.hea")
    assert reader.record_ids() == ["E00018"]
    record = reader.read("E00018")
    assert record.label_info["426177001"]["abbreviation"] == "SB"
    for suffix in (".hea", ".mat"):
        (tmp_path / f"E00018{suffix}").write_bytes((cinc_root / f"E00018{suffix}").read_bytes())
    alone = CincReader.for_record(tmp_path / "E00018.hea").read("E00018")
    np.testing.assert_array_equal(alone.signal, record.signal)
    assert alone.labels == record.labels and len(alone.labels) == 2
    assert all(info["known"] is False for info in alone.label_info.values())


def test_signal_path_is_the_header_base_of_each_record(cinc, cinc_root) -> None:
    reader = cinc[0]
    assert len(reader.record_ids()) == len(list(cinc_root.rglob("*.hea")))
    for record_id in reader.record_ids():
        path = reader.signal_path(record_id)
        assert path is not None and path.with_suffix(".hea").is_file() and path.name == record_id
    assert reader.signal_path("no-such-record") is None


def test_header_gain_zero_is_a_skip_not_wfdbs_default(tmp_path, cinc_root) -> None:
    """wfdb.rdheader reads a gain of 0 as its default 200/mV (amplitudes 5x off for a 1000/mV record);
    the reader refuses the record instead, naming it."""
    import shutil

    shutil.copy(cinc_root / "A0001.hea", tmp_path / "A0001.hea")
    shutil.copy(cinc_root / "A0001.mat", tmp_path / "A0001.mat")
    for name in ("dx_mapping_scored.csv", "dx_mapping_unscored.csv"):
        shutil.copy(cinc_root / name, tmp_path / name)
    lines = (tmp_path / "A0001.hea").read_text().splitlines()
    fields = lines[1].split()
    fields[2] = "0/mV"
    lines[1] = " ".join(fields)
    (tmp_path / "A0001.hea").write_text("\n".join(lines) + "\n")
    assert float(wfdb.rdheader(str(tmp_path / "A0001")).adc_gain[0]) == 200.0  # what a plain wfdb read would use
    with pytest.raises(RecordError, match="gain") as caught:
        CincReader(tmp_path).read("A0001")
    assert caught.value.record_id == "A0001"
