"""ESI pretraining loop: contrastive + captioning, resumable, DDP-capable (torchrun), bf16 on CUDA.

Run directory layout (``--out RUN_DIR``)::

    config.yaml                 resolved training config (incl. the full model config), data paths
    caption_vocab.json          restricted caption vocabulary (when decoder.restrict_vocab)
    metrics.jsonl               one JSON object per line: {"event": "data"|"train"|"val"|"end", ...}
    checkpoints/latest.json     {"step": N, "path": "step_0000000N"}
    checkpoints/step_0000000N/  model.safetensors + train_state.pt (optimizer, scheduler, step, RNG;
                                torch.load(weights_only=True)-safe) + caption_vocab.json
    final/                      ESIModel.save_pretrained() output (load with ESIModel.from_pretrained)

Resuming (``--resume``) restores model, optimizer, scheduler, step and RNG, and replays the data
order from (seed, epoch, batch index), so the result equals an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from esi.model.config import ConfigError, to_dict
from esi.model.device import resolve_device
from esi.model.io import atomic_write_json, atomic_write_text
from esi.model.loss import ESILoss
from esi.model.model import ESIConfig, ESIModel
from esi.model.text_encoder import load_text_backbone
from esi.model.tokenizer import CaptionTokenizer
from esi.train.checkpoint import SELECTION_FILE, latest_checkpoint, load_ema, save_checkpoint, save_model
from esi.train.config import TrainConfig, model_config_for_data
from esi.train.data import (
    Batch,
    InMemoryPairs,
    StreamingPairs,
    fold_selected,
    parquet_files,
    read_captions,
)
from esi.train.distributed import DistEnv, init_distributed, pick_device
from esi.train.monitor import ZeroShotMonitor
from esi.train.optim import build_optimizer, lr_factor

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the run stops and the last good checkpoint stays in place."""


# ---- one step (shared with the DDP test) ---------------------------------------------------------------------
def forward_loss(model: torch.nn.Module, loss_fn: ESILoss, batch: Batch, device: torch.device,
                 autocast: bool) -> dict[str, torch.Tensor]:
    signals = batch.signals.to(device, non_blocking=True)
    context = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if autocast else nullcontext()
    base = getattr(model, "module", model)
    caption_ids = None
    if batch.captions is not None and batch.captions != batch.texts and base.decoder is not None:
        caption_ids = base.tokenize_captions(batch.captions)  # the decoder learns the full caption, not the view
    with context:
        out = model(signals, batch.texts, caption_ids)
    return loss_fn(out.get("ecg_features"), out.get("text_features"), out["logit_scale"],
                   out.get("caption_logits"), out.get("caption_targets"), finding_sets=batch.finding_sets)


@torch.no_grad()
def validate(model: ESIModel, source: InMemoryPairs, config: TrainConfig, device: torch.device,
             autocast: bool) -> dict[str, float]:
    """Val losses and in-batch top-1 retrieval (a hit when the retrieved caption text equals the true one)."""
    model.eval()
    loss_fn = model.default_loss()
    sums: dict[str, float] = {}
    hits_e2t = hits_t2e = count = batches = 0
    for batch in source.batches(0, config.val_batch_size, shuffle=False, drop_last=False):
        parts = forward_loss(model, loss_fn, batch, device, autocast)
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        batches += 1
        if model.config.loss.contrastive_weight > 0 and len(batch.texts) > 1:
            ecg = model.encode_ecg(batch.signals.to(device)).float()
            text = model.encode_text(batch.texts).float()
            sim = ecg @ text.T
            e2t, t2e = sim.argmax(1).tolist(), sim.argmax(0).tolist()
            hits_e2t += sum(batch.texts[j] == batch.texts[i] for i, j in enumerate(e2t))
            hits_t2e += sum(batch.texts[j] == batch.texts[i] for i, j in enumerate(t2e))
            count += len(batch.texts)
    model.train()
    metrics = {f"val_{k}": v / max(batches, 1) for k, v in sums.items()}
    if count:
        metrics["val_acc_ecg_to_text"] = hits_e2t / count
        metrics["val_acc_text_to_ecg"] = hits_t2e / count
        metrics["val_batch_size"] = config.val_batch_size
    return metrics


