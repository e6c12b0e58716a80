"""Pretraining, after open_clip's training half: how an ESI model is *made*.

- :mod:`~esi.train.config`       :class:`TrainConfig`, the presets (``presets/*.yaml``), the run's model config
- :mod:`~esi.train.data`         training pairs: signal Parquet joined with caption Parquet (in memory or streamed)
- :mod:`~esi.train.views`        caption views (several texts per record) and the same texts for zero-shot/queries
- :mod:`~esi.train.loop`         ``pretrain``: the loop, validation, resume
- :mod:`~esi.train.optim`        AdamW parameter groups and the warm-up/step-decay schedule
- :mod:`~esi.train.checkpoint`   checkpoints and saved models of a run
- :mod:`~esi.train.distributed`  rank and device under ``torchrun``
- :mod:`~esi.train.monitor`      zero-shot and its references on the validation folds

``esi.train`` was the module of the loop; its public names stay importable from here, loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from esi._lazy import lazy_exports

_EXPORTS = {
    "esi.train.config": ("TrainConfig", "list_presets", "load_train_config", "model_config_for_data"),
    "esi.train.loop": ("TrainingDiverged", "forward_loss", "validate", "pretrain", "describe_run"),
    "esi.train.optim": ("lr_factor", "build_optimizer"),
    "esi.train.checkpoint": ("LABEL_PRIOR_FILE", "SELECTION_FILE", "save_checkpoint", "latest_checkpoint"),
    "esi.train.distributed": ("DistEnv", "init_distributed", "pick_device"),
}
__all__ = [  # the names of _EXPORTS (tests/esi/test_layout.py checks that the two agree)
    "DistEnv", "LABEL_PRIOR_FILE", "SELECTION_FILE", "TrainConfig", "TrainingDiverged", "build_optimizer",
    "describe_run", "forward_loss", "init_distributed", "latest_checkpoint", "list_presets", "load_train_config",
    "lr_factor", "model_config_for_data", "pick_device", "pretrain", "save_checkpoint", "validate",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from esi.train.checkpoint import LABEL_PRIOR_FILE, SELECTION_FILE, latest_checkpoint, save_checkpoint
    from esi.train.config import TrainConfig, list_presets, load_train_config, model_config_for_data
    from esi.train.distributed import DistEnv, init_distributed, pick_device
    from esi.train.loop import TrainingDiverged, describe_run, forward_loss, pretrain, validate
    from esi.train.optim import build_optimizer, lr_factor
