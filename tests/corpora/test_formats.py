"""Bring-your-own-ECG formats: each fixture is written by the format's own library (pyedflib, pydicom)
or as the documented XML/CSV text from a real PTB-XL record's signal, read back by corpora.formats,
and compared with the source within the file's quantisation step. Bad files give a RecordError
naming the file."""

from __future__ import annotations

import base64
import csv
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import wfdb

from corpora.base import STANDARD_LEADS, RecordError
from corpora.formats import lead_name, read_csv, read_dicom, read_ecg_file, read_edf, read_xml
from esi.serve.api.uploads import UploadError, parse_upload

RECORD = "records100/00000/00001_lr"
EIGHT_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


@pytest.fixture(scope="module")
def source(ptbxl_root: Path) -> tuple[np.ndarray, float]:
    """PTB-XL 00001_lr: (12, 1000) mV in the standard lead order (its header order), 100 Hz."""
    record = wfdb.rdrecord(str(ptbxl_root / RECORD))
    assert [lead_name(name) for name in record.sig_name] == list(STANDARD_LEADS)
    return record.p_signal.T.astype(np.float64), float(record.fs)


# ---- writers, each through the format's library or its documented structure ------------------------------

def write_edf(path: Path, signal: np.ndarray, fs: float, *, unit: str = "mV", extra_channel: bool = False) -> np.ndarray:
    """EDF+ via pyedflib; returns each channel's quantisation step (physical range / 65535) in mV."""
    from pyedflib import highlevel

    factor = {"mV": 1.0, "uV": 1000.0}[unit]
    data = [row * factor for row in signal]
    labels = list(STANDARD_LEADS)
    if extra_channel:
        data.append(np.sin(np.arange(signal.shape[1]) / 50.0))
        labels.append("Resp")
    headers = highlevel.make_signal_headers(labels, dimension=unit, sample_frequency=fs)
    steps = []
    for header, row in zip(headers, data):
        header["physical_min"] = float(np.floor(row.min()) - 1)
        header["physical_max"] = float(np.ceil(row.max()) + 1)
        steps.append((header["physical_max"] - header["physical_min"]) / 65535 / factor)
    header = highlevel.make_header(sex="Male", birthdate=datetime(1950, 1, 1), startdate=datetime(2020, 6, 1))
    highlevel.write_edf(str(path), data, headers, header)
    return np.asarray(steps[:12])


