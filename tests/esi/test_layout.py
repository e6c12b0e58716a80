"""The package layout keeps its promises: old import paths still work for one release, the lazy package
exports resolve, and the device choice fails clearly where CUDA is missing."""

from __future__ import annotations

import importlib

import pytest

from esi.model.device import DeviceError, resolve_device


@pytest.mark.parametrize("package", ["esi.model", "esi.train"])
def test_lazy_exports_match_all_and_resolve(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(n for names in module._EXPORTS.values() for n in names)
    for name in module.__all__:
        value = getattr(module, name)
        source = next(m for m, names in module._EXPORTS.items() if name in names)
        assert value is getattr(importlib.import_module(source), name)
        assert name in dir(module)
    with pytest.raises(AttributeError, match="no attribute 'not_there'"):
        module.not_there  # noqa: B018


@pytest.mark.parametrize("old,new", [
    ("esi.data", "esi.train.data"), ("esi.views", "esi.train.views"), ("esi.api.app", "esi.serve.api.app"),
    ("esi.api.backend", "esi.serve.api.backend"), ("esi.api.uploads", "esi.serve.api.uploads"),
    ("esi.api.cli", "esi.cli.serve"),
])
def test_moved_modules_keep_their_old_path(old: str, new: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(new)


@pytest.mark.parametrize("old,name,new", [
    ("esi.evaluate", "run_evaluation", "esi.eval.suite"), ("esi.evaluate", "multilabel_auc", "esi.eval.metrics"),
    ("esi.evaluate", "to_json", "esi.model.io"), ("esi.evaluate", "parse_folds", "esi.cli.common"),
    ("esi.inference", "ESIInference", "esi.serve.inference"), ("esi.inference", "save_random_model", "esi.model.factory"),
    ("esi.zeroshot", "ZeroShotClassifier", "esi.zeroshot.classifier"), ("esi.zeroshot", "embed_texts", "esi.model.embed"),
    ("esi.zeroshot", "load_templates", "esi.zeroshot.templates"), ("esi.model", "ESIModel", "esi.model.model"),
    ("esi.train", "pretrain", "esi.train.loop"), ("esi.train", "TrainConfig", "esi.train.config"),
])
def test_split_modules_re_export_their_old_names(old: str, name: str, new: str) -> None:
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name)


def test_model_configs_and_presets_load_by_name_from_their_packages() -> None:
    from esi.model.factory import get_model_config, list_models
    from esi.train.config import list_presets, load_train_config

    assert {"micro", "nano", "tiny", "base"} <= set(list_models())
    assert get_model_config("nano")["ecg"]["dims"] == [32, 64, 128, 256]
    assert {"cpu-default", "esi-paper", "esi-tiny-paper"} <= set(list_presets())
    assert load_train_config("cpu-default").model == "nano"


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match=r"--device cuda: CUDA is not available .* use --device cpu"):
        resolve_device("cuda", "--device")
    with pytest.raises(DeviceError, match="device must be one of auto, cpu, cuda, got 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == resolve_device("cuda") == "cuda"
