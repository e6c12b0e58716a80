"""Preprocess: resampling, filtering, length, normalisation, NaN and missing/flat leads."""

from __future__ import annotations

import numpy as np
import pytest

from corpora.base import ECGRecord, RecordError
from corpora.cinc import CincReader
from corpora.preprocess import Preprocess
from corpora.ptbxl import PTBXLReader


def _record(signal: np.ndarray, fs: float, **kwargs) -> ECGRecord:
    return ECGRecord(record_id="t1", dataset="test", signal=signal.astype(np.float32), sampling_rate=fs, **kwargs)


def _sines(fs: float, seconds: float, *freqs: float) -> np.ndarray:
    t = np.arange(int(fs * seconds)) / fs
    return np.tile(sum(np.sin(2 * np.pi * f * t) for f in freqs), (12, 1))


def _dominant(signal: np.ndarray, fs: float) -> float:
    spectrum = np.abs(np.fft.rfft(signal - signal.mean()))
    return float(np.fft.rfftfreq(signal.size, 1 / fs)[np.argmax(spectrum)])


@pytest.mark.parametrize(("native", "target"), [(500, 100), (1000, 250), (500, 250), (257, 100), (100, 500)])
def test_resampling_keeps_a_sinusoids_frequency_and_amplitude(native, target) -> None:
    out = Preprocess(target_rate=target, bandpass=None, duration_s=10.0)(_record(_sines(native, 10, 7.0), native))
    assert out.sampling_rate == float(target)
    assert out.signal.shape == (12, 10 * target) and out.signal.dtype == np.float32
    assert _dominant(out.signal[0], target) == pytest.approx(7.0, abs=0.1)
    core = out.signal[0, target:-target]  # away from the FIR edge transients
    assert np.abs(core).max() == pytest.approx(1.0, abs=0.03)


def test_downsampling_suppresses_content_above_the_new_nyquist() -> None:
    out = Preprocess(target_rate=100, bandpass=None)(_record(_sines(500, 10, 5.0, 70.0), 500))
    spectrum = np.abs(np.fft.rfft(out.signal[0]))
    freqs = np.fft.rfftfreq(1000, 1 / 100)
    alias = spectrum[np.argmin(np.abs(freqs - 30.0))]  # 70 Hz would alias to 30 Hz
    assert alias < 0.02 * spectrum[np.argmin(np.abs(freqs - 5.0))]


def test_bandpass_removes_drift_and_mains_but_keeps_the_band() -> None:
    fs = 500
    out = Preprocess(bandpass=(0.5, 40.0))(_record(_sines(fs, 10, 0.1, 10.0, 60.0), fs))
    spectrum = np.abs(np.fft.rfft(out.signal[0]))
    freqs = np.fft.rfftfreq(out.signal.shape[1], 1 / fs)

    def power(f: float) -> float:
        return float(spectrum[np.argmin(np.abs(freqs - f))])

    assert power(10.0) > 0.9 * 2500  # an N-sample unit sine has FFT magnitude N/2
    # Order-4 Butterworth run forward and backward: |H(60 Hz)|^2 = 1 / (1 + 1.5**8) ~ 0.038.
    assert power(60.0) < 0.05 * power(10.0) and power(0.1) < 0.05 * power(10.0)


def test_bandpass_high_edge_above_nyquist_applies_only_the_high_pass() -> None:
    out = Preprocess(bandpass=(0.5, 60.0))(_record(_sines(100, 10, 0.1, 45.0), 100))
    assert "bandpass_note" in out.extra
    assert _dominant(out.signal[0], 100) == pytest.approx(45.0, abs=0.2)


def test_crop_start_and_centre_and_zero_padding() -> None:
    ramp = np.tile(np.arange(5000, dtype=np.float64), (12, 1))
    start = Preprocess(duration_s=4.0, bandpass=None)(_record(ramp, 500))
    centre = Preprocess(duration_s=4.0, bandpass=None, crop="centre")(_record(ramp, 500))
    assert start.signal[0, 0] == 0 and start.signal.shape == (12, 2000)
    assert centre.signal[0, 0] == 1500 and centre.extra["crop_start_sample"] == 1500
    padded = Preprocess(duration_s=12.0, bandpass=None, normalise="zscore")(_record(_sines(500, 10, 3.0), 500))
    assert padded.signal.shape == (12, 6000) and padded.extra["padded_samples"] == 1000
    assert not padded.signal[:, 5000:].any()
    body = padded.signal[:, :5000]
    assert np.allclose(body.mean(axis=1), 0, atol=1e-5) and np.allclose(body.std(axis=1), 1, atol=1e-4)


def test_minmax_maps_each_lead_to_minus_one_one() -> None:
    data = _sines(500, 10, 3.0) * np.arange(1, 13)[:, None]
    out = Preprocess(bandpass=None, normalise="minmax")(_record(data, 500))
    assert np.allclose(out.signal.min(axis=1), -1) and np.allclose(out.signal.max(axis=1), 1)


def test_nan_policies() -> None:
    data = _sines(500, 10, 3.0)
    data[4, 1000:1010] = np.nan
    record = _record(data, 500)
    interpolated = Preprocess(bandpass=None)(record)
    assert np.isfinite(interpolated.signal).all()
    np.testing.assert_allclose(interpolated.signal[4, 1000:1010],
                               np.linspace(data[4, 999], data[4, 1010], 12)[1:-1], atol=1e-5)
    assert interpolated.extra["nan_samples"] == {"aVL": 10}
    zeroed = Preprocess(bandpass=None, nan="zero")(record)
    assert not zeroed.signal[4, 1000:1010].any()
    with pytest.raises(RecordError, match="aVL has 10 NaN samples"):
        Preprocess(nan="error")(record)
    assert np.isnan(record.signal).sum() == 10  # input left untouched


