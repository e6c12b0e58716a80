"""Pretraining: CLI run dir layout and metrics, exact resume, NaN stop keeping the last good checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from esi.cli.main import main
from esi.model.model import ESIModel
from esi.train import TrainingDiverged, describe_run, load_train_config, pretrain


def _config_file(tmp_path, model_overrides: dict, **train) -> str:
    config = {"model": "nano", "model_overrides": model_overrides, "epochs": 2, "batch_size": 8, "lr": 1e-3,
              "warmup_epochs": 0.5, "lr_decay_every_epochs": 1, "log_every_steps": 2, "val_batch_size": 6,
              "device": "cpu", "num_threads": 1, **train}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_cli_run_then_resume_equals_uninterrupted(esi_pairs, esi_test_model, tmp_path) -> None:
    signals, captions = esi_pairs
    config = _config_file(tmp_path, esi_test_model)
    common = ["pretrain", "--config", config, "--captions", str(captions), "--data", str(signals), "--no-progress"]

    assert main(common + ["--out", str(tmp_path / "full")]) == 0
    records = describe_run(tmp_path / "full")
    data = next(r for r in records if r["event"] == "data")
    assert data["train"]["pairs"] == 48 and data["val"]["pairs"] == 12
    train = [r for r in records if r["event"] == "train"]
    assert train[-1]["step"] == 12  # 48 pairs / 8 per step x 2 epochs
    assert {"loss", "contrastive_loss", "caption_loss", "lr", "logit_scale"} <= set(train[0])
    val = [r for r in records if r["event"] == "val"]
    assert len(val) == 2
    assert {"val_contrastive_loss", "val_acc_ecg_to_text", "val_acc_text_to_ecg"} <= set(val[0])
    # recomputed from the final model (the state of the last validation) on the 12 fold-9 pairs, in order
    from esi.train.data import InMemoryPairs, read_captions

    final = ESIModel.from_pretrained(tmp_path / "full" / "final").eval()
    val_pairs = InMemoryPairs(signals, read_captions(captions), [9], target_rate=final.config.sampling_rate,
                              target_samples=final.config.n_samples)
    hits = {"ecg_to_text": 0, "text_to_ecg": 0}
    count = 0
    with torch.no_grad():
        for batch in val_pairs.batches(0, 6, shuffle=False, drop_last=False):  # val_batch_size 6
            sim = final.encode_ecg(batch.signals) @ final.encode_text(batch.texts).T
            texts = batch.texts
            hits["ecg_to_text"] += sum(texts[j] == texts[i] for i, j in enumerate(sim.argmax(1).tolist()))
            hits["text_to_ecg"] += sum(texts[j] == texts[i] for i, j in enumerate(sim.argmax(0).tolist()))
            count += len(texts)
    assert count == 12
    for direction, n_hits in hits.items():
        assert val[-1][f"val_acc_{direction}"] == pytest.approx(n_hits / count), direction
    state = torch.load(tmp_path / "full" / "checkpoints" / "step_00000012" / "train_state.pt", weights_only=True)
    assert state["step"] == 12 and isinstance(state["rng"]["torch"], torch.Tensor)

    # interrupted mid-epoch 2 (max-steps stop), then resumed
    assert main(common + ["--out", str(tmp_path / "cut"), "--max-steps", "8"]) == 0
    assert json.loads((tmp_path / "cut" / "checkpoints" / "latest.json").read_text())["step"] == 8
    assert main(common + ["--out", str(tmp_path / "cut")]) == 2  # refuses to overwrite without --resume
    assert main(common + ["--out", str(tmp_path / "cut"), "--resume"]) == 0

    full = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    assert full.keys() == resumed.keys()
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
    model = ESIModel.from_pretrained(tmp_path / "cut" / "final")
    assert model.encode_ecg(torch.randn(1, 12, 256)).shape == (1, 32)


def test_unknown_config_key_is_named(tmp_path, esi_pairs, capsys) -> None:
    signals, captions = esi_pairs
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": "nano", "learning_rate": 0.1}))
    code = main(["pretrain", "--config", str(path), "--captions", str(captions), "--data", str(signals),
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert "'learning_rate'" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"model": "nano", "model_overrides": {"decoder": {"depth": 2}}}))
    with pytest.raises(ValueError, match="'decoder.depth'"):
        load_train_config(str(path))
    assert {"esi-paper", "esi-tiny-paper", "cpu-default"} <= set(__import__("esi.train").train.list_presets())
    paper = load_train_config("esi-paper")
    assert (paper.lr, paper.batch_size, paper.epochs, paper.warmup_epochs) == (5e-5, 48, 30, 5)
    assert paper.model_config().n_samples == 5000 and paper.model_config().sampling_rate == 500.0


def test_nan_loss_stops_and_keeps_last_good_checkpoint(esi_pairs, esi_test_model, tmp_path, monkeypatch) -> None:
    import esi.train.loop as train_module

    signals, captions = esi_pairs
    config = load_train_config(_config_file(tmp_path, esi_test_model, checkpoint_every_steps=1, epochs=1,
                                            no_cqa=True))
    real = train_module.forward_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    monkeypatch.setattr(train_module, "forward_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="not finite at step 3.*step_00000002"):
        pretrain(config, captions, signals, tmp_path / "run", progress=False)
    latest = json.loads((tmp_path / "run" / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 2
    weights = load_file(str(tmp_path / "run" / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (tmp_path / "run" / "final").exists()


def test_bf16_autocast_path_trains_and_tracks_fp32(esi_pairs, esi_test_model, tmp_path) -> None:
    """``precision: bf16`` (the esi-paper setting on CUDA) runs the same code under CPU autocast: the
    first-step loss matches fp32 to bf16 precision and the run finishes with finite losses."""
    signals, captions = esi_pairs
    losses = {}
    for precision in ("fp32", "bf16"):
        config = load_train_config(_config_file(tmp_path, esi_test_model, precision=precision, epochs=1,
                                                augment=False))
        run = tmp_path / precision
        pretrain(config, captions, signals, run, progress=False)
        train = [r for r in describe_run(run) if r["event"] == "train"]
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in train)
        losses[precision] = train[0]["loss"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.03)
    assert losses["bf16"] != losses["fp32"]  # autocast really ran in bf16


def test_views_and_label_aware_loss_train_resume_exactly_and_save_the_prior(
        esi_pairs, esi_cqa_captions, esi_test_model, tmp_path) -> None:
    """Caption views + exact-set targets + time-out augmentation: a cut-and-resumed run equals an
    uninterrupted one bit for bit, the decoder still learns the full caption, and the model keeps its
    training-fold label counts."""
    from esi.train.data import read_captions

    signals, _ = esi_pairs
    overrides = {**esi_test_model, "loss": {"contrastive_targets": "same_findings"}}
    config = _config_file(tmp_path, overrides, views={"names_per_record": 2},
                          augmentation={"jitter": 0.1, "scaling": 0.1, "time_out": 0.2})
    common = ["pretrain", "--config", config, "--captions", str(esi_cqa_captions), "--data", str(signals),
              "--no-progress"]
    assert main(common + ["--out", str(tmp_path / "full")]) == 0
    assert main(common + ["--out", str(tmp_path / "cut"), "--max-steps", "7"]) == 0
    assert main(common + ["--out", str(tmp_path / "cut"), "--resume"]) == 0
    full = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    for name in full:
        assert torch.equal(full[name], resumed[name]), name

    # each validation scores zero-shot and the two references; best/ is the best zero-shot checkpoint
    records = describe_run(tmp_path / "full")
    val = [r for r in records if r["event"] == "val"]
    assert all({"val_zeroshot_superclass_auc", "val_ref_caption_centroid_auc", "val_ref_ecg_prototype_auc"} <= set(r)
               for r in val)
    best = json.loads((tmp_path / "full" / "best" / "checkpoint.json").read_text())
    assert best["val_zeroshot_superclass_auc"] == max(r["val_zeroshot_superclass_auc"] for r in val)
    end = records[-1]
    assert end["final"] == "last step" and end["best"]["step"] == best["step"]
    # the logged AUC is what the saved best model scores when recomputed from scratch
    from esi.train.data import InMemoryPairs
    from esi.train.monitor import ZeroShotMonitor

    table = read_captions(esi_cqa_captions)
    val_pairs = InMemoryPairs(signals, table, [9], 100.0, 256)
    train_pairs = InMemoryPairs(signals, table, list(range(1, 9)), 100.0, 256)
    prior_counts = {k: float(v) for k, v in table.label_prior(list(range(1, 9)), [9])["labels"].items()}
    monitor = ZeroShotMonitor.create(table, val_pairs.record_ids, train_pairs.record_ids, prior_counts)
    again = monitor(ESIModel.from_pretrained(tmp_path / "full" / "best").eval(), val_pairs.signals, train_pairs.signals,
                    torch.device("cpu"))
    assert again["val_zeroshot_superclass_auc"] == pytest.approx(best["val_zeroshot_superclass_auc"], abs=1e-6)

    prior = json.loads((tmp_path / "full" / "final" / "label_prior.json").read_text())
    assert prior == json.loads(json.dumps(read_captions(esi_cqa_captions).label_prior(
        [1, 2, 3, 4, 5, 6, 7, 8], exclude=[9])))
    # the restricted caption vocabulary comes from the captions alone, not from the view sentences
    vocab = set(json.loads((tmp_path / "full" / "caption_vocab.json").read_text())["token_ids"])
    model = ESIModel.from_pretrained(tmp_path / "full" / "final")
    view_only = model.caption_tokenizer.tokenizer("electrocardiogram tracing", add_special_tokens=False)["input_ids"]
    assert not set(view_only) <= vocab


def test_label_aware_loss_without_finding_column_trains_plain(esi_pairs, esi_test_model, tmp_path, caplog) -> None:
    signals, captions = esi_pairs  # write_pairs captions: no finding_codes / findings column
    overrides = {**esi_test_model, "loss": {"contrastive_targets": "finding_overlap"}}
    config = _config_file(tmp_path, overrides, epochs=1)
    import logging

    with caplog.at_level(logging.WARNING):
        assert main(["pretrain", "--config", config, "--captions", str(captions), "--data", str(signals),
                     "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert "finding_codes" in caplog.text and "one-hot" in caplog.text


def test_ema_weights_are_the_average_of_the_raw_steps_and_resume_exactly(esi_pairs, esi_cqa_captions, esi_test_model,
                                                                         tmp_path, caplog) -> None:
    """``ema_decay``: final/ holds the moving average of the per-step raw weights (recomputed here from a
    checkpoint kept at every step), says so, and a cut-and-resumed run continues the average bit for bit."""
    signals, _ = esi_pairs
    captions = esi_cqa_captions  # with finding codes, so validation scores zero-shot and keeps best/
    decay = 0.8
    config = _config_file(tmp_path, esi_test_model, ema_decay=decay, checkpoint_every_steps=1, keep_checkpoints=0)
    common = ["pretrain", "--config", config, "--captions", str(captions), "--data", str(signals), "--no-progress"]
    import logging

    with caplog.at_level(logging.WARNING):
        assert main(common + ["--out", str(tmp_path / "full")]) == 0
    # 0.8 ** 12 = 0.07 of the first step's weights are left in the average: too short a run for this decay
    assert "ema_decay 0.8 averages over ~5 steps but this run has 12" in caplog.text

    steps = sorted((tmp_path / "full" / "checkpoints").glob("step_*"))
    assert len(steps) == 12
    average: dict[str, torch.Tensor] = {}
    for checkpoint in steps:  # what torch.optim.swa_utils' EMA does: start at step 1, then lerp by 1 - decay
        raw = load_file(str(checkpoint / "model.safetensors"))
        average = dict(raw) if not average else {k: average[k] + (1 - decay) * (raw[k] - average[k]) for k in raw}
    final = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    last_raw = load_file(str(steps[-1] / "model.safetensors"))
    moved = [k for k in final if not torch.equal(final[k], last_raw[k])]
    assert any(k.startswith("ecg_encoder.") for k in moved)  # the average is not the last step's weights
    for name, value in final.items():
        assert torch.allclose(value, average[name], atol=1e-6), name
    selection = json.loads((tmp_path / "full" / "final" / "checkpoint.json").read_text())
    assert selection["weights"] == f"ema (decay {decay})"
    best = json.loads((tmp_path / "full" / "best" / "checkpoint.json").read_text())
    assert best["weights"] == selection["weights"]

    assert main(common + ["--out", str(tmp_path / "cut"), "--max-steps", "7"]) == 0
    assert main(common + ["--out", str(tmp_path / "cut"), "--resume"]) == 0
    resumed = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    for name in final:
        assert torch.equal(final[name], resumed[name]), name


def test_resume_refuses_to_switch_the_weight_average_on(esi_pairs, esi_test_model, tmp_path, capsys) -> None:
    signals, captions = esi_pairs
    common = ["pretrain", "--captions", str(captions), "--data", str(signals), "--no-progress",
              "--out", str(tmp_path / "run")]
    assert main(common + ["--config", _config_file(tmp_path, esi_test_model), "--max-steps", "3"]) == 0
    assert main(common + ["--config", _config_file(tmp_path, esi_test_model, ema_decay=0.9), "--resume"]) == 2
    assert "ema_decay" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA on a machine without it")
def test_cuda_without_cuda_and_an_unknown_device_are_one_line_errors(esi_pairs, esi_test_model, tmp_path,
                                                                      capsys) -> None:
    signals, captions = esi_pairs
    common = ["pretrain", "--config", _config_file(tmp_path, esi_test_model), "--captions", str(captions),
              "--data", str(signals), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(common + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "device cuda: CUDA is not available" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before any work
    assert main(common + ["--device", "gpu"]) == 2
    assert "device" in capsys.readouterr().err