def write_dicom(path: Path, signal: np.ndarray, fs: float, sensitivity_uv: float = 2.5) -> None:
    """A DICOM 12-lead ECG (SOP 1.2.840.10008.5.1.4.1.1.9.1.1) via pydicom, SCP-ECG channel codes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop = "1.2.840.10008.5.1.4.1.1.9.1.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop, meta.MediaStorageSOPInstanceUID, "ECG"
    ds.PatientSex, ds.PatientAge = "F", "063Y"
    codes = {"I": 1, "II": 2, "III": 61, "aVR": 62, "aVL": 63, "aVF": 64, "V1": 3, "V2": 4, "V3": 5, "V4": 6,
             "V5": 7, "V6": 8}
    group = Dataset()
    group.MultiplexGroupLabel, group.WaveformOriginality = "RHYTHM", "ORIGINAL"
    group.NumberOfWaveformChannels, group.NumberOfWaveformSamples = 12, signal.shape[1]
    group.SamplingFrequency, group.WaveformBitsAllocated, group.WaveformSampleInterpretation = fs, 16, "SS"
    channels = []
    for lead in STANDARD_LEADS:
        source_code = Dataset()
        source_code.CodeValue, source_code.CodingSchemeDesignator = f"5.6.3-9-{codes[lead]}", "SCPECG"
        source_code.CodeMeaning = f"Lead {lead} (Einthoven)" if lead in ("I", "II", "III") else f"Lead {lead}"
        unit = Dataset()
        unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "uV", "UCUM", "microvolt"
        channel = Dataset()
        channel.ChannelSourceSequence, channel.ChannelSensitivityUnitsSequence = [source_code], [unit]
        channel.ChannelSensitivity, channel.ChannelSensitivityCorrectionFactor = sensitivity_uv, 1
        channel.ChannelBaseline, channel.WaveformBitsStored = 0, 16
        channels.append(channel)
    group.ChannelDefinitionSequence = channels
    group.WaveformData = np.round(signal.T * 1000 / sensitivity_uv).astype("<i2").tobytes()
    ds.WaveformSequence = [group]
    ds.save_as(path, enforce_file_format=True)


def aecg_xml(signal: np.ndarray, fs: float, scale_uv: float = 5.0) -> str:
    """HL7 aECG: a rhythm sequenceSet (time + one SLIST_PQ per lead) and a decoy derivation (median beats)."""
    def sequence(code: str, value: str) -> str:
        return (f'<component><sequence><code code="{code}" codeSystem="2.16.840.1.113883.6.24"/>{value}'
                "</sequence></component>")

    time = sequence("TIME_ABSOLUTE", f'<value xsi:type="GLIST_TS"><head value="20200601120000.000"/>'
                                     f'<increment value="{1 / fs}" unit="s"/></value>')
    leads = "".join(
        sequence(f"MDC_ECG_LEAD_{lead.upper()}",
                 f'<value xsi:type="SLIST_PQ"><origin value="0" unit="uV"/><scale value="{scale_uv}" unit="uV"/>'
                 f"<digits>{' '.join(str(int(v)) for v in np.round(row * 1000 / scale_uv))}</digits></value>")
        for lead, row in zip(STANDARD_LEADS, signal))
    decoy = sequence("MDC_ECG_LEAD_I", '<value xsi:type="SLIST_PQ"><origin value="0" unit="uV"/>'
                                       '<scale value="1" unit="uV"/><digits>9 9 9</digits></value>')
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<AnnotatedECG xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            '<id root="2.16.840.1.113883.3.1"/><componentOf><timepointEvent><componentOf><subjectAssignment>'
            '<subject><trialSubject><subjectDemographicPerson><administrativeGenderCode code="F" '
            'codeSystem="2.16.840.1.113883.5.1"/></subjectDemographicPerson></trialSubject></subject>'
            '</subjectAssignment></componentOf></timepointEvent></componentOf>'
            '<component><series><code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4"/>'
            f'<derivation><derivedSeries><component><sequenceSet>{decoy}</sequenceSet></component></derivedSeries>'
            f'</derivation><component><sequenceSet>{time}{leads}</sequenceSet></component>'
            '</series></component></AnnotatedECG>')


def muse_xml(signal: np.ndarray, fs: float, per_bit_uv: float = 4.88) -> str:
    """GE MUSE RestingECG: the 8 acquired leads as base64 little-endian int16, after a decoy Median waveform."""
    def lead_data(lead: str, row: np.ndarray) -> str:
        encoded = base64.b64encode(np.round(row * 1000 / per_bit_uv).astype("<i2").tobytes()).decode()
        return (f"<LeadData><LeadByteCountTotal>{2 * row.size}</LeadByteCountTotal>"
                f"<LeadSampleCountTotal>{row.size}</LeadSampleCountTotal>"
                f"<LeadAmplitudeUnitsPerBit>{per_bit_uv}</LeadAmplitudeUnitsPerBit>"
                f"<LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits><LeadID>{lead}</LeadID>"
                f"<WaveFormData>{encoded[:60]}\n{encoded[60:]}</WaveFormData></LeadData>")

    rows = {lead: signal[STANDARD_LEADS.index(lead)] for lead in EIGHT_LEADS}
    median = "".join(lead_data(lead, row[:60]) for lead, row in rows.items())
    rhythm = "".join(lead_data(lead, row) for lead, row in rows.items())
    return ("<?xml version='1.0' encoding='ISO-8859-1'?><RestingECG><PatientDemographics><PatientAge>56</PatientAge>"
            "<AgeUnits>YEARS</AgeUnits><Gender>MALE</Gender></PatientDemographics>"
            f"<Waveform><WaveformType>Median</WaveformType><SampleBase>500</SampleBase>{median}</Waveform>"
            f"<Waveform><WaveformType>Rhythm</WaveformType><SampleType>CONTINUOUS_SAMPLES</SampleType>"
            f"<SampleBase>{int(fs)}</SampleBase><SampleExponent>0</SampleExponent>{rhythm}</Waveform></RestingECG>")


def write_csv(path: Path, signal: np.ndarray, header: list[str], *, time: np.ndarray | None = None,
              scale: float = 1.0, delimiter: str = ",") -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow((["time"] if time is not None else []) + header)
        for index, column in enumerate(signal.T):
            writer.writerow(([repr(float(time[index]))] if time is not None else []) +
                            [repr(float(v)) for v in column * scale])


# ---- round trips --------------------------------------------------------------------------------------

@pytest.mark.parametrize("unit", ["mV", "uV"])
def test_edf_round_trip(tmp_path, source, unit) -> None:
    signal, fs = source
    steps = write_edf(tmp_path / "ecg.edf", signal, fs, unit=unit, extra_channel=True)
    record = read_edf(tmp_path / "ecg.edf")
    assert (record.record_id, record.sampling_rate, record.extra["format"]) == ("ecg", 100.0, "edf")
    assert (record.sex, record.age) == ("male", 70.41)  # 1950-01-01 to 2020-06-01
    assert record.notes == ["channel 'Resp' is not an ECG lead; left out"] and record.missing_leads == []
    assert np.all(np.abs(record.signal - signal) <= steps[:, None] * 1.001 + 1e-6)


def test_dicom_round_trip(tmp_path, source) -> None:
    signal, fs = source
    write_dicom(tmp_path / "ecg.dcm", signal, fs, sensitivity_uv=2.5)
    record = read_dicom(tmp_path / "ecg.dcm")
    assert (record.sampling_rate, record.sex, record.age, record.notes) == (100.0, "female", 63.0, [])
    assert np.abs(record.signal - signal).max() <= 0.00125 + 1e-6  # half a 2.5 uV step


def test_hl7_aecg_round_trip_reads_the_rhythm_not_the_derivation(tmp_path, source) -> None:
    signal, fs = source
    (tmp_path / "ecg.xml").write_text(aecg_xml(signal, fs, scale_uv=5.0))
    record = read_xml(tmp_path / "ecg.xml")
    assert (record.extra["format"], record.sampling_rate, record.sex, record.notes) == ("hl7-aecg", 100.0, "female", [])
    assert record.signal.shape == (12, 1000)
    assert np.abs(record.signal - signal).max() <= 0.0025 + 1e-6


def test_muse_round_trip_derives_the_limb_leads(tmp_path, source) -> None:
    signal, fs = source
    (tmp_path / "muse.xml").write_text(muse_xml(signal, fs))
    record = read_ecg_file(tmp_path / "muse.xml")
    assert (record.extra["format"], record.sampling_rate, record.age, record.sex) == ("ge-muse", 100.0, 56.0, "male")
    assert record.notes == ["leads III, aVR, aVL, aVF derived from I and II (Einthoven/Goldberger)"]
    assert record.missing_leads == []
    acquired = [STANDARD_LEADS.index(lead) for lead in EIGHT_LEADS]
    assert np.abs(record.signal[acquired] - signal[acquired]).max() <= 0.00244 + 1e-6
    lead_i, lead_ii = record.signal[0].astype(np.float64), record.signal[1].astype(np.float64)
    np.testing.assert_allclose(record.signal[2], lead_ii - lead_i, atol=1e-6)
    np.testing.assert_allclose(record.signal[3], -(lead_i + lead_ii) / 2, atol=1e-6)
    # PTB-XL's own III/aVR/aVL/aVF (1 uV steps) agree with the derivation within the two quantisations
    assert np.abs(record.signal[2:6] - signal[2:6]).max() <= 2 * 0.00244 + 0.001 + 1e-6


def test_csv_round_trip(tmp_path, source) -> None:
    signal, fs = source
    write_csv(tmp_path / "ecg.csv", signal, [f"Lead {lead}" for lead in STANDARD_LEADS])
    record = read_csv(tmp_path / "ecg.csv", sampling_rate=fs)
    assert (record.sampling_rate, record.notes, record.missing_leads) == (100.0, [], [])
    np.testing.assert_allclose(record.signal, signal, atol=1e-6)  # float32 of the written decimals


def test_csv_time_column_units_and_a_missing_lead(tmp_path, source) -> None:
    signal, fs = source
    header = [f"{lead} (uV)" for lead in STANDARD_LEADS[:11]]
    write_csv(tmp_path / "ecg.csv", signal[:11], header, time=np.arange(1000) / fs, scale=1000.0, delimiter=";")
    record = read_csv(tmp_path / "ecg.csv")
    assert record.sampling_rate == pytest.approx(100.0)
    assert record.notes == ["sampling rate 100 Hz taken from the time column 'time'", "lead V6 missing, zero-filled"]
    assert record.missing_leads == ["V6"] and not record.signal[11].any()
    np.testing.assert_allclose(record.signal[:11], signal[:11], atol=1e-5)
    with pytest.raises(RecordError, match="time column 'time' gives 100 Hz, the sampling rate given is 250 Hz"):
        read_csv(tmp_path / "ecg.csv", sampling_rate=250)


def test_csv_without_a_sampling_rate_is_an_error(tmp_path, source) -> None:
    write_csv(tmp_path / "ecg.csv", source[0], list(STANDARD_LEADS))
    with pytest.raises(RecordError) as info:
        read_csv(tmp_path / "ecg.csv")
    assert str(info.value) == ("ecg: ecg.csv: a CSV file does not carry its sampling rate; give it "
                               "(--sampling-rate HZ, or the sampling_rate field of an upload)")


# ---- bad files --------------------------------------------------------------------------------------------

def _write_good(kind: str, folder: Path, signal: np.ndarray, fs: float) -> Path:
    if kind == "edf":
        write_edf(folder / "good.edf", signal, fs)
    elif kind == "dcm":
        write_dicom(folder / "good.dcm", signal, fs)
    elif kind == "xml":
        (folder / "good.xml").write_text(muse_xml(signal, fs))
    else:
        write_csv(folder / "good.csv", signal, list(STANDARD_LEADS))
    return folder / f"good.{kind}"


@pytest.mark.parametrize(("kind", "truncated", "garbage"), [
    ("edf", "bad.edf is not a readable EDF/BDF file (", "bad.edf is not a readable EDF/BDF file ("),
    ("dcm", "bad.dcm: cannot read the DICOM waveform (ValueError: ", "bad.dcm is not a DICOM file ("),
    ("xml", "bad.xml is not well-formed XML (no element found", "bad.xml is not well-formed XML ("),
    ("csv", "bad.csv: line ", "bad.csv is not a text CSV file ("),
])
def test_truncated_and_garbage_files_are_named_errors(tmp_path, source, kind, truncated, garbage) -> None:
    good = _write_good(kind, tmp_path, *source)
    data = good.read_bytes()
    bad = tmp_path / f"bad.{kind}"
    for content, message in ((data[: len(data) // 2], truncated), (b"\x80\x81" + os.urandom(4000), garbage)):
        bad.write_bytes(content)
        with pytest.raises(RecordError) as info:
            read_ecg_file(bad, sampling_rate=100.0 if kind == "csv" else None)
        assert info.value.record_id == "bad" and info.value.reason.startswith(message), info.value.reason


def test_unsupported_extension_and_missing_file(tmp_path) -> None:
    with pytest.raises(RecordError, match=r"ecg.txt: unsupported file type '.txt'"):
        read_ecg_file(tmp_path / "ecg.txt")
    with pytest.raises(RecordError, match="file not found: none.edf"):
        read_edf(tmp_path / "none.edf")
    with pytest.raises(RecordError, match=r"cannot read none.dcm"):
        read_dicom(tmp_path / "none.dcm")


def test_unknown_channels_only_is_an_error(tmp_path, source) -> None:
    write_csv(tmp_path / "ecg.csv", source[0][:2], ["Pleth", "Resp"])
    with pytest.raises(RecordError, match=r"ecg.csv: no ECG lead among its channels \['Pleth', 'Resp'\]"):
        read_csv(tmp_path / "ecg.csv", sampling_rate=100)


# ---- the same files through the API's upload parser ----------------------------------------------------------

@pytest.mark.parametrize("kind", ["edf", "dcm", "xml", "csv"])
def test_uploads_read_each_format_like_the_file_reader(tmp_path, source, kind) -> None:
    good = _write_good(kind, tmp_path, *source)
    rate = "100" if kind == "csv" else None
    parsed = parse_upload({good.name: good.read_bytes()}, rate)
    expected = read_ecg_file(good, sampling_rate=100.0 if kind == "csv" else None)
    np.testing.assert_array_equal(parsed.signal, expected.signal)
    assert parsed.sampling_rate == 100.0 and parsed.notes == expected.notes
    assert parsed.describe()["notes"] == expected.notes


def test_upload_errors_for_formats(tmp_path, source) -> None:
    signal, fs = source
    good = _write_good("csv", tmp_path, signal, fs)
    with pytest.raises(UploadError, match="good.csv: a CSV file does not carry its sampling rate"):
        parse_upload({"good.csv": good.read_bytes()})
    edf = _write_good("edf", tmp_path, signal, fs)
    with pytest.raises(UploadError) as info:
        parse_upload({"good.edf": edf.read_bytes()}, "250")
    assert info.value.message == "good.edf: the file gives its sampling rate as 100 Hz; sampling_rate 250 contradicts it"
    with pytest.raises(UploadError) as info:
        parse_upload({"x.edf": edf.read_bytes()[:3000]})
    assert info.value.message.startswith("x.edf is not a readable EDF/BDF file") and "/tmp" not in info.value.message
    write_csv(tmp_path / "ten.csv", signal[:10], list(STANDARD_LEADS[:10]))
    with pytest.raises(UploadError) as info:
        parse_upload({"ten.csv": (tmp_path / "ten.csv").read_bytes()}, "100")
    assert info.value.message == "ten.csv: missing leads V5, V6; ESI needs all 12 leads"