def test_all_nan_lead_becomes_a_reported_zero_filled_missing_lead() -> None:
    data = _sines(500, 10, 3.0)
    data[7] = np.nan
    out = Preprocess(normalise="zscore")(_record(data, 500))
    assert out.missing_leads == ["V2"] and out.extra["zero_filled_leads"] == ["V2"]
    assert not out.signal[7].any() and np.isfinite(out.signal).all()
    with pytest.raises(RecordError, match="V2 is entirely NaN"):
        Preprocess(nan="error")(_record(data, 500))


def test_flat_leads_are_reported() -> None:
    data = _sines(500, 10, 3.0)
    data[9] = 0.3
    out = Preprocess(normalise="zscore")(_record(data, 500))
    assert out.extra["flat_leads"] == ["V4"] and not out.signal[9].any()
    kept = Preprocess(bandpass=None)(_record(data, 500))
    assert kept.extra["flat_leads"] == ["V4"] and np.all(kept.signal[9] == np.float32(0.3))


def test_baseline_removal_takes_out_slow_wander_from_a_real_ecg(ptbxl_root) -> None:
    record = PTBXLReader(ptbxl_root, rate=500).read("1")
    t = np.arange(5000) / 500
    wandering = _record(record.signal + 0.8 * np.sin(2 * np.pi * 0.2 * t), 500)
    cleaned = Preprocess(bandpass=None, baseline=True)(wandering)
    reference = Preprocess(bandpass=None, baseline=True)(_record(record.signal, 500))
    assert np.abs(cleaned.signal - reference.signal).mean() < 0.05
    assert np.abs(wandering.signal - record.signal).mean() > 0.4


def test_real_records_from_mixed_rates_come_out_uniform(cinc_root) -> None:
    reader = CincReader(cinc_root)
    transform = Preprocess(target_rate=100, duration_s=10.0)
    for record_id in ("S0001", "A0001", "E00001", "HR00001"):
        record = reader.read(record_id)
        out = transform(record)
        assert out.signal.shape == (12, 1000) and out.sampling_rate == 100.0
        assert out.extra["original_sampling_rate"] == record.sampling_rate
        assert out.labels == record.labels and out.labels is not record.labels


def test_invalid_parameters_and_inputs() -> None:
    with pytest.raises(ValueError, match="normalise"):
        Preprocess(normalise="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bandpass"):
        Preprocess(bandpass=(40.0, 0.5))
    with pytest.raises(ValueError, match="target_rate"):
        Preprocess(target_rate=0)
    with pytest.raises(RecordError, match="metadata-only"):
        Preprocess()(ECGRecord("m", "test", None, None))
    with pytest.raises(RecordError, match="too short"):
        Preprocess()(_record(np.ones((12, 20)), 500))


# ---- the steps and the model-input stage (corpora.preprocessors) ------------------------------------------


@pytest.mark.parametrize(("native", "target", "up", "down"),
                         [(500, 100, 1, 5), (257, 100, 100, 257), (1000, 250, 1, 4), (100, 500, 5, 1), (360, 100, 5, 18)])
def test_resampling_ratio_is_exact_for_integer_rates(native, target, up, down) -> None:
    from fractions import Fraction

    from corpora.preprocessors import resampling_ratio

    ratio = resampling_ratio(native, target)
    assert (ratio.numerator, ratio.denominator) == (up, down)
    # the training loader's old rule (float quotient, denominator <= 1000) gives the same ratio
    assert ratio == Fraction(target / native).limit_denominator(1000)


def test_resampling_ratio_of_a_non_integer_rate_stays_small() -> None:
    from corpora.preprocessors import MAX_RATIO_DENOMINATOR, resampling_ratio

    ratio = resampling_ratio(1000 / 3, 100)
    assert ratio.denominator <= MAX_RATIO_DENOMINATOR and float(ratio) == pytest.approx(0.3, rel=1e-6)


def test_preprocess_is_a_pipeline_of_its_steps() -> None:
    from corpora.preprocessors import BandPass, FitLength, HoldZeroFilled, NanRepair, Normalise, Resample

    steps = Preprocess(target_rate=100, normalise="zscore", nan="zero").pipeline().steps
    assert steps == (NanRepair("zero"), BandPass(0.5, 40.0, order=4), Resample(100), FitLength(seconds=10.0),
                     Normalise("zscore", scope="lead"), HoldZeroFilled())
    record = _record(_sines(500, 10, 3.0, 12.0) * np.arange(1, 13)[:, None], 500)
    direct = Preprocess(target_rate=100, normalise="zscore")(record).signal
    pipeline = Preprocess(target_rate=100, normalise="zscore").pipeline()
    np.testing.assert_array_equal(pipeline(record.signal, 500, "t1"), direct)


def test_model_input_stage_z_scores_the_whole_record_with_padding() -> None:
    from corpora.preprocess import MODEL_INPUT_EPS, model_input

    data = _sines(500, 6, 3.0) * np.arange(1, 13)[:, None]
    data[2, 40:60] = np.nan
    out = model_input(100.0, 1000)(data, 500.0, "t1")
    assert out.shape == (12, 1000) and out.dtype == np.float32 and np.isfinite(out).all()
    assert abs(float(out.mean())) < 1e-5 and float(out.std()) == pytest.approx(1 / (1 + MODEL_INPUT_EPS), abs=1e-4)
    padding = out[:, 600:]  # 6 s of 10: the padding is z-scored with the record, so it is one constant
    assert np.ptp(padding) == 0 and padding[0, 0] != 0
    # leads keep their relative scale (one z-score for all), unlike the export's per-lead normalisation
    assert np.std(out[11, :600]) == pytest.approx(12 * np.std(out[0, :600]), rel=1e-3)
