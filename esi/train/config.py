"""Training configs: the :class:`TrainConfig` dataclass, the shipped presets (``presets/*.yaml``) and the
model config a run trains (preset + overrides + ablation flags + the export's signal preprocessing).

Why apart from the loop: loading and validating a config must fail, naming the key, before any data is
read or a run directory is made, and the CLI, tests and benchmarks load configs without training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from esi.model.config import ConfigError, deep_merge, from_dict, read_config_file
from esi.model.factory import get_model_config
from esi.model.model import ESIConfig
from esi.train.data import SignalAugmentation, export_preprocess, fold_selected, parquet_files

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training preset; see esi/configs/README.md. Unknown keys are rejected with their name."""

    # Types and the ranges in ``metadata`` are checked by esi.model.config.from_dict when the config is loaded
    # (esi.model.config.checked explains the keys), so a bad value fails naming its key before any data is read.
    model: str = "nano"  # registered architecture (esi.model.factory.list_models()) or a JSON/YAML path
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
    # exponential moving average of the weights, updated after every optimizer step with this decay
    # (torch.optim.swa_utils); validation, best/ and final/ use the average. None: the raw weights, as the paper
    ema_decay: float | None = field(default=None, metadata={"gt": 0.0, "lt": 1.0})
    seed: int = 0
    train_folds: list[int] | None = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7, 8])
    val_folds: list[int] = field(default_factory=lambda: [9])
    text_column: str = "caption"
    no_cqa: bool = False  # ablation: train on the raw label text ("label_text" column)
    # caption views (esi.train.views.ViewSettings fields: per-kind weights, names_per_record); None = one text
    # per record, as in the paper. The decoder always learns the full caption.
    views: dict[str, Any] | None = None
    no_caption_loss: bool = False
    no_contrastive_loss: bool = False
    augment: bool = True
    # esi.train.data.SignalAugmentation fields (jitter, scaling, time_out); {}: the official ESI recipe
    augmentation: dict[str, float] = field(default_factory=dict)
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
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})  # cuda: one GPU per process
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
        unknown = sorted(set(self.augmentation) - set(SignalAugmentation.__dataclass_fields__))
        if unknown:
            raise ValueError(f"augmentation: unknown key(s) {unknown} (allowed: "
                             f"{sorted(SignalAugmentation.__dataclass_fields__)})")
        self.signal_augmentation()
        if self.views is not None:
            from esi.train.views import ViewError, ViewSettings

            try:
                ViewSettings(**self.views)
            except TypeError as error:
                raise ValueError(f"views: {error} (allowed: {sorted(ViewSettings.__dataclass_fields__)})") from error
            except ViewError as error:
                raise ValueError(f"views: {error}") from error

    def signal_augmentation(self) -> SignalAugmentation:
        return SignalAugmentation(**self.augmentation)

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


def _presets_dir():
    return resources.files("esi.train") / "presets"


def list_presets() -> list[str]:
    folder = _presets_dir()
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith((".yaml", ".yml")))


def load_train_config(name_or_path: str | Path, **overrides: Any) -> TrainConfig:
    """A preset name (``list_presets()``) or a YAML/JSON file, strictly validated."""
    name = str(name_or_path)
    if name in list_presets():
        data = yaml.safe_load((_presets_dir() / f"{name}.yaml").read_text("utf-8"))
    elif Path(name).exists():
        data = read_config_file(Path(name))
    else:
        raise ConfigError(f"unknown training config {name!r}: not a preset {list_presets()} nor an existing file")
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    config = from_dict(TrainConfig, data)  # types and ranges (TrainConfig field metadata) checked here
    config.model_config()  # validate the model part (and its overrides) now, naming any bad key
    return config


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
