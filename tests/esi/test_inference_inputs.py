"""Record inputs for ESI inference: WFDB and CinC paths, resampling notes, missing leads; caption/retrieve CLIs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import wfdb

from corpora.base import STANDARD_LEADS, ECGRecord
from esi.cli.main import main
from esi.serve.inference import (
    ESIInference,
    InputError,
    ResampledWarning,
    fit_to_model,
    load_record,
)


def _write_wfdb(folder: Path, name: str, fs: int, leads: tuple[str, ...], seconds: float = 10.0) -> Path:
    """A realistic record: a ~1 Hz beat-like waveform plus noise, in mV, written with wfdb."""
    rng = np.random.default_rng(0)
    t = np.arange(int(fs * seconds)) / fs
    beats = np.exp(-((t % 1.0 - 0.3) ** 2) / 0.0005)
    signal = np.stack([beats * (0.5 + 0.1 * i) + 0.02 * rng.normal(size=t.size) for i in range(len(leads))], axis=1)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(leads), sig_name=list(leads), p_signal=signal,
                fmt=["16"] * len(leads), write_dir=str(folder))
    return folder / name


def test_record_at_unexpected_rate_is_resampled_and_says_so(tmp_path: Path) -> None:
    path = _write_wfdb(tmp_path, "rate250", 250, STANDARD_LEADS)
    record = load_record(str(path) + ".hea")
    assert record.sampling_rate == 250 and record.signal.shape == (12, 2500)
    with pytest.warns(ResampledWarning, match="rate250: resampled from 250 Hz to 100 Hz"):
        prepared = fit_to_model(record, 100.0, 1000)
    assert prepared.signal.shape == (12, 1000) and prepared.signal.dtype == np.float32
    assert prepared.notes == ["resampled from 250 Hz to 100 Hz"]
    assert abs(float(prepared.signal.mean())) < 1e-4 and float(prepared.signal.std()) == pytest.approx(1.0, abs=1e-3)


def test_short_and_long_records_are_padded_or_cropped_with_a_note(tmp_path: Path) -> None:
    short = load_record(_write_wfdb(tmp_path, "short", 100, STANDARD_LEADS, seconds=6.0))
    prepared = fit_to_model(short, 100.0, 1000)
    assert prepared.notes == ["zero-padded from 6 s to 10 s"] and prepared.signal.shape == (12, 1000)
    long = load_record(_write_wfdb(tmp_path, "long", 100, STANDARD_LEADS, seconds=15.0))
    assert fit_to_model(long, 100.0, 1000).notes == ["cropped to the first 10 s of 15 s"]


def test_missing_leads_are_rejected_by_name(tmp_path: Path) -> None:
    path = _write_wfdb(tmp_path, "tenleads", 100, tuple(lead for lead in STANDARD_LEADS if lead not in ("V5", "V6")))
    with pytest.raises(InputError, match=r"tenleads: .*V5 absent, V6 absent"):
        load_record(path)
    zero_filled = ECGRecord("z", "x", np.ones((12, 1000), np.float32), 100.0, missing_leads=["aVL"])
    with pytest.raises(InputError, match="z: missing leads aVL"):
        fit_to_model(zero_filled, 100.0, 1000)
    with pytest.raises(InputError, match=r"must be \(12, T\)"):
        fit_to_model(ECGRecord("y", "x", np.ones((8, 1000), np.float32), 100.0), 100.0, 1000)


def test_cinc_and_ptbxl_paths(cinc_root: Path, ptbxl_root: Path) -> None:
    for given in ("Q0630.mat", "Q0630.hea", "Q0630"):
        record = load_record(cinc_root / given)
        assert record.record_id == "Q0630" and record.signal.shape[0] == 12
        assert set(record.labels) == {"17338001", "164865005"} and record.label_vocabulary == "snomed"
    georgia = load_record(cinc_root / "E00001.hea")  # header wfdb.rdheader rejects; tolerant parser
    assert georgia.sampling_rate == 500 and georgia.signal.shape == (12, 5000)
    with pytest.raises(InputError, match="I0001: signal file missing"):
        load_record(cinc_root / "I0001.hea")
    with pytest.raises(InputError, match="no WFDB header"):
        load_record(cinc_root / "does_not_exist")
    ptb = load_record(ptbxl_root / "records100" / "00000" / "00001_lr")
    assert ptb.sampling_rate == 100 and ptb.signal.shape == (12, 1000)


def test_embeddings_and_captions(model_dir: Path, cinc_root: Path) -> None:
    inference = ESIInference(model_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = inference.prepare_path(cinc_root / "Q0630")
    assert any(issubclass(w.category, ResampledWarning) for w in caught)
    embeddings = inference.embed_signals(np.stack([prepared.signal, prepared.signal]))
    assert embeddings.shape == (2, inference.embed_dim)
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert np.allclose(embeddings[0], embeddings[1], atol=1e-6)
    greedy = inference.caption(prepared.signal, max_len=8)
    beam = inference.caption(prepared.signal, method="beam", num_beams=2, max_len=8)
    assert len(greedy) == len(beam) == 1 and isinstance(greedy[0], str) and isinstance(beam[0], str)
    with pytest.raises(InputError, match=r"\(N, 12, T\)"):
        inference.embed_signals(np.zeros((2, 11, 1000), np.float32))


def test_caption_and_retrieve_cli(model_dir: Path, cinc_root: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    record = str(cinc_root / "Q0630")
    assert main(["caption", "--model", str(model_dir), "--record", record, "--max-len", "6", "--json"]) == 0
    caption = json.loads(capsys.readouterr().out)
    assert caption["record"] == "Q0630" and isinstance(caption["caption"], str)
    assert caption["notes"] == ["resampled from 500 Hz to 100 Hz", "cropped to the first 10 s of 12 s"]
    captions = tmp_path / "captions.txt"
    captions.write_text("Sinus rhythm.\nAtrial fibrillation.\nSinus rhythm.\nRight bundle branch block.\n")
    assert main(["retrieve", "--model", str(model_dir), "--record", record, "-k", "5", "--texts", str(captions),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [h["document"] for h in result["hits"]].count("Sinus rhythm.") == 1  # duplicates collapsed
    assert len(result["hits"]) == 3
    scores = [h["score"] for h in result["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert main(["caption", "--model", str(model_dir), "--record", str(cinc_root / "nothing")]) == 2
    assert "no WFDB header" in capsys.readouterr().err
