"""Readers for the ECG files users export, each returning an :class:`~corpora.base.ECGRecord`.

One function per format, all alike: ``read_X(source, ...)`` takes a path or the file's bytes
(uploads never touch the filesystem with a client's name) and returns the signal as float32
``(12, T)`` millivolts in :data:`~corpora.base.STANDARD_LEADS` order, checked by
:func:`corpora.base.check_signal`. What reading changed is said in ``record.notes``:

- leads the file lacks are zero-filled, listed in ``missing_leads`` and noted; when I and II are
  there, III, aVR, aVL and aVF are derived from them instead (Einthoven/Goldberger), with a note;
- channels that are not ECG leads (respiration, pleth, ...) are left out with a note;
- flat or all-NaN leads are zero-filled with a note; NaN runs are left for inference to repair.

Formats and the library that reads each:

- EDF/EDF+/BDF (``.edf``, ``.bdf``): pyedflib (EDFlib), which validates the header against the file;
- DICOM 12-lead / general ECG waveform (``.dcm``): pydicom's ``waveform_array`` (channel sensitivity,
  correction factor and baseline applied), channel labels from the ChannelSourceSequence codes;
- HL7 aECG and GE MUSE XML (``.xml``): no maintained PyPI library reads these, so a small
  :mod:`xml.etree.ElementTree` parser of the documented structures (aECG ``sequence`` with
  ``origin``/``scale``/``digits``; MUSE ``Waveform``/``LeadData`` base64 little-endian int16).
  Expat >= 2.4.1 (bundled with Python 3.11) refuses entity-expansion bombs and ElementTree never
  fetches external entities;
- CSV (``.csv``): pandas; a header row names the leads (optionally with units, ``V1 (uV)``), one
  column per lead; the sampling rate comes from the caller or a time column (``time``/``t`` in s,
  ``time_ms``/``ms`` in ms).

Every failure is a :class:`~corpora.base.RecordError` naming the file and the reason.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import math
import re
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    STANDARD_LEADS,
    ECGRecord,
    RecordError,
    add_notes,
    canonical_lead_name,
    check_signal,
    mv_factors,
    parse_age,
    parse_sex,
)

Source = str | Path | bytes

_LIMB_DERIVED = ("III", "aVR", "aVL", "aVF")
# SCP-ECG (MDC 2:n and SCPECG 5.6.3-9-n) lead codes that DICOM ChannelSourceSequence items use.
_SCP_LEAD_CODES = {"1": "I", "2": "II", "3": "V1", "4": "V2", "5": "V3", "6": "V4", "7": "V5", "8": "V6",
                   "61": "III", "62": "aVR", "63": "aVL", "64": "aVF"}
_UNIT_WORDS = {"microvolts": "uV", "microvolt": "uV", "millivolts": "mV", "millivolt": "mV", "volts": "V",
               "volt": "V"}
_TIME_COLUMNS = {"time": 1.0, "t": 1.0, "time_s": 1.0, "time (s)": 1.0, "seconds": 1.0, "sec": 1.0, "s": 1.0,
                 "time_ms": 1e-3, "time (ms)": 1e-3, "ms": 1e-3}


# ---- shared helpers -----------------------------------------------------------------------------------

def lead_name(raw: str) -> str | None:
    """A standard lead name from what exports write: ``I``, ``Lead II``, ``MDC_ECG_LEAD_AVR``,
    ``Lead aVL (Goldberger)``, ``ECG V1``, ``5.6.3-9-61``; None for anything else."""
    text = raw.strip()
    code = re.fullmatch(r"(?:2:|5\.6\.3-9-)(\d+)", text)
    if code:
        return _SCP_LEAD_CODES.get(code.group(1))
    text = re.sub(r"\s*\(.*\)\s*$", "", text)
    text = re.sub(r"^(?:mdc_ecg_lead_|lead[\s_-]*|ecg[\s_-]+)", "", text, flags=re.IGNORECASE)
    return canonical_lead_name(text)


def _names(source: Source, name: str | None, default_suffix: str) -> tuple[str, str]:
    """(file name for messages, record id = its stem)."""
    if isinstance(source, bytes):
        file_name = name or f"upload{default_suffix}"
    else:
        file_name = Path(source).name
    return file_name, Path(file_name).stem or file_name


def _read_bytes(source: Source, file_name: str, record_id: str) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as err:
        raise RecordError(record_id, f"cannot read {file_name}: {err.strerror or err}") from err


def _unit_factor(record_id: str, file_name: str, unit: str, channel: str) -> float:
    """mV per physical unit via :func:`corpora.base.mv_factors` (also ``MICROVOLTS`` style words)."""
    text = unit.strip()
    text = _UNIT_WORDS.get(text.lower(), text)
    try:
        return float(mv_factors(record_id, [text])[0])
    except RecordError as err:
        raise RecordError(record_id, f"{file_name}: channel {channel!r} is in {unit!r}, not a voltage") from err


def _check_rate(record_id: str, file_name: str, rate: Any) -> float:
    try:
        value = float(rate)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise RecordError(record_id, f"{file_name}: sampling rate {rate!r} is not a positive number of Hz")
    return value


def _build(
    record_id: str,
    file_name: str,
    source_format: str,
    channels: Sequence[tuple[str, np.ndarray]],
    sampling_rate: float,
    *,
    notes: Sequence[str] = (),
    age: float | None = None,
    sex: str | None = None,
    path: Path | None = None,
) -> ECGRecord:
    """Channels (label, millivolt samples) -> a checked record in the standard lead order."""
    leads: dict[str, np.ndarray] = {}
    ignored: list[str] = []
    for label, values in channels:
        lead = lead_name(label)
        if lead is None:
            ignored.append(label)
            continue
        if lead in leads:
            raise RecordError(record_id, f"{file_name}: lead {lead} appears twice (channel {label!r})")
        leads[lead] = np.asarray(values, dtype=np.float64).ravel()
    if not leads:
        shown = [label for label, _ in channels]
        raise RecordError(record_id, f"{file_name}: no ECG lead among its channels {shown} "
                                     f"(expected names such as I, II, V1)")
    lengths = {lead: values.size for lead, values in leads.items()}
    if len(set(lengths.values())) != 1:
        raise RecordError(record_id, f"{file_name}: leads have different lengths {lengths}")
    n_samples = next(iter(lengths.values()))
    if n_samples == 0:
        raise RecordError(record_id, f"{file_name}: the leads hold no samples")
    all_notes = list(notes)
    if ignored:
        named = ", ".join(repr(label) for label in ignored)
        all_notes.append(f"channel {named} is not an ECG lead; left out" if len(ignored) == 1
                         else f"channels {named} are not ECG leads; left out")
    derivable = [lead for lead in _LIMB_DERIVED if lead not in leads]
    if derivable and "I" in leads and "II" in leads:
        lead_i, lead_ii = leads["I"], leads["II"]
        formulas = {"III": lead_ii - lead_i, "aVR": -(lead_i + lead_ii) / 2, "aVL": lead_i - lead_ii / 2,
                    "aVF": lead_ii - lead_i / 2}
        for lead in derivable:
            leads[lead] = formulas[lead]
        all_notes.append(f"{'lead' if len(derivable) == 1 else 'leads'} {', '.join(derivable)} derived from "
                         "I and II (Einthoven/Goldberger)")
    signal = np.zeros((len(STANDARD_LEADS), n_samples), dtype=np.float32)
    for index, lead in enumerate(STANDARD_LEADS):
        if lead in leads:
            signal[index] = leads[lead]
    absent = [lead for lead in STANDARD_LEADS if lead not in leads]
    check = check_signal(signal, record_id, absent=absent, repair_nan=False)
    extra: dict[str, Any] = {"format": source_format, "source_file": file_name}
    if path is not None:
        extra["path"] = str(path)
    if check.zero_filled:
        extra["zero_filled_leads"] = check.zero_filled
    record = ECGRecord(record_id=record_id, dataset="file", signal=check.signal, sampling_rate=sampling_rate,
                       age=age, sex=sex, missing_leads=list(check.absent), extra=extra)
    add_notes(record, [*all_notes, *check.notes])
    return record


def _age_years(birth: date | None, on: date | None) -> float | None:
    if birth is None or on is None or on < birth:
        return None
    return parse_age(round((on - birth).days / 365.25, 2))


# ---- EDF ----------------------------------------------------------------------------------------------

def read_edf(source: Source, *, name: str | None = None) -> ECGRecord:
    """An EDF/EDF+/BDF file through pyedflib (physical values; per-channel units to mV).

    pyedflib reads from a path only, so bytes are written to a private temporary file first.
    """
    import pyedflib

    file_name, record_id = _names(source, name, ".edf")
    if isinstance(source, bytes):
        with tempfile.TemporaryDirectory(prefix="ecg-edf-") as tmp:
            path = Path(tmp) / ("upload" + (Path(file_name).suffix.lower() or ".edf"))
            path.write_bytes(source)
            return _read_edf_path(pyedflib, path, file_name, record_id, None)
    path = Path(source)
    if not path.is_file():
        raise RecordError(record_id, f"file not found: {file_name}")
    return _read_edf_path(pyedflib, path, file_name, record_id, path)


def _read_edf_path(pyedflib: Any, path: Path, file_name: str, record_id: str, origin: Path | None) -> ECGRecord:
    try:
        reader = pyedflib.EdfReader(str(path))
    except OSError as err:
        reason = str(err).replace(f"{path}: ", "")  # the private temporary path is no business of the user
        raise RecordError(record_id, f"{file_name} is not a readable EDF/BDF file ({reason})") from err
    try:
        labels = [str(label) for label in reader.getSignalLabels()]
        rates = [float(rate) for rate in reader.getSampleFrequencies()]
        units = [str(reader.getPhysicalDimension(i)) for i in range(reader.signals_in_file)]
        ecg = [i for i, label in enumerate(labels) if lead_name(label) is not None]
        if not ecg:
            raise RecordError(record_id, f"{file_name}: no ECG lead among its channels {labels} "
                                         "(expected names such as I, II, V1)")
        ecg_rates = sorted({rates[i] for i in ecg})
        if len(ecg_rates) != 1:
            raise RecordError(record_id, f"{file_name}: ECG leads are sampled at different rates {ecg_rates} Hz")
        notes: list[str] = []
        channels: list[tuple[str, np.ndarray]] = []
        for index, label in enumerate(labels):
            if index not in ecg:
                channels.append((label, np.zeros(0)))  # not a lead: never read, named in a note
                continue
            unit = units[index].strip()
            if not unit:
                notes.append(f"channel {label!r} has no physical dimension; read as mV")
                unit = "mV"
            factor = _unit_factor(record_id, file_name, unit, label)
            channels.append((label, np.asarray(reader.readSignal(index), dtype=np.float64) * factor))
        sex = parse_sex(reader.getSex() if hasattr(reader, "getSex") else None)
        age = _edf_age(reader)
    except (ValueError, IndexError, TypeError) as err:
        raise RecordError(record_id, f"{file_name}: cannot read the EDF signals ({type(err).__name__}: {err})") from err
    finally:
        reader.close()
    return _build(record_id, file_name, "edf", channels, ecg_rates[0], notes=notes, age=age, sex=sex, path=origin)


def _edf_age(reader: Any) -> float | None:
    """Age at recording from the EDF+ patient birthdate and the start date, where both are given."""
    try:
        birth = reader.getBirthdate(string=False)
        start = reader.getStartdatetime()
    except (ValueError, TypeError, AttributeError):
        return None
    if not isinstance(birth, datetime | date) or not isinstance(start, datetime):
        return None
    return _age_years(birth.date() if isinstance(birth, datetime) else birth, start.date())


# ---- DICOM --------------------------------------------------------------------------------------------

def read_dicom(source: Source, *, name: str | None = None) -> ECGRecord:
    """A DICOM 12-lead (or general) ECG waveform through pydicom.

    The multiplex group labelled RHYTHM is read (else the first); ``waveform_array`` applies each
    channel's sensitivity, correction factor and baseline, and ChannelSensitivityUnitsSequence gives
    the unit. A channel without calibration is an error (its amplitudes would be raw ADC counts).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    file_name, record_id = _names(source, name, ".dcm")
    data = _read_bytes(source, file_name, record_id)
    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        if "WaveformSequence" not in dataset:
            raise RecordError(record_id, f"{file_name}: DICOM file holds no waveform (no WaveformSequence; "
                                         "truncated, or not an ECG?)")
        groups = list(dataset.WaveformSequence)
        labels = [str(group.get("MultiplexGroupLabel", "")).strip().upper() for group in groups]
        index = labels.index("RHYTHM") if "RHYTHM" in labels else 0
        group = groups[index]
        rate = _check_rate(record_id, file_name, group.get("SamplingFrequency"))
        definitions = list(group.get("ChannelDefinitionSequence", []))
        if len(definitions) != int(group.NumberOfWaveformChannels):
            raise RecordError(record_id, f"{file_name}: {len(definitions)} channel definitions for "
                                         f"{int(group.NumberOfWaveformChannels)} channels")
        array = dataset.waveform_array(index)
        channels: list[tuple[str, np.ndarray]] = []
        for number, channel in enumerate(definitions):
            label = _dicom_channel_label(channel, number)
            if lead_name(label) is None:
                channels.append((label, array[:, number]))
                continue
            units = channel.get("ChannelSensitivityUnitsSequence")
            if "ChannelSensitivity" not in channel or not units:
                raise RecordError(record_id, f"{file_name}: channel {label!r} has no ChannelSensitivity and "
                                             "units; its amplitudes are uncalibrated")
            factor = _unit_factor(record_id, file_name, str(units[0].get("CodeValue", "")), label)
            channels.append((label, np.asarray(array[:, number], dtype=np.float64) * factor))
        age = _dicom_age(str(dataset.get("PatientAge", "") or ""))
        sex = parse_sex(str(dataset.get("PatientSex", "") or ""))
    except RecordError:
        raise
    except InvalidDicomError as err:
        raise RecordError(record_id, f"{file_name} is not a DICOM file ({err})") from err
    except (AttributeError, ValueError, TypeError, KeyError, IndexError, EOFError, OSError, NotImplementedError,
            OverflowError) as err:
        raise RecordError(record_id, f"{file_name}: cannot read the DICOM waveform "
                                     f"({type(err).__name__}: {err}; truncated or corrupt?)") from err
    notes = [f"read waveform group {labels[index] or index} of {len(groups)}"] if len(groups) > 1 else []
    return _build(record_id, file_name, "dicom", channels, rate, notes=notes, age=age, sex=sex,
                  path=None if isinstance(source, bytes) else Path(source))