# ---- run config bookkeeping ----------------------------------------------------------------------------------------
def _resolved(config: TrainConfig, model_config: ESIConfig, captions: str, data: str) -> dict[str, Any]:
    return {"train": to_dict(config), "model": model_config.to_dict(), "captions": str(captions), "data": str(data)}


def _check_resume_config(saved: dict[str, Any], current: dict[str, Any]) -> None:
    ignore = {"epochs", "max_steps"}
    diffs = [k for k in set(saved["train"]) | set(current["train"])
             if k not in ignore and saved["train"].get(k) != current["train"].get(k)]
    # runs saved before signal_preprocess existed resume with the value derived from their data now
    if {"signal_preprocess": current["model"].get("signal_preprocess"), **saved["model"]} != current["model"]:
        diffs.append("model")
    if diffs:
        raise ConfigError(f"--resume with a config that differs from the run's config.yaml in {sorted(diffs)}; "
                          "resume with the same config (only epochs/max_steps may change)")


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def _build_sources(config: TrainConfig, model_config: ESIConfig, captions_path: str, data_path: str,
                   env: DistEnv):
    captions = read_captions(captions_path, config.caption_column, with_views=config.views is not None)
    val_captions = replace(captions, views={})  # validation always reads the record's own caption
    if config.views is not None:
        from esi.train.views import ViewGenerator, ViewSettings

        if captions.records:
            captions.use_views(ViewGenerator(ViewSettings(**config.views), seed=config.seed))
        else:
            log.warning("%s has no findings column: caption views are off, each record trains on its caption",
                        captions_path)
    size = sum(p.stat().st_size for p in parquet_files(data_path))
    streaming = config.data_mode == "stream" or (config.data_mode == "auto" and size > 2 * 1024 ** 3)
    common = {"target_rate": model_config.sampling_rate, "target_samples": model_config.n_samples,
              "seed": config.seed}
    if streaming:
        train = StreamingPairs(data_path, captions, config.train_folds, exclude_folds=config.val_folds,
                               shuffle_buffer=config.shuffle_buffer, **common)
    else:
        train = InMemoryPairs(data_path, captions, config.train_folds, exclude_folds=config.val_folds, **common)
    val = None
    if config.val_folds and env.is_main:
        val = InMemoryPairs(data_path, val_captions, config.val_folds, max_records=config.max_val_records, **common)
        if len(val) == 0:
            val = None
    return captions, train, val


