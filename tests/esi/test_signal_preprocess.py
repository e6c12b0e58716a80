"""Train/serve parity: a model re-applies its training export's signal preprocessing to raw records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from corpora.export import export_reader
from corpora.preprocess import Preprocess
from corpora.ptbxl import PTBXLReader
from esi.model.config import ConfigError
from esi.model.model import ESIConfig
from esi.serve.inference import InputError, fit_to_model
from esi.train.data import CaptionTable, DataError, InMemoryPairs, export_preprocess


@pytest.fixture(scope="module")
def bandpassed_export(ptbxl_root: Path, tmp_path_factory) -> tuple[Path, PTBXLReader, Preprocess]:
    """Eight real PTB-XL records at 500 Hz, exported with the default 0.5-40 Hz band-pass."""
    out = tmp_path_factory.mktemp("export500")
    reader = PTBXLReader(ptbxl_root, rate=500)
    preprocess = Preprocess()
    export_reader(reader, out, preprocess=preprocess, shard_size=4, limit=8, progress=False)
    return out, reader, preprocess


def test_export_preprocess_reads_the_export_config(bandpassed_export) -> None:
    out, _, preprocess = bandpassed_export
    assert export_preprocess(out) == preprocess.params()
    assert export_preprocess(out / "shard-00000.parquet") == preprocess.params()


def test_export_preprocess_without_config_or_with_mixed_configs(bandpassed_export, tmp_path) -> None:
    out, _, _ = bandpassed_export
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(out / "shard-00000.parquet", bare / "shard-00000.parquet")
    assert export_preprocess(bare) is None

    mixed = tmp_path / "mixed"
    for name, params in (("a", Preprocess().params()), ("b", Preprocess(bandpass=(0.5, 150.0)).params())):
        (mixed / name).mkdir(parents=True)
        shutil.copy(out / "shard-00000.parquet", mixed / name / "shard-00000.parquet")
        (mixed / name / "export_config.json").write_text(json.dumps({"preprocess": params}))
    with pytest.raises(DataError, match="different preprocessing"):
        export_preprocess(mixed)


def test_raw_record_reaches_the_model_exactly_as_training_data_did(bandpassed_export) -> None:
    """The signal inference builds from a raw record equals the training loader's signal for it."""
    out, reader, preprocess = bandpassed_export
    ids = reader.record_ids()[:8]
    captions = CaptionTable(texts={rid: "sinus rhythm" for rid in ids}, folds={rid: None for rid in ids}, empty=0)
    pairs = InMemoryPairs(out, captions, None, target_rate=100.0, target_samples=1000)
    assert pairs.record_ids == ids
    for rid, trained_on in zip(ids, pairs.signals, strict=True):
        raw = reader.read(rid)
        served = fit_to_model(raw, 100.0, 1000, warn=False, preprocess=preprocess.params()).signal
        np.testing.assert_allclose(served, trained_on, atol=1e-4)
        # without the stored preprocessing the model would see baseline wander and > 40 Hz content
        unfiltered = fit_to_model(raw, 100.0, 1000, warn=False).signal
        assert np.abs(unfiltered - trained_on).max() > 1e-2


def test_a_record_the_preprocessing_rejects_is_a_clear_input_error(bandpassed_export) -> None:
    _, reader, _ = bandpassed_export
    record = reader.read(reader.record_ids()[0])
    record.signal = record.signal.copy()
    record.signal[3, :] = np.nan  # lead aVR entirely NaN: zero-filled by the shared signal check, with a note
    prepared = fit_to_model(record, 100.0, 1000, preprocess=Preprocess().params())
    assert any("aVR" in note and "zero-filled" in note for note in prepared.notes), prepared.notes
    assert np.isfinite(prepared.signal).all()
    # the check runs before the model's own preprocessing, so an export made with nan="error" is served the same
    strict = fit_to_model(record, 100.0, 1000, preprocess=Preprocess(nan="error").params())
    assert strict.notes == prepared.notes
    record.signal[:, :] = np.nan  # nothing usable left: a clear input error
    with pytest.raises(InputError, match="no usable lead"):
        fit_to_model(record, 100.0, 1000, preprocess=Preprocess().params())