def _dicom_channel_label(channel: Any, number: int) -> str:
    """ChannelLabel, else the ChannelSourceSequence code meaning, else its code value."""
    label = str(channel.get("ChannelLabel", "") or "").strip()
    if label and lead_name(label):
        return label
    for item in channel.get("ChannelSourceSequence", []) or []:
        for key in ("CodeMeaning", "CodeValue"):
            text = str(item.get(key, "") or "").strip()
            if text and lead_name(text):
                return text
        if item.get("CodeMeaning"):
            return str(item.CodeMeaning)
    return label or f"channel {number + 1}"


def _dicom_age(text: str) -> float | None:
    """DICOM Age String ``045Y`` / ``006M`` / ``003W`` / ``010D`` -> years."""
    match = re.fullmatch(r"(\d{1,3})([DWMY])", text.strip().upper())
    if not match:
        return None
    per_year = {"D": 365.25, "W": 52.1775, "M": 12.0, "Y": 1.0}[match.group(2)]
    return parse_age(round(int(match.group(1)) / per_year, 2))


# ---- XML: HL7 aECG and GE MUSE ------------------------------------------------------------------------

def read_xml(source: Source, *, name: str | None = None) -> ECGRecord:
    """An HL7 aECG (``<AnnotatedECG>``) or GE MUSE (``<RestingECG>``) XML file, told apart by the root."""
    file_name, record_id = _names(source, name, ".xml")
    data = _read_bytes(source, file_name, record_id)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise RecordError(record_id, f"{file_name} is not well-formed XML ({err})") from err
    tag = _local(root.tag)
    path = None if isinstance(source, bytes) else Path(source)
    if tag == "AnnotatedECG":
        return _read_aecg(root, record_id, file_name, path)
    if tag == "RestingECG":
        return _read_muse(root, record_id, file_name, path)
    raise RecordError(record_id, f"{file_name}: XML root <{tag}> is neither HL7 aECG <AnnotatedECG> nor GE MUSE "
                                 "<RestingECG>")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [child for child in element if _local(child.tag) == name]