# ---- the loop ------------------------------------------------------------------------------------------------------
def pretrain(config: TrainConfig, captions_path: str | Path, data_path: str | Path, run_dir: str | Path,
             resume: bool = False, progress: bool = True) -> Path:
    """Train; returns the ``final/`` model directory (written on completion or a max_steps stop)."""
    run_dir = Path(run_dir)
    device_kind = resolve_device(config.device, "device")  # cuda without CUDA: a DeviceError before any work
    env = init_distributed(device_kind)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = pick_device(device_kind, env)
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    model_config = model_config_for_data(config, data_path)
    resolved = _resolved(config, model_config, str(captions_path), str(data_path))
    metrics_path = run_dir / "metrics.jsonl"
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume:
        saved_path = run_dir / "config.yaml"
        if not saved_path.exists():
            raise FileNotFoundError(f"--resume: {saved_path} not found; is {run_dir} a run directory?")
        _check_resume_config(yaml.safe_load(saved_path.read_text(encoding="utf-8")), resolved)
    elif env.is_main and (run_dir / "checkpoints" / "latest.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose a new --out")
    config.check_folds(data_path)  # reads only the fold column: fails before the run dir exists
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))

    captions, train_source, val_source = _build_sources(config, model_config, str(captions_path), str(data_path), env)
    prior = captions.label_prior(config.train_folds, exclude=config.val_folds)
    monitor = None
    if val_source is not None and env.is_main and model_config.loss.contrastive_weight > 0:
        train_ids = getattr(train_source, "record_ids", None) or [
            r for r, fold in captions.folds.items() if fold_selected(fold, config.train_folds, config.val_folds)]
        monitor = ZeroShotMonitor.create(captions, val_source.record_ids, train_ids,
                                         {k: float(v) for k, v in prior["labels"].items()})
    best_auc = -math.inf
    if env.is_main:
        _append_metrics(metrics_path, {"event": "data", "train": train_source.stats.as_dict(),
                                       "val": val_source.stats.as_dict() if val_source else None,
                                       "data_mode": type(train_source).__name__})
        log.info("train pairs %s", train_source.stats.as_dict())
    steps_per_epoch = train_source.steps_per_epoch(config.batch_size, env.world_size) // config.grad_accum
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_source)} training pairs are fewer than one global batch "
                         f"({config.batch_size} x {env.world_size} ranks x {config.grad_accum} accumulation)")

    vocab = None
    if model_config.has_decoder and model_config.decoder.restrict_vocab:
        vocab_file = (checkpoint or run_dir) / "caption_vocab.json"
        vocab = CaptionTokenizer.load_vocab(vocab_file) if resume and vocab_file.exists() else None
        if vocab is None:
            _, tokenizer = load_text_backbone(model_config.text.name_or_path, weights=False)
            train_texts = [t for rid, t in captions.texts.items()
                           if captions.folds.get(rid) is None or captions.folds[rid] not in config.val_folds]
            vocab = CaptionTokenizer.build_vocab(tokenizer, train_texts, model_config.decoder.context_length + 1)
        if env.is_main:
            atomic_write_json(run_dir / "caption_vocab.json", {"token_ids": vocab})

    torch.manual_seed(config.seed)  # identical init on every rank
    model = ESIModel(model_config, caption_vocab=vocab).to(device)
    if model_config.text.freeze and model_config.text.cache_embeddings:
        model.text_encoder.precompute(captions.all_texts(), device)
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, config))
    step = 0
    torch.manual_seed(config.seed * 1000 + env.rank)  # drop-path draws differ per rank
    if checkpoint is not None:
        model.load_weights(checkpoint / "model.safetensors", device)
    ema = None
    if config.ema_decay is not None:  # a copy that trails the weights; what validation and the saved models use
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
        if checkpoint is not None:
            load_ema(checkpoint, ema, device)
    scored = ema.module if ema is not None else model
    if checkpoint is not None:
        state = torch.load(checkpoint / "train_state.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
        if env.is_main:
            _append_metrics(metrics_path, {"event": "resume", "step": step, "checkpoint": checkpoint.name})
    targets = model_config.loss.contrastive_targets
    if targets != "one_hot" and captions.finding_sets is None:
        log.warning("loss.contrastive_targets=%s needs the caption column 'finding_codes' (or 'findings'), which "
                    "%s lacks: training with the plain one-hot contrastive loss", targets, captions_path)
    finding_vocab = sorted({c for codes in (captions.finding_sets or {}).values() for c in codes})
    loss_fn = ESILoss(model_config.loss.contrastive_weight, model_config.loss.caption_weight,
                      pad_id=model.caption_tokenizer.pad_id, rank=env.rank, world_size=env.world_size,
                      contrastive_targets=targets, finding_vocab=finding_vocab)
    ablation = config.no_caption_loss or config.no_contrastive_loss
    wrapped: torch.nn.Module = model
    if env.world_size > 1:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                          find_unused_parameters=ablation)
    model.train()

    total_steps = steps_per_epoch * config.epochs
    stop_at = min(total_steps, config.max_steps) if config.max_steps else total_steps
    if config.ema_decay is not None and env.is_main and config.ema_decay ** stop_at > 0.05:
        log.warning("ema_decay %s averages over ~%d steps but this run has %d: the saved weights still hold %.0f%% "
                    "of the first step's; train longer or set ema_decay: null", config.ema_decay,
                    round(1 / (1 - config.ema_decay)), stop_at, 100 * config.ema_decay ** stop_at)
    augmentation = config.signal_augmentation()
    bar = tqdm(total=stop_at, initial=step, desc="pretrain", disable=not (progress and env.is_main))
    trainable = [p for p in model.parameters() if p.requires_grad]
    last_log = time.perf_counter()
    samples_since_log = 0
    while step < stop_at:
        epoch = step // steps_per_epoch
        start_batch = (step % steps_per_epoch) * config.grad_accum
        batches = train_source.batches(epoch, config.batch_size, start_batch=start_batch, rank=env.rank,
                                       world_size=env.world_size)
        running: dict[str, float] = {}
        micro = 0
        for batch in batches:
            if config.augment:
                generator = torch.Generator().manual_seed(
                    ((config.seed * 1_000_003 + step) * 101 + micro) * 1009 + env.rank)
                batch = replace(batch, signals=augmentation(batch.signals, generator))
            last_micro = micro == config.grad_accum - 1
            sync = wrapped.no_sync() if (env.world_size > 1 and not last_micro) else nullcontext()
            with sync:
                parts = forward_loss(wrapped, loss_fn, batch, device, use_bf16)
                _check_finite(parts["loss"], step, env, run_dir)
                (parts["loss"] / config.grad_accum).backward()
            for key, value in parts.items():
                running[key] = running.get(key, 0.0) + float(value.detach()) / config.grad_accum
            samples_since_log += len(batch.texts) * env.world_size
            micro += 1
            if not last_micro:
                continue
            micro = 0
            grad_norm = (torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
                         if config.grad_clip else None)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            bar.update(1)
            if env.is_main and (step % config.log_every_steps == 0 or step == stop_at):
                now = time.perf_counter()
                record = {"event": "train", "step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                          "logit_scale": float(model.scale().detach()),
                          "samples_per_s": samples_since_log / max(now - last_log, 1e-9), **running}
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                _append_metrics(metrics_path, record)
                bar.set_postfix(loss=f"{running['loss']:.3f}")
                last_log, samples_since_log = now, 0
            running = {}
            epoch_end = step % steps_per_epoch == 0
            periodic = config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0
            if env.is_main and (epoch_end or periodic or step == stop_at):
                save_checkpoint(run_dir, model, optimizer, scheduler, step, epoch, device, config.keep_checkpoints,
                                ema)
            if epoch_end and val_source is not None and (epoch + 1) % config.val_every_epochs == 0:
                metrics = validate(scored, val_source, config, device, use_bf16)
                if monitor is not None:
                    scored.eval()
                    metrics.update(monitor(scored, val_source.signals, getattr(train_source, "signals", None),
                                           device))
                    scored.train()
                    auc = metrics["val_zeroshot_superclass_auc"]
                    if math.isfinite(auc) and auc > best_auc:  # keep the best zero-shot checkpoint beside the last
                        best_auc = auc
                        save_model(scored, run_dir / "best", prior, {"selected": "best val zero-shot superclass AUC",
                                                                      "step": step, "epoch": epoch, **metrics,
                                                                      **_weights(config)})
                _append_metrics(metrics_path, {"event": "val", "step": step, "epoch": epoch, **metrics})
            if env.world_size > 1 and (epoch_end or step == stop_at):
                dist.barrier()
            if step >= stop_at or epoch_end:
                break
    bar.close()
    final = run_dir / "final"
    if env.is_main:
        save_model(scored, final, prior, {"selected": "last step", "step": step, **_weights(config)})
        best = run_dir / "best" / SELECTION_FILE
        _append_metrics(metrics_path, {
            "event": "end", "step": step, "completed": step >= total_steps, "final": "last step", **_weights(config),
            "best": json.loads(best.read_text(encoding="utf-8")) if best.is_file() else None})
    if env.world_size > 1:
        dist.barrier()
    return final


def _weights(config: TrainConfig) -> dict[str, Any]:
    """Which weights a saved model holds: the raw ones, or their moving average (``ema_decay``)."""
    return {"weights": "raw" if config.ema_decay is None else f"ema (decay {config.ema_decay})"}


def _check_finite(loss: torch.Tensor, step: int, env: DistEnv, run_dir: Path) -> None:
    bad = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
    if env.world_size > 1:
        dist.all_reduce(bad)
    if bad.item() > 0:
        latest = run_dir / "checkpoints" / "latest.json"
        kept = json.loads(latest.read_text())["path"] if latest.exists() else "none yet"
        raise TrainingDiverged(f"loss is not finite at step {step + 1} (value {float(loss)}); stopping. "
                               f"The last good checkpoint ({kept}) is kept in {run_dir / 'checkpoints'}; "
                               "lower the lr or check the input data before --resume")


def describe_run(run_dir: Path) -> Sequence[dict[str, Any]]:
    """Parsed metrics.jsonl of a run (for reports and tests)."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
