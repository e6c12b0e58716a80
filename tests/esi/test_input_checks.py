"""One signal check on every path (readers, uploads, fit_to_model, the CLI): a zeroed header gain, NaN
samples, flat and missing leads and absurd amplitudes are an error or a note, never a silent answer.
Records are real PTB-XL files copied to tmp_path and spoiled there."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import wfdb

from corpora.base import STANDARD_LEADS, RecordError, check_signal
from esi.cli.main import main
from esi.serve.api.backend import upload_record as _upload_record  # what the API hands to fit_to_model
from esi.serve.api.uploads import UploadError, parse_upload
from esi.serve.inference import InputError, fit_to_model, load_record

NAME = "00001_lr"
ELEVEN_FLAT = ("leads I, III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6 flat (peak-to-peak under 0.005 mV), "
               "zero-filled")


@pytest.fixture
def record_copy(tmp_path: Path, ptbxl_root: Path) -> Path:
    """PTB-XL 00001_lr (.hea + .dat, 100 Hz, 10 s) copied to tmp_path; returns the path without extension."""
    for suffix in (".hea", ".dat"):
        shutil.copy(ptbxl_root / "records100" / "00000" / f"{NAME}{suffix}", tmp_path)
    return tmp_path / NAME


@pytest.fixture
def signal(ptbxl_root: Path) -> np.ndarray:
    return wfdb.rdrecord(str(ptbxl_root / "records100" / "00000" / NAME)).p_signal.T.astype(np.float32)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32))
    return buffer.getvalue()


def _set_gain(base: Path, lead: str, field: str) -> None:
    header = base.with_suffix(".hea")
    lines = header.read_text().splitlines()
    lines = [line.replace("1000.0(0)/mV", field) if line.endswith(f" {lead}") else line for line in lines]
    header.write_text("\n".join(lines) + "\n")


# ---- gain ------------------------------------------------------------------------------------------------------

GAIN_ZERO = ("header gain 0 or missing for lead V1: WFDB would assume its default of 200 ADC units/mV, only a "
             "guess (PTB-XL records use 1000/mV); write the real gain into the header")


def test_gain_zero_header_is_an_error_not_the_silent_default(record_copy: Path, capsys, model_dir: Path) -> None:
    _set_gain(record_copy, "V1", "0(0)/mV")
    with pytest.raises(InputError) as info:
        load_record(record_copy)
    assert str(info.value) == f"{NAME}: {GAIN_ZERO}"
    with pytest.raises(UploadError) as upload:
        parse_upload({f"{NAME}.hea": record_copy.with_suffix(".hea").read_bytes(),
                      f"{NAME}.dat": record_copy.with_suffix(".dat").read_bytes()})
    assert upload.value.message == f"{NAME}.hea: {GAIN_ZERO}"
    assert main(["caption", "--model", str(model_dir), "--record", str(record_copy), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {NAME}: {GAIN_ZERO}\n" and captured.out == ""


def test_missing_gain_field_is_the_same_error(record_copy: Path) -> None:
    header = record_copy.with_suffix(".hea")
    lines = header.read_text().splitlines()
    lines = [f"{NAME}.dat 16" if line.endswith(" V1") else line for line in lines]
    header.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="gain 0 or missing for lead sig6"):  # no lead name left on the line
        load_record(record_copy)


def test_absurd_gain_is_an_error(record_copy: Path, signal: np.ndarray) -> None:
    _set_gain(record_copy, "V2", "1.0(0)/mV")  # 1000x the amplitudes of V2
    v2 = signal[STANDARD_LEADS.index("V2")].astype(np.float64) * 1000
    peak = np.abs(v2 - np.median(v2)).max()
    with pytest.raises(InputError) as info:
        load_record(record_copy)
    assert str(info.value) == (f"{NAME}: lead V2 strays up to {peak:.1f} mV from the median, beyond the 20 mV an "
                               "ECG reaches: wrong gain or units?")


# ---- NaN ------------------------------------------------------------------------------------------------------

def test_nan_samples_are_repaired_with_a_note_in_retrieve_json(tmp_path: Path, signal: np.ndarray, model_dir: Path,
                                                               capsys) -> None:
    spoiled = signal.astype(np.float64)
    spoiled[STANDARD_LEADS.index("aVL"), 200:210] = np.nan
    spoiled[STANDARD_LEADS.index("V3"), 500:550] = np.nan
    wfdb.wrsamp("nans", fs=100, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), p_signal=spoiled.T,
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    note = "repaired 60 NaN samples by linear interpolation (aVL 10, V3 50)"
    record = load_record(tmp_path / "nans")
    assert np.isnan(record.signal).sum() == 60 and record.notes == []  # the reader keeps them; inference repairs
    prepared = fit_to_model(record, 100.0, 1000)
    assert prepared.notes == [note] and np.isfinite(prepared.signal).all()
    repaired = check_signal(record.signal, "nans").signal[STANDARD_LEADS.index("V3")]
    np.testing.assert_allclose(repaired[500:550], np.linspace(signal[8, 499], signal[8, 550], 52)[1:-1], atol=2e-3)
    captions = tmp_path / "captions.txt"
    captions.write_text("Sinus rhythm.\nAtrial fibrillation.\n")
    assert main(["retrieve", "--model", str(model_dir), "--record", str(tmp_path / "nans"), "-k", "2",
                 "--texts", str(captions), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notes"] == [note]


# ---- flat and missing leads ----------------------------------------------------------------------------------------

def test_all_zero_upload_has_no_usable_lead() -> None:
    parsed = parse_upload({"zeros.npy": _npy(np.zeros((12, 1000)))}, "100")
    with pytest.raises(InputError) as info:
        fit_to_model(_upload_record(parsed), 100.0, 1000)
    assert str(info.value) == ("zeros.npy: no usable lead: leads I, II, III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6 "
                               "flat (peak-to-peak under 0.005 mV)")


def test_single_real_lead_upload_is_noted_for_eleven_flat_leads(signal: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    one_lead = np.zeros((12, 1000))
    one_lead[1] = signal[1]  # lead II
    one_lead[6] = 0.3  # a constant offset: flat too
    one_lead[7] = 0.001 * rng.standard_normal(1000).clip(-2, 2)  # near-flat: under 5 uV peak-to-peak
    parsed = parse_upload({"one.npy": _npy(one_lead)}, "100")
    prepared = fit_to_model(_upload_record(parsed), 100.0, 1000)
    assert prepared.notes == [ELEVEN_FLAT]


def test_flat_leads_in_a_wfdb_file_get_the_same_note(tmp_path: Path, signal: np.ndarray) -> None:
    one_lead = np.zeros((12, 1000))
    one_lead[1] = signal[1]
    wfdb.wrsamp("one", fs=100, units=["mV"] * 12, sig_name=list(STANDARD_LEADS), p_signal=one_lead.T,
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    record = load_record(tmp_path / "one")
    assert record.notes == [ELEVEN_FLAT] and record.missing_leads == []
    assert fit_to_model(record, 100.0, 1000).notes == [ELEVEN_FLAT]  # noted once, not again


def test_absurd_amplitude_upload_is_refused(signal: np.ndarray) -> None:
    with pytest.raises(UploadError, match=r"^micro.npy: leads I, II, III, .* stray up to \d+\.\d mV from the "
                                          r"median, beyond the 20 mV an ECG reaches: wrong gain or units\?$"):
        parse_upload({"micro.npy": _npy(signal * 1000)}, "100")  # microvolts sent as millivolts


def test_check_signal_reports_missing_and_all_nan_leads() -> None:
    data = np.tile(np.sin(np.linspace(0, 20, 500)), (12, 1)).astype(np.float32)
    data[4] = np.nan
    check = check_signal(data, "r", absent=["V6"])
    assert check.notes == ["lead V6 missing, zero-filled", "lead aVL all NaN, zero-filled"]
    assert check.zero_filled == ["aVL", "V6"] and check.reasons() == ["aVL all-NaN", "V6 absent"]
    spoiled = data.copy()
    spoiled[11] = 0.2
    with pytest.raises(RecordError) as info:
        check_signal(spoiled, "r", absent=[lead for lead in STANDARD_LEADS if lead not in ("aVL", "V6")])
    assert str(info.value) == ("r: no usable lead: leads I, II, III, aVR, aVF, V1, V2, V3, V4, V5 missing; "
                               "lead aVL all NaN; lead V6 flat (peak-to-peak under 0.005 mV)")


# ---- formats through the CLI ---------------------------------------------------------------------------------------

def _write_csv(path: Path, signal: np.ndarray) -> None:
    lines = [",".join(STANDARD_LEADS)] + [",".join(repr(float(v)) for v in column) for column in signal.T]
    path.write_text("\n".join(lines) + "\n")


def test_caption_reads_a_csv_with_sampling_rate(tmp_path: Path, signal: np.ndarray, model_dir: Path, capsys) -> None:
    csv_path = tmp_path / "mine.csv"
    _write_csv(csv_path, signal)
    argv = ["caption", "--model", str(model_dir), "--record", str(csv_path), "--max-len", "4", "--json"]
    assert main([*argv, "--sampling-rate", "100"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["record"] == "mine" and result["notes"] == [] and isinstance(result["caption"], str)
    assert main(argv) == 2
    assert capsys.readouterr().err == ("error: mine: mine.csv: a CSV file does not carry its sampling rate; give it "
                                       "(--sampling-rate HZ, or the sampling_rate field of an upload)\n")
    record = load_record(csv_path, sampling_rate=100)
    np.testing.assert_allclose(record.signal, signal, atol=1e-6)


def test_sampling_rate_that_contradicts_the_file_is_an_error(record_copy: Path, model_dir: Path, capsys) -> None:
    assert main(["caption", "--model", str(model_dir), "--record", str(record_copy), "--sampling-rate", "500"]) == 2
    assert capsys.readouterr().err == (f"error: {NAME}: the file gives its sampling rate as 100 Hz; the sampling "
                                       "rate given, 500 Hz, contradicts it\n")


def test_bad_files_through_the_cli_are_one_line_errors(tmp_path: Path, signal: np.ndarray, model_dir: Path,
                                                        capsys) -> None:
    bad = {"trunc.dcm": b"DICM" * 10, "trunc.xml": b"<RestingECG><Waveform>", "trunc.csv": b"I,II\n0.1\n"}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
        assert main(["caption", "--model", str(model_dir), "--record", str(tmp_path / name),
                     "--sampling-rate", "100"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: trunc: {name}") and "Traceback" not in err and err.count("\n") == 1, err
    assert main(["caption", "--model", str(model_dir), "--record", str(tmp_path / "none.edf")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'none.edf'}: no such file\n"
    np.save(tmp_path / "array.npy", signal)
    assert main(["caption", "--model", str(model_dir), "--record", str(tmp_path / "array.npy")]) == 2
    assert capsys.readouterr().err == ("error: array: array.npy is a bare array with no sampling rate; give one "
                                       "(--sampling-rate HZ)\n")
    assert load_record(tmp_path / "array.npy", sampling_rate=100).signal.shape == (12, 1000)