def _child(element: ET.Element, name: str) -> ET.Element | None:
    found = _children(element, name)
    return found[0] if found else None


def _number(record_id: str, file_name: str, element: ET.Element | None, what: str) -> tuple[float, str]:
    """(value, unit) of an HL7 PQ element such as ``<scale value="5" unit="uV"/>``."""
    if element is None or element.get("value") is None:
        raise RecordError(record_id, f"{file_name}: aECG sequence lacks <{what} value=...>")
    try:
        value = float(element.get("value", ""))
    except ValueError as err:
        raise RecordError(record_id, f"{file_name}: aECG <{what}> value {element.get('value')!r} "
                                     "is not a number") from err
    if not math.isfinite(value):
        raise RecordError(record_id, f"{file_name}: aECG <{what}> value is not finite")
    return value, element.get("unit", "")


def _read_aecg(root: ET.Element, record_id: str, file_name: str, path: Path | None) -> ECGRecord:
    """The first rhythm ``sequenceSet`` of the first ``series`` (not its ``derivation``, which holds
    representative beats): a time sequence (``increment``) and one ``SLIST_PQ`` per lead, physical
    value = origin + scale x digit."""
    series = next((element for element in root.iter() if _local(element.tag) == "series"), None)
    sequence_set = None
    if series is not None:
        for component in _children(series, "component"):
            sequence_set = _child(component, "sequenceSet")
            if sequence_set is not None:
                break
    if sequence_set is None:
        raise RecordError(record_id, f"{file_name}: aECG has no series/component/sequenceSet (no rhythm waveform)")
    rate: float | None = None
    channels: list[tuple[str, np.ndarray]] = []
    for component in _children(sequence_set, "component"):
        sequence = _child(component, "sequence")
        if sequence is None:
            continue
        code_element = _child(sequence, "code")
        code = code_element.get("code", "") if code_element is not None else ""
        value = _child(sequence, "value")
        if value is None:
            raise RecordError(record_id, f"{file_name}: aECG sequence {code!r} has no <value>")
        if code.startswith("TIME_"):
            step, unit = _number(record_id, file_name, _child(value, "increment"), "increment")
            seconds = {"s": 1.0, "ms": 1e-3, "us": 1e-6}.get(unit.strip() or "s")
            if seconds is None or step <= 0:
                raise RecordError(record_id, f"{file_name}: aECG time increment {step:g} {unit!r} is not a "
                                             "positive time step")
            rate = 1.0 / (step * seconds)
            continue
        digits_element = _child(value, "digits")
        if digits_element is None:
            raise RecordError(record_id, f"{file_name}: aECG lead {code!r} has no <digits>")
        origin, origin_unit = _number(record_id, file_name, _child(value, "origin"), "origin")
        scale, scale_unit = _number(record_id, file_name, _child(value, "scale"), "scale")
        try:
            digits = np.asarray((digits_element.text or "").split(), dtype=np.float64)
        except ValueError as err:
            raise RecordError(record_id, f"{file_name}: aECG lead {code!r} has non-numeric digits") from err
        label = code.removeprefix("MDC_ECG_LEAD_") if code.startswith("MDC_ECG_LEAD_") else code
        values = (origin * _unit_factor(record_id, file_name, origin_unit or scale_unit, label)
                  + scale * digits * _unit_factor(record_id, file_name, scale_unit, label))
        channels.append((label, values))
    if rate is None:
        raise RecordError(record_id, f"{file_name}: aECG has no TIME sequence giving the sampling interval")
    if not channels:
        raise RecordError(record_id, f"{file_name}: aECG sequenceSet holds no lead sequences")
    gender = next((element.get("code") for element in root.iter()
                   if _local(element.tag) == "administrativeGenderCode"), None)
    return _build(record_id, file_name, "hl7-aecg", channels, _check_rate(record_id, file_name, rate),
                  sex=parse_sex(gender), path=path)