def test_model_config_rejects_invalid_preprocessing() -> None:
    with pytest.raises(ConfigError, match="signal_preprocess|unexpected keyword"):
        ESIConfig.from_dict({"signal_preprocess": {"band": [0.5, 40]}})
    with pytest.raises(ConfigError, match="bandpass"):
        ESIConfig.from_dict({"signal_preprocess": {"bandpass": [40, 0.5]}})
    assert ESIConfig.from_dict({"signal_preprocess": Preprocess().params()}).signal_preprocess["bandpass"] == [0.5, 40.0]


def test_training_saves_the_export_preprocessing_with_the_model(bandpassed_export, tmp_path) -> None:
    from esi.model.model import ESIModel
    from esi.train import load_train_config, model_config_for_data

    out, _, preprocess = bandpassed_export
    config = load_train_config("cpu-default")
    model_config = model_config_for_data(config, out)
    assert model_config.signal_preprocess == preprocess.params()
    # a config that names its own preprocessing keeps it
    own = Preprocess(bandpass=(0.5, 100.0)).params()
    config_own = load_train_config("cpu-default", model_overrides={"signal_preprocess": own})
    assert model_config_for_data(config_own, out).signal_preprocess == own
    # it travels in config.json
    small = ESIConfig.from_dict({**model_config.to_dict(), "ecg": {"depths": [1, 1, 1, 1], "dims": [8, 8, 8, 8]},
                                 "loss": {"caption_weight": 0.0}})
    model = ESIModel(small, load_text_weights=False)
    model.save_pretrained(tmp_path / "m")
    assert ESIModel.from_pretrained(tmp_path / "m").config.signal_preprocess == preprocess.params()


def test_inference_wrapper_applies_the_model_preprocessing(bandpassed_export) -> None:
    """ESIInference.prepare (used by zeroshot, search, retrieve, caption and the API) re-applies it."""
    from esi.model.factory import create_model
    from esi.serve.inference import ESIInference

    _, reader, preprocess = bandpassed_export
    model = create_model("micro", signal_preprocess=preprocess.params(), loss={"caption_weight": 0.0},
                         decoder={"restrict_vocab": False})
    inference = ESIInference(model)
    raw = reader.read(reader.record_ids()[0])
    expected = fit_to_model(raw, 100.0, 1000, warn=False, preprocess=preprocess.params()).signal
    np.testing.assert_array_equal(inference.prepare(raw, warn=False).signal, expected)
    assert not np.allclose(ESIInference(create_model("micro", loss={"caption_weight": 0.0},
                                                     decoder={"restrict_vocab": False})).prepare(raw, warn=False).signal,
                           expected, atol=1e-2)


@pytest.mark.parametrize("preprocess", [
    Preprocess(),
    Preprocess(target_rate=250, baseline=True, normalise="zscore", duration_s=12.0, crop="centre"),
], ids=["default", "baseline-250Hz-zscore-padded"])
def test_export_path_and_serving_path_give_identical_arrays(ptbxl_root: Path, tmp_path: Path, preprocess) -> None:
    """The same raw PTB-XL records, (a) exported by ``corpora export`` and loaded by the training loader with
    the preprocessing read back from the export, (b) served through ``fit_to_model``: bit-identical arrays."""
    reader = PTBXLReader(ptbxl_root, rate=500)
    export_reader(reader, tmp_path / "export", preprocess=preprocess, shard_size=2, limit=3, progress=False)
    ids = reader.record_ids()[:3]
    captions = CaptionTable(texts={rid: "sinus rhythm" for rid in ids}, folds={rid: None for rid in ids}, empty=0)
    trained = InMemoryPairs(tmp_path / "export", captions, None, target_rate=100.0, target_samples=1000)
    assert trained.record_ids == ids
    saved = export_preprocess(tmp_path / "export")  # what training stores as the model's signal_preprocess
    for rid, row in zip(ids, trained.signals, strict=True):
        served = fit_to_model(reader.read(rid), 100.0, 1000, warn=False, preprocess=saved)
        assert served.signal.dtype == row.dtype == np.float32
        np.testing.assert_array_equal(served.signal, row)


def test_serving_a_record_does_not_import_the_training_data_module() -> None:
    import subprocess
    import sys

    code = ("import sys, esi.serve.inference, esi.serve.api.app, esi.serve.search, esi.eval.suite; "
            "assert 'esi.train.data' not in sys.modules, 'esi.train.data was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
