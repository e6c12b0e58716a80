"""PTB-XL reader on the real ptbxl-mini subset (100 and 500 Hz) and the metadata-only CSV."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from corpora.base import STANDARD_LEADS, RecordError, Skip
from corpora.ptbxl import PTBXLReader


@pytest.fixture(scope="module")
def database(ptbxl_root: Path) -> pd.DataFrame:
    return pd.read_csv(ptbxl_root / "ptbxl_database.csv", index_col="ecg_id")


@pytest.fixture(scope="module")
def records_100(ptbxl_root: Path) -> tuple[list, list[Skip]]:
    skipped: list[Skip] = []
    return list(PTBXLReader(ptbxl_root, rate=100).iter_records(skipped)), skipped


def test_every_100hz_record_is_read_as_12_by_1000_float32(records_100, database) -> None:
    records, skipped = records_100
    assert skipped == []
    assert len(records) == len(database) == 1025
    assert [r.record_id for r in records] == [str(i) for i in database.index]
    for record in records:
        assert record.signal.shape == (12, 1000)
        assert record.signal.dtype == np.float32
        assert record.sampling_rate == 100.0
        assert np.isfinite(record.signal).all()
        assert record.missing_leads == []


def test_fields_match_the_database_row(records_100, database) -> None:
    records, _ = records_100
    for record in records[::50]:
        row = database.loc[int(record.record_id)]
        assert record.dataset == "ptbxl"
        assert record.subject_id == str(int(row.patient_id))
        assert record.age == (None if pd.isna(row.age) else row.age)
        assert record.sex == ("male" if row.sex == 0 else "female")
        assert record.fold == row.strat_fold
        assert record.report == (None if pd.isna(row.report) else row.report.strip())
        assert record.labels == {k: float(v) for k, v in ast.literal_eval(row.scp_codes).items()}
        assert record.label_vocabulary == "scp"


def test_zero_likelihoods_are_kept_and_label_info_joins_scp_statements(records_100, ptbxl_root) -> None:
    statements = pd.read_csv(ptbxl_root / "scp_statements.csv", index_col=0)
    first = records_100[0][0]
    assert first.labels == {"NORM": 100.0, "LVOLT": 0.0, "SR": 0.0}
    for code, info in first.label_info.items():
        row = statements.loc[code]
        assert info["known"] is True
        assert info["description"] == row.description
        assert info["statement_category"] == row["Statement Category"]
        assert info["diagnostic"] == (row.diagnostic == 1.0)
        assert info["form"] == (row.form == 1.0)
        assert info["rhythm"] == (row.rhythm == 1.0)
        assert info["diagnostic_class"] == (None if pd.isna(row.diagnostic_class) else row.diagnostic_class)
        assert info["diagnostic_subclass"] == (None if pd.isna(row.diagnostic_subclass) else row.diagnostic_subclass)
    assert first.label_info["NORM"]["diagnostic_class"] == "NORM"
    assert first.label_info["SR"]["rhythm"] is True


@pytest.mark.parametrize("rate", [100, 500])
def test_signal_equals_wfdb_in_standard_lead_order(ptbxl_root, rate) -> None:
    """The fast format-16 path must give wfdb.rdsamp's values exactly (float32 of the same float64)."""
    reader = PTBXLReader(ptbxl_root, rate=rate)
    column = "filename_lr" if rate == 100 else "filename_hr"
    checked = 0
    for record in list(reader.iter_records([]))[::40]:
        expected, fields = wfdb.rdsamp(str(ptbxl_root / record.extra[column]))
        names = [n.upper() for n in fields["sig_name"]]
        order = [names.index(lead.upper()) for lead in STANDARD_LEADS]
        np.testing.assert_array_equal(record.signal, expected[:, order].T.astype(np.float32))
        checked += 1
    assert checked >= 10


def test_500hz_reads_the_records500_subset_and_records_every_other_row_as_a_skip(ptbxl_root, database) -> None:
    reader = PTBXLReader(ptbxl_root, rate=500)
    skipped: list[Skip] = []
    records = list(reader.iter_records(skipped))
    with_hr = database.filename_hr.notna()
    assert len(records) == int(with_hr.sum()) == 422
    assert len(skipped) == 1025 - 422
    assert {s.record for s in skipped} == {str(i) for i in database.index[~with_hr]}
    assert all("500 Hz" in s.reason for s in skipped)
    assert all(r.signal.shape == (12, 5000) and r.sampling_rate == 500.0 for r in records)
    # Same recording at both rates: the 100 Hz file is a decimated copy of the 500 Hz one.
    low = PTBXLReader(ptbxl_root, rate=100).read(records[0].record_id).signal
    assert np.corrcoef(low[1], records[0].signal[1, ::5])[0, 1] > 0.95


def test_metadata_only_csv_gives_captions_without_signals(shared_data, ptbxl_root) -> None:
    csv_path = shared_data / "ptbxl-text" / "ptbxl_database_textonly.csv"
    with pytest.raises(FileNotFoundError, match="scp_statements"):
        PTBXLReader(csv_path)
    reader = PTBXLReader(csv_path, scp_statements=ptbxl_root / "scp_statements.csv")
    rows = pd.read_csv(csv_path)
    records = list(reader.iter_records(metadata_only=True))
    assert len(records) == len(rows) == 8647
    assert all(r.signal is None and r.labels for r in records)
    assert sum(r.report is not None for r in records) == int(rows.report.notna().sum())
    assert all(info["known"] for r in records for info in r.label_info.values())
    with pytest.raises(RecordError, match="signal file missing"):
        reader.read(records[0].record_id)


def test_directory_root_also_serves_metadata_without_touching_signals(ptbxl_root) -> None:
    record = PTBXLReader(ptbxl_root, rate=500).read_metadata("501")
    assert record.signal is None and record.labels


def test_bad_rate_is_rejected(ptbxl_root) -> None:
    with pytest.raises(ValueError, match="100 or 500"):
        PTBXLReader(ptbxl_root, rate=250)


def test_signal_path_names_the_wfdb_record_of_the_chosen_rate(ptbxl_root, database) -> None:
    low, high = PTBXLReader(ptbxl_root, rate=100), PTBXLReader(ptbxl_root, rate=500)
    with_500 = database[database["filename_hr"].fillna("") != ""]
    rid, row = str(with_500.index[0]), with_500.iloc[0]
    assert low.signal_path(rid) == (ptbxl_root / row["filename_lr"]).resolve()
    assert high.signal_path(rid) == (ptbxl_root / row["filename_hr"]).resolve()
    assert wfdb.rdheader(str(high.signal_path(rid))).fs == 500
    without_500 = str(database[database["filename_hr"].fillna("") == ""].index[0])
    assert high.signal_path(without_500) is None
    with pytest.raises(RecordError, match="no such ecg_id"):
        low.signal_path("99999999")