def _text(element: ET.Element | None, name: str) -> str | None:
    found = _child(element, name) if element is not None else None
    return found.text.strip() if found is not None and found.text else None


def _read_muse(root: ET.Element, record_id: str, file_name: str, path: Path | None) -> ECGRecord:
    """The ``Rhythm`` waveform (else the first): per lead, base64 little-endian int16 samples times
    ``LeadAmplitudeUnitsPerBit`` in ``LeadAmplitudeUnits``; rate = SampleBase x 10^SampleExponent."""
    waveforms = _children(root, "Waveform")
    if not waveforms:
        raise RecordError(record_id, f"{file_name}: MUSE XML has no <Waveform>")
    waveform = next((w for w in waveforms if (_text(w, "WaveformType") or "").lower() == "rhythm"), waveforms[0])
    try:
        rate = float(_text(waveform, "SampleBase") or "nan") * 10 ** int(_text(waveform, "SampleExponent") or 0)
    except ValueError as err:
        raise RecordError(record_id, f"{file_name}: MUSE SampleBase/SampleExponent are not numbers") from err
    channels: list[tuple[str, np.ndarray]] = []
    for lead_data in _children(waveform, "LeadData"):
        label = _text(lead_data, "LeadID") or "?"
        encoded = "".join((_text(lead_data, "WaveFormData") or "").split())
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RecordError(record_id, f"{file_name}: MUSE lead {label} WaveFormData is not base64 ({err})") from err
        if len(raw) % 2:
            raise RecordError(record_id, f"{file_name}: MUSE lead {label} holds {len(raw)} bytes, not int16 samples")
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float64)
        expected = _text(lead_data, "LeadSampleCountTotal")
        if expected is not None and expected.isdigit() and int(expected) != samples.size:
            raise RecordError(record_id, f"{file_name}: MUSE lead {label} holds {samples.size} samples but "
                                         f"LeadSampleCountTotal says {expected} (truncated?)")
        try:
            per_bit = float(_text(lead_data, "LeadAmplitudeUnitsPerBit") or "nan")
        except ValueError:
            per_bit = math.nan
        if not math.isfinite(per_bit) or per_bit == 0:
            raise RecordError(record_id, f"{file_name}: MUSE lead {label} has no usable LeadAmplitudeUnitsPerBit")
        unit = _text(lead_data, "LeadAmplitudeUnits") or "MICROVOLTS"
        channels.append((label, samples * per_bit * _unit_factor(record_id, file_name, unit, label)))
    if not channels:
        raise RecordError(record_id, f"{file_name}: MUSE waveform has no <LeadData>")
    demographics = _child(root, "PatientDemographics")
    age = None
    if (_text(demographics, "AgeUnits") or "YEARS").upper() == "YEARS":
        age = parse_age(_text(demographics, "PatientAge"))
    return _build(record_id, file_name, "ge-muse", channels, _check_rate(record_id, file_name, rate), age=age,
                  sex=parse_sex(_text(demographics, "Gender")), path=path)


