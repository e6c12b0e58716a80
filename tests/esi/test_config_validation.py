"""Typed, range-checked configs: a bad value fails when the config is loaded, naming its dotted key and the
value, with exit code 2 and no traceback, before the run directory is made or any signal is read."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from esi.cli.main import main
from esi.model.config import ConfigError, from_dict
from esi.model.factory import create_model, resolve_model_config
from esi.model.model import ESIConfig
from esi.train import TrainConfig, load_train_config


def _write_config(tmp_path, **train) -> str:
    config = {"model": "nano", "epochs": 1, "batch_size": 8, "device": "cpu", "num_threads": 1, **train}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _pretrain(tmp_path, esi_pairs, config: str, *extra: str) -> int:
    signals, captions = esi_pairs
    return main(["pretrain", "--config", config, "--captions", str(captions), "--data", str(signals),
                 "--out", str(tmp_path / "run"), "--no-progress", *extra])


# (training config entries, text the error must contain: the dotted key and the bad value)
BAD_TRAIN_CONFIGS = [
    ({"grad_clip": -1}, "grad_clip: must be > 0, got -1"),
    ({"lr": "abc"}, "lr: expected float, got 'abc'"),
    ({"lr": -1}, "lr: must be > 0, got -1"),
    ({"lr": math.nan}, "lr: must be a finite number, got nan"),
    ({"lr": math.inf}, "lr: must be a finite number, got inf"),
    ({"epochs": "3"}, "epochs: expected int, got '3'"),
    ({"epochs": 1.5}, "epochs: expected int, got 1.5"),
    ({"epochs": True}, "epochs: expected int, got True"),
    ({"epochs": 0}, "epochs: must be >= 1, got 0"),
    ({"weight_decay": -5}, "weight_decay: must be >= 0, got -5"),
    ({"warmup_epochs": -3}, "warmup_epochs: must be >= 0, got -3"),
    ({"num_threads": 0}, "num_threads: must be >= 1, got 0"),
    ({"max_steps": 0}, "max_steps: must be >= 1, got 0"),
    ({"batch_size": 0}, "batch_size: must be >= 1, got 0"),
    ({"val_batch_size": -2}, "val_batch_size: must be >= 1, got -2"),
    ({"grad_accum": 0}, "grad_accum: must be >= 1, got 0"),
    ({"log_every_steps": 0}, "log_every_steps: must be >= 1, got 0"),
    ({"keep_checkpoints": -1}, "keep_checkpoints: must be >= 0, got -1"),
    ({"betas": [0.9, 1.0]}, "betas[1]: must be < 1, got 1.0"),
    ({"betas": [0.9]}, "betas: needs at least 2 value(s), got [0.9]"),
    ({"betas": [0.9, 0.99, 0.999]}, "betas: takes at most 2 value(s)"),
    ({"betas": [-0.1, 0.9]}, "betas[0]: must be >= 0, got -0.1"),
    ({"lr_decay_factor": 0}, "lr_decay_factor: must be > 0, got 0"),
    ({"lr_decay_factor": 1.5}, "lr_decay_factor: must be <= 1, got 1.5"),
    ({"lr_decay_every_epochs": 0}, "lr_decay_every_epochs: must be > 0, got 0"),
    ({"train_folds": [1.5]}, "train_folds[0]: expected int, got 1.5"),
    ({"train_folds": "1,2"}, "train_folds: expected list[int], got '1,2'"),
    ({"precision": "fp16"}, "precision: must be one of ['auto', 'bf16', 'fp32'], got 'fp16'"),
    ({"model_overrides": {"ecg": {"dims": [32, 64, -128, 256]}}}, "model_overrides.ecg.dims[2]: must be >= 1, got -128"),
    ({"model_overrides": {"ecg": {"dims": "abc"}}}, "model_overrides.ecg.dims: expected list[int], got 'abc'"),
    ({"model_overrides": {"ecg": {"depths": []}}}, "model_overrides.ecg.depths: needs at least 1 value(s)"),
    ({"model_overrides": {"ecg": {"drop_path_rate": 1.0}}}, "model_overrides.ecg.drop_path_rate: must be < 1, got 1.0"),
    ({"model_overrides": {"ecg": 5}}, "model_overrides.ecg: expected a mapping, got 5"),
    ({"model_overrides": {"embed_dim": 0}}, "model_overrides.embed_dim: must be >= 1, got 0"),
    ({"model_overrides": {"sampling_rate": 0}}, "model_overrides.sampling_rate: must be > 0, got 0"),
    ({"model_overrides": {"n_samples": 0}}, "model_overrides.n_samples: must be >= 1, got 0"),
    ({"model_overrides": {"decoder": {"heads": 0}}}, "model_overrides.decoder.heads: must be >= 1, got 0"),
    ({"model_overrides": {"decoder": {"layers": "2"}}}, "model_overrides.decoder.layers: expected int, got '2'"),
    ({"model_overrides": {"loss": {"caption_weight": -1}}}, "model_overrides.loss.caption_weight: must be >= 0"),
    ({"model_overrides": {"text": {"max_length": 0}}}, "model_overrides.text.max_length: must be >= 1, got 0"),
    ({"augmentation": {"timeout": 0.1}}, "augmentation: unknown key(s) ['timeout'] (allowed: ['jitter', 'scaling'"),
    ({"augmentation": {"time_out": 1.0}}, "augmentation.time_out must be < 1"),
    ({"augmentation": {"jitter": -0.1}}, "augmentation.jitter must be a finite number >= 0, got -0.1"),
    ({"augmentation": {"scaling": "x"}}, "augmentation.scaling: expected float, got 'x'"),
    ({"augmentation": "strong"}, "augmentation: expected a mapping, got 'strong'"),
]


@pytest.mark.parametrize(("entries", "message"), BAD_TRAIN_CONFIGS, ids=[str(c[0]) for c in BAD_TRAIN_CONFIGS])
def test_bad_training_config_exits_2_naming_the_key(entries, message, esi_pairs, tmp_path, capsys) -> None:
    code = _pretrain(tmp_path, esi_pairs, _write_config(tmp_path, **entries))
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # failed at load time: no run folder


@pytest.mark.parametrize("value", ["-5", "0"])
def test_max_steps_flag_must_be_positive(value, esi_pairs, tmp_path, capsys) -> None:
    code = _pretrain(tmp_path, esi_pairs, _write_config(tmp_path), "--max-steps", value)
    assert code == 2
    assert f"max_steps: must be >= 1, got {value}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_folds_without_data_fail_before_the_run_folder_or_any_signal(esi_pairs, tmp_path, capsys,
                                                                              monkeypatch) -> None:
    import esi.train.loop as train_module

    def no_signal_reads(*args, **kwargs):
        raise AssertionError("signals were read before train_folds was checked")

    monkeypatch.setattr(train_module, "_build_sources", no_signal_reads)
    code = _pretrain(tmp_path, esi_pairs, _write_config(tmp_path, train_folds=[42]))
    err = capsys.readouterr().err
    assert code == 2
    assert "train_folds: [42]" in err and "fold(s) [42] have no records" in err
    assert "[1, 2, 3, 4, 5, 6, 7, 8, 9]" in err  # the folds the data does have
    assert not (tmp_path / "run").exists()
    # every record in val_folds: nothing left to train on, although each listed fold exists
    code = _pretrain(tmp_path, esi_pairs, _write_config(tmp_path, train_folds=None,
                                                          val_folds=list(range(1, 10))))
    assert code == 2
    assert "select no record" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_folds_partly_without_data_warn_and_proceed(esi_pairs, caplog) -> None:
    signals, _ = esi_pairs
    config = TrainConfig(train_folds=[1, 42])
    with caplog.at_level("WARNING", logger="esi.train"):
        config.check_folds(signals)
    assert "fold(s) [42] have no records" in caplog.text


def test_unknown_keys_are_still_named(tmp_path) -> None:
    path = _write_config(tmp_path, model_overrides={"ecg": {"dimz": [1]}})
    with pytest.raises(ConfigError, match=r"unknown config key 'ecg\.dimz' in model_overrides"):
        load_train_config(path)
    with pytest.raises(ConfigError, match="'learning_rate'"):
        from_dict(TrainConfig, {"learning_rate": 0.1})


def test_a_bad_model_file_is_named_as_the_model_not_as_overrides(tmp_path) -> None:
    model_file = tmp_path / "model.json"
    model_file.write_text(json.dumps({"ecg": {"depths": [1, 1], "dims": [8, 0]}}))
    with pytest.raises(ConfigError, match=r"model '.*model\.json': ecg\.dims\[1\]: must be >= 1, got 0"):
        load_train_config(_write_config(tmp_path, model=str(model_file)))
    # ... and overrides may repair it
    config = load_train_config(_write_config(tmp_path, model=str(model_file),
                                             model_overrides={"ecg": {"dims": [8, 16]}}))
    assert config.model_config().ecg.dims == [8, 16]


def test_model_config_types_and_ranges_outside_training() -> None:
    with pytest.raises(ConfigError, match=r"^ecg\.dims\[0\]: must be >= 1, got 0$"):
        create_model("nano", ecg={"dims": [0, 64, 128, 256]})
    with pytest.raises(ConfigError, match=r"^decoder\.mlp_ratio: expected float, got 'x' \(str\)$"):
        resolve_model_config("nano", decoder={"mlp_ratio": "x"})
    with pytest.raises(ConfigError, match=r"^sampling_rate: must be > 0, got -100\.0$"):
        ESIConfig.from_dict({"sampling_rate": -100})
    with pytest.raises(ConfigError, match=r"^loss\.contrastive_weight: must be a finite number, got nan$"):
        ESIConfig.from_dict({"loss": {"contrastive_weight": math.nan}})


def test_valid_values_are_accepted_and_normalised(tmp_path) -> None:
    config = from_dict(TrainConfig, {"lr": 1, "betas": (0.5, 0.9), "max_steps": None, "grad_clip": 2,
                                     "keep_checkpoints": 0, "train_folds": None})
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.betas == [0.5, 0.9] and config.grad_clip == 2.0
    assert ESIConfig.from_dict({"sampling_rate": 500}).sampling_rate == 500.0
    for preset in ("esi-paper", "esi-tiny-paper", "cpu-default"):
        load_train_config(preset).model_config()


def test_yaml_exponent_without_a_dot_gets_a_hint(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("model: nano\nlr: 5e-5\n")  # YAML 1.1 reads this as the string '5e-5'
    with pytest.raises(ConfigError, match=r"lr: expected float, got '5e-5' \(str\).*write 5\.0e-5"):
        load_train_config(str(path))


# ---- serve: limits checked at start-up, before the model is loaded ------------------------------------
@pytest.mark.parametrize(("flag", "value"), [("--max-body-mb", "-1"), ("--max-body-mb", "0"),
                                             ("--max-body-mb", "nan"), ("--max-body-mb", "1e-9"),
                                             ("--max-upload-seconds", "0"), ("--max-upload-seconds", "-3"),
                                             ("--port", "70000")])
def test_serve_rejects_unusable_limits_at_start_up(flag, value, tmp_path, capsys) -> None:
    # the model directory does not exist: the limit error comes first, before anything is loaded
    code = main(["serve", "--model", str(tmp_path / "no-model"), "--store", str(tmp_path / "store"), flag, value])
    err = capsys.readouterr().err
    assert code == 2
    assert f"error: {flag}" in err
    assert "not an ESI model directory" not in err and "Traceback" not in err
