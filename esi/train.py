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
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from esi.config import ConfigError, deep_merge, from_dict, read_config_file, to_dict
from esi.data import (
    Batch,
    InMemoryPairs,
    StreamingPairs,
    augment,
    export_preprocess,
    fold_selected,
    parquet_files,
    read_captions,
)
from esi.factory import get_model_config
from esi.io import atomic_torch_save, atomic_write_json, atomic_write_text
from esi.loss import ESILoss
from esi.model import ESIConfig, ESIModel
from esi.text_encoder import load_text_backbone
from esi.tokenizer import CaptionTokenizer
from esi.train_monitor import ZeroShotMonitor

log = logging.getLogger(__name__)
LABEL_PRIOR_FILE = "label_prior.json"  # training-fold label counts, beside the model (esi.zeroshot views)
SELECTION_FILE = "checkpoint.json"  # which checkpoint a saved model is (last step, or best val zero-shot)


@dataclass
class TrainConfig:
    """Training preset; see esi/configs/README.md. Unknown keys are rejected with their name."""

    # Types and the ranges in ``metadata`` are checked by esi.config.from_dict when the config is loaded
    # (esi.config.checked explains the keys), so a bad value fails naming its key before any data is read.
    model: str = "nano"  # registered architecture (esi.factory.list_models()) or a JSON/YAML path
    model_overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int = field(default=10, metadata={"ge": 1})
    # stop after this many optimizer steps (checkpoint + final model written)
    max_steps: int | None = field(default=None, metadata={"ge": 1})
    batch_size: int = field(default=32, metadata={"ge": 1})  # per process (per GPU)
    grad_accum: int = field(default=1, metadata={"ge": 1})
    lr: float = field(default=5e-5, metadata={"gt": 0.0})
    # learning rate of the text backbone's trainable layers, as a multiple of lr (the projection uses lr)
    text_lr_scale: float = field(default=1.0, metadata={"gt": 0.0})
    weight_decay: float = field(default=0.01, metadata={"ge": 0.0})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999],
                               metadata={"ge": 0.0, "lt": 1.0, "min_len": 2, "max_len": 2})
    warmup_epochs: float = field(default=0.0, metadata={"ge": 0.0})
    # step decay counted from epoch 0 (epochs 10, 20, ...)
    lr_decay_every_epochs: float | None = field(default=None, metadata={"gt": 0.0})
    lr_decay_factor: float = field(default=0.1, metadata={"gt": 0.0, "le": 1.0})
    grad_clip: float | None = field(default=None, metadata={"gt": 0.0})  # max gradient norm; None: no clipping
    seed: int = 0
    train_folds: list[int] | None = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7, 8])
    val_folds: list[int] = field(default_factory=lambda: [9])
    text_column: str = "caption"
    no_cqa: bool = False  # ablation: train on the raw label text ("label_text" column)
    # caption views (esi.views.ViewSettings fields: per-kind weights, names_per_record); None = one text
    # per record, as in the paper. The decoder always learns the full caption.
    views: dict[str, Any] | None = None
    no_caption_loss: bool = False
    no_contrastive_loss: bool = False
    augment: bool = True
    # auto: bf16 autocast on CUDA, fp32 on CPU; or "bf16" / "fp32"
    precision: str = field(default="auto", metadata={"choices": ("auto", "bf16", "fp32")})
    # auto: in memory below 2 GiB of signal Parquet, else streaming; "memory"/"stream"
    data_mode: str = field(default="auto", metadata={"choices": ("auto", "memory", "stream")})
    shuffle_buffer: int = field(default=2048, metadata={"ge": 1})
    val_batch_size: int = field(default=64, metadata={"ge": 1})
    max_val_records: int = field(default=2000, metadata={"ge": 1})
    val_every_epochs: int = field(default=1, metadata={"ge": 1})
    log_every_steps: int = field(default=10, metadata={"ge": 1})
    # also at every epoch end and at a max_steps stop
    checkpoint_every_steps: int | None = field(default=None, metadata={"ge": 1})
    keep_checkpoints: int = field(default=2, metadata={"ge": 0})  # newest N kept; 0 keeps them all
    device: str = "auto"
    # torch intra-op threads on CPU (None: torch's default)
    num_threads: int | None = field(default=None, metadata={"ge": 1})

    def __post_init__(self) -> None:
        if self.no_caption_loss and self.no_contrastive_loss:
            raise ValueError("no_caption_loss and no_contrastive_loss together leave nothing to train")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto/bf16/fp32, got {self.precision!r}")
        if self.data_mode not in ("auto", "memory", "stream"):
            raise ValueError(f"data_mode must be auto/memory/stream, got {self.data_mode!r}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.epochs < 1:
            raise ValueError("batch_size, grad_accum and epochs must be >= 1")
        if self.views is not None:
            from esi.views import ViewError, ViewSettings

            try:
                ViewSettings(**self.views)
            except TypeError as error:
                raise ValueError(f"views: {error} (allowed: {sorted(ViewSettings.__dataclass_fields__)})") from error
            except ViewError as error:
                raise ValueError(f"views: {error}") from error

    @property
    def caption_column(self) -> str:
        return "label_text" if self.no_cqa else self.text_column

    def model_config(self) -> ESIConfig:
        """The model config after overrides and ablation flags; a bad value is named as the user wrote it:
        ``model_overrides.ecg.dims[0]``, or ``model 'x.json': ecg.dims[0]`` when the model file itself is bad."""
        base = get_model_config(self.model)
        raw = deep_merge(base, self.model_overrides)
        if self.no_caption_loss:
            raw = deep_merge(raw, {"loss": {"caption_weight": 0.0}})
        if self.no_contrastive_loss:
            raw = deep_merge(raw, {"loss": {"contrastive_weight": 0.0}})
        try:
            return from_dict(ESIConfig, raw, root="model_overrides.")
        except ConfigError:
            try:
                ESIConfig.from_dict(base)
            except ConfigError as base_error:
                raise ConfigError(f"model {self.model!r}: {base_error}") from base_error
            raise

    def check_folds(self, data_path: str | Path) -> None:
        """Reject ``train_folds`` that select no signal record (e.g. ``[42]``); warn about listed folds
        that have no data (a subset of PTB-XL under the default folds 1-8 is legitimate).

        This needs the data's folds, so it runs in ``pretrain`` rather than at load time, but it reads only
        the ``fold`` column of the signal Parquet: before the run directory is made or any signal is read.
        """
        import pyarrow.parquet as pq

        from esi.data import fold_selected

        present: list[int | None] = []
        for file in parquet_files(data_path):
            parquet = pq.ParquetFile(file)
            if "fold" in parquet.schema_arrow.names:  # a missing column is reported by the data loader
                present.extend(parquet.read(columns=["fold"]).column("fold").to_pylist())
        folds = sorted({f for f in present if f is not None})
        described = f"{folds}" + (" and null" if None in present else "")
        missing = [f for f in self.train_folds or [] if f not in folds]
        if present and not any(fold_selected(f, self.train_folds, self.val_folds) for f in set(present)):
            absent = f"; fold(s) {missing} have no records" if missing else ""
            raise ConfigError(f"train_folds: {self.train_folds} (minus val_folds {self.val_folds}) select no "
                              f"record of {data_path} (its folds: {described}){absent}")
        if missing:
            log.warning("train_folds: fold(s) %s have no records in %s (its folds: %s)", missing, data_path,
                        described)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the run stops and the last good checkpoint stays in place."""


def list_presets() -> list[str]:
    folder = resources.files("esi") / "configs" / "train"
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith((".yaml", ".yml")))


def load_train_config(name_or_path: str | Path, **overrides: Any) -> TrainConfig:
    """A preset name (``list_presets()``) or a YAML/JSON file, strictly validated."""
    name = str(name_or_path)
    if name in list_presets():
        data = yaml.safe_load((resources.files("esi") / "configs" / "train" / f"{name}.yaml").read_text("utf-8"))
    elif Path(name).exists():
        data = read_config_file(Path(name))
    else:
        raise ConfigError(f"unknown training config {name!r}: not a preset {list_presets()} nor an existing file")
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    config = from_dict(TrainConfig, data)  # types and ranges (TrainConfig field metadata) checked here
    config.model_config()  # validate the model part (and its overrides) now, naming any bad key
    return config


# ---- distributed helpers -----------------------------------------------------------------------------
@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistEnv:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(config: TrainConfig, env: DistEnv) -> torch.device:
    kind = config.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device(kind)


# ---- schedule, optimiser --------------------------------------------------------------------------------
def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup_epochs``, then x``lr_decay_factor`` every ``lr_decay_every_epochs``."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if config.lr_decay_every_epochs:
        return config.lr_decay_factor ** math.floor(step / (config.lr_decay_every_epochs * steps_per_epoch))
    return 1.0


def build_optimizer(model: ESIModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on gains, biases, embeddings' positions and the temperature (CLIP practice).

    The pretrained text backbone's trainable layers get ``lr * text_lr_scale``: a tower that already
    embeds language well needs small steps, the randomly initialised parts large ones.
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or "logit_scale" in name or "positional_embedding" in name
        groups.setdefault((name.startswith("text_encoder.backbone."), no_decay), []).append(param)
    return torch.optim.AdamW(
        [{"params": params, "weight_decay": 0.0 if no_decay else config.weight_decay,
          "lr": config.lr * (config.text_lr_scale if backbone else 1.0)}
         for (backbone, no_decay), params in sorted(groups.items())],
        lr=config.lr, betas=tuple(config.betas))


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


# ---- checkpoints -----------------------------------------------------------------------------------------------
def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(run_dir: Path, model: ESIModel, optimizer, scheduler, step: int, epoch: int,
                    device: torch.device, keep: int) -> Path:
    """Write ``checkpoints/step_N`` via a temp dir + rename, then point ``latest.json`` at it."""
    folder = run_dir / "checkpoints"
    name = f"step_{step:08d}"
    final = folder / name
    tmp = folder / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from esi.io import atomic_save_safetensors

    atomic_save_safetensors(tmp / "model.safetensors", model.state_for_saving())
    model.caption_tokenizer.save(tmp / "caption_vocab.json")
    atomic_torch_save(tmp / "train_state.pt", {
        "step": step, "epoch": epoch, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": _rng_state(device),
    })
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_json(folder / "latest.json", {"step": step, "path": name})
    kept = sorted(p for p in folder.glob("step_*") if p.is_dir())
    for old in kept[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest.json"
    if not pointer.exists():
        return None
    path = run_dir / "checkpoints" / json.loads(pointer.read_text(encoding="utf-8"))["path"]
    if not path.is_dir():
        raise FileNotFoundError(f"{pointer} points at missing checkpoint {path}")
    return path


# ---- run config bookkeeping ----------------------------------------------------------------------------------------
def _resolved(config: TrainConfig, model_config: ESIConfig, captions: str, data: str) -> dict[str, Any]:
    return {"train": to_dict(config), "model": model_config.to_dict(), "captions": str(captions), "data": str(data)}


def model_config_for_data(config: TrainConfig, data_path: str | Path) -> ESIConfig:
    """The model config, plus the signal preprocessing of the training export (unless the config sets one),
    saved with the model so that inference feeds it the same band as training did."""
    model_config = config.model_config()
    if model_config.signal_preprocess is None:
        params = export_preprocess(data_path)
        if params is None:
            log.warning("%s has no export_config.json: the model will see raw records at inference, "
                        "with no filter re-applied", data_path)
        model_config = replace(model_config, signal_preprocess=params)
    return model_config


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
        from esi.views import ViewGenerator, ViewSettings

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


def pretrain(config: TrainConfig, captions_path: str | Path, data_path: str | Path, run_dir: str | Path,
             resume: bool = False, progress: bool = True) -> Path:
    """Train; returns the ``final/`` model directory (written on completion or a max_steps stop)."""
    run_dir = Path(run_dir)
    device_kind = "cuda" if config.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    env = init_distributed(device_kind)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = pick_device(config, env)
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
                batch = replace(batch, signals=augment(batch.signals, generator))
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
                save_checkpoint(run_dir, model, optimizer, scheduler, step, epoch, device, config.keep_checkpoints)
            if epoch_end and val_source is not None and (epoch + 1) % config.val_every_epochs == 0:
                metrics = validate(model, val_source, config, device, use_bf16)
                if monitor is not None:
                    model.eval()
                    metrics.update(monitor(model, val_source.signals, getattr(train_source, "signals", None), device))
                    model.train()
                    auc = metrics["val_zeroshot_superclass_auc"]
                    if math.isfinite(auc) and auc > best_auc:  # keep the best zero-shot checkpoint beside the last
                        best_auc = auc
                        _save_model(model, run_dir / "best", prior, {"selected": "best val zero-shot superclass AUC",
                                                                     "step": step, "epoch": epoch, **metrics})
                _append_metrics(metrics_path, {"event": "val", "step": step, "epoch": epoch, **metrics})
            if env.world_size > 1 and (epoch_end or step == stop_at):
                dist.barrier()
            if step >= stop_at or epoch_end:
                break
    bar.close()
    final = run_dir / "final"
    if env.is_main:
        _save_model(model, final, prior, {"selected": "last step", "step": step})
        best = run_dir / "best" / SELECTION_FILE
        _append_metrics(metrics_path, {
            "event": "end", "step": step, "completed": step >= total_steps, "final": "last step",
            "best": json.loads(best.read_text(encoding="utf-8")) if best.is_file() else None})
    if env.world_size > 1:
        dist.barrier()
    return final


def _save_model(model: ESIModel, directory: Path, prior: dict[str, Any], selection: dict[str, Any]) -> None:
    """A loadable model directory plus its training label counts and which checkpoint it is."""
    model.save_pretrained(directory)
    atomic_write_json(directory / LABEL_PRIOR_FILE, prior)
    atomic_write_json(directory / SELECTION_FILE, selection)


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