# ---- CSV ----------------------------------------------------------------------------------------------

def read_csv(source: Source, *, sampling_rate: float | None = None, name: str | None = None) -> ECGRecord:
    """A CSV with a header row naming the leads and one column per lead (mV unless the header says
    ``V1 (uV)``), read with the stdlib :mod:`csv` (delimiter , ; or tab sniffed). Every row must have
    the header's width, so a truncated file is an error; an empty cell is a NaN sample (inference
    interpolates it, with a note). The rate comes from ``sampling_rate`` or a time column; with
    neither it is an error."""
    file_name, record_id = _names(source, name, ".csv")
    data = _read_bytes(source, file_name, record_id)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise RecordError(record_id, f"{file_name} is not a text CSV file ({err})") from err
    lines = text.splitlines()
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if len(numbered) < 2:
        raise RecordError(record_id, f"{file_name}: a CSV needs a header row and at least one row of samples")
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(
            "\n".join(line for _, line in numbered[:20]), delimiters=",;\t")
    except csv.Error:  # one column: no delimiter to find
        dialect = csv.excel
    try:
        rows = list(csv.reader([line for _, line in numbered], dialect))
    except csv.Error as err:
        raise RecordError(record_id, f"{file_name} is not a readable CSV table ({err})") from err
    header = [cell.strip() for cell in rows[0]]
    if all(_is_number(cell) for cell in header):
        raise RecordError(record_id, f"{file_name}: no header row; the first line must name the leads (I, II, ... V6)")
    for (number, _), row in zip(numbered[1:], rows[1:]):
        if len(row) != len(header):
            raise RecordError(record_id, f"{file_name}: line {number} has {len(row)} fields, the header has "
                                         f"{len(header)} (truncated or malformed?)")
    decimal_comma = getattr(dialect, "delimiter", ",") != ","
    notes: list[str] = []
    channels: list[tuple[str, np.ndarray]] = []
    time: tuple[str, np.ndarray, float] | None = None
    for column, label in enumerate(header):
        cells = [row[column].strip() for row in rows[1:]]
        is_time = label.lower() in _TIME_COLUMNS
        lead, unit = _split_unit(label)
        if not is_time and lead_name(lead) is None:
            channels.append((label, np.zeros(0)))  # not a lead: named in a note, never parsed
            continue
        values = _csv_numbers(record_id, file_name, label, cells, [n for n, _ in numbered[1:]], decimal_comma)
        if is_time:
            time = (label, values, _TIME_COLUMNS[label.lower()])
            continue
        channels.append((lead, values * _unit_factor(record_id, file_name, unit or "mV", lead)))
    rate = _csv_rate(record_id, file_name, sampling_rate, time, notes)
    return _build(record_id, file_name, "csv", channels, rate, notes=notes,
                  path=None if isinstance(source, bytes) else Path(source))


def _csv_numbers(record_id: str, file_name: str, label: str, cells: list[str], line_numbers: list[int],
                 decimal_comma: bool) -> np.ndarray:
    """One column as float64; an empty cell is NaN, anything else that is not a number an error naming it."""
    if decimal_comma:
        cells = [cell.replace(",", ".") for cell in cells]
    try:
        return np.array([cell or "nan" for cell in cells], dtype=np.float64)
    except ValueError:
        for cell, number in zip(cells, line_numbers):
            if cell and not _is_number(cell):
                raise RecordError(record_id, f"{file_name}: column {label!r} has a non-number {cell!r} on line "
                                             f"{number}") from None
        raise


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _split_unit(column: str) -> tuple[str, str | None]:
    """``"V1 (uV)"`` / ``"V1 [mV]"`` -> ("V1", "uV"); no unit -> (column, None)."""
    match = re.fullmatch(r"(.*?)\s*[\(\[]\s*([^\)\]]+?)\s*[\)\]]", column)
    if match and match.group(2).lower().replace("µ", "u").replace("μ", "u") in ("uv", "mv", "v", "microvolts",
                                                                                  "millivolts", "volts"):
        return match.group(1), match.group(2)
    return column, None


def _csv_rate(record_id: str, file_name: str, given: float | None, time: tuple[str, np.ndarray, float] | None,
              notes: list[str]) -> float:
    if time is None:
        if given is None:
            raise RecordError(record_id, f"{file_name}: a CSV file does not carry its sampling rate; give it "
                                         "(--sampling-rate HZ, or the sampling_rate field of an upload)")
        return _check_rate(record_id, file_name, given)
    column, values, seconds = time
    steps = np.diff(values) * seconds
    if steps.size == 0 or not np.all(np.isfinite(steps)) or np.median(steps) <= 0:
        raise RecordError(record_id, f"{file_name}: time column {column!r} does not increase")
    step = float(np.median(steps))
    if np.max(np.abs(steps - step)) > 0.01 * step:
        raise RecordError(record_id, f"{file_name}: time column {column!r} is not evenly spaced")
    from_time = 1.0 / step
    if given is None:
        notes.append(f"sampling rate {from_time:.6g} Hz taken from the time column {column!r}")
        return from_time
    if abs(from_time - given) > 0.01 * given:
        raise RecordError(record_id, f"{file_name}: time column {column!r} gives {from_time:.6g} Hz, "
                                     f"the sampling rate given is {given:g} Hz")
    return _check_rate(record_id, file_name, given)


# ---- dispatch -----------------------------------------------------------------------------------------

READERS: dict[str, Callable[..., ECGRecord]] = {
    ".edf": read_edf, ".bdf": read_edf, ".dcm": read_dicom, ".dicom": read_dicom, ".xml": read_xml,
    ".csv": read_csv,
}
FILE_SUFFIXES: tuple[str, ...] = tuple(READERS)
NEEDS_SAMPLING_RATE: tuple[str, ...] = (".csv",)


def read_ecg_file(source: Source, *, name: str | None = None, sampling_rate: float | None = None) -> ECGRecord:
    """Read ``source`` (a path, or bytes with their file ``name``) with the reader its extension names."""
    file_name = name if isinstance(source, bytes) else Path(source).name
    suffix = Path(file_name or "").suffix.lower()
    reader = READERS.get(suffix)
    if reader is None:
        raise RecordError(Path(file_name or "input").stem, f"{file_name}: unsupported file type {suffix!r} "
                                                           f"(readable: {', '.join(FILE_SUFFIXES)})")
    if suffix in NEEDS_SAMPLING_RATE:
        return reader(source, name=name, sampling_rate=sampling_rate)
    return reader(source, name=name)
