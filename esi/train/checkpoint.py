"""Checkpoints of a run (``checkpoints/step_N``: weights, optimiser, scheduler, step, RNG) and saved models
(``final/``, ``best/``: a loadable model directory with its training label counts and which step it is).

Every file is written atomically and a checkpoint folder appears by rename, so a crash never leaves a
checkpoint that ``--resume`` would half-read.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.optim.swa_utils import AveragedModel

from esi.model.io import atomic_save_safetensors, atomic_torch_save, atomic_write_json
from esi.model.model import ESIModel

LABEL_PRIOR_FILE = "label_prior.json"  # training-fold label counts, beside the model (esi.zeroshot views)
SELECTION_FILE = "checkpoint.json"  # which checkpoint a saved model is (last step, or best val zero-shot)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


EMA_FILE = "ema.safetensors"  # the weight average's trainable parameters and its update count


def save_checkpoint(run_dir: Path, model: ESIModel, optimizer, scheduler, step: int, epoch: int,
                    device: torch.device, keep: int, ema: AveragedModel | None = None) -> Path:
    """Write ``checkpoints/step_N`` via a temp dir + rename, then point ``latest.json`` at it."""
    folder = run_dir / "checkpoints"
    name = f"step_{step:08d}"
    final = folder / name
    tmp = folder / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_save_safetensors(tmp / "model.safetensors", model.state_for_saving())
    if ema is not None:
        atomic_save_safetensors(tmp / EMA_FILE, _ema_state(ema))
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


def _ema_state(ema: AveragedModel) -> dict[str, torch.Tensor]:
    """Only the trained parameters move away from the model's own; the frozen tower is not stored twice."""
    state = {name: p.detach().contiguous() for name, p in ema.module.named_parameters() if p.requires_grad}
    state["n_averaged"] = ema.n_averaged.detach().cpu().reshape(1)
    return state


def load_ema(checkpoint: Path, ema: AveragedModel, device: torch.device) -> None:
    """Restore a weight average saved by :func:`save_checkpoint` (resume continues it exactly)."""
    path = checkpoint / EMA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the run was started without ema_decay, so it cannot resume "
                                "with it; start a new run or drop ema_decay")
    state = load_file(str(path), device=str(device))
    ema.n_averaged.fill_(int(state.pop("n_averaged").item()))
    trained = {name for name, p in ema.module.named_parameters() if p.requires_grad}
    if set(state) != trained:
        raise ValueError(f"{path} does not match the model's trained parameters "
                         f"(missing {sorted(trained - set(state))[:5]}, unexpected {sorted(set(state) - trained)[:5]})")
    ema.module.load_state_dict(state, strict=False)


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest.json"
    if not pointer.exists():
        return None
    path = run_dir / "checkpoints" / json.loads(pointer.read_text(encoding="utf-8"))["path"]
    if not path.is_dir():
        raise FileNotFoundError(f"{pointer} points at missing checkpoint {path}")
    return path


def save_model(model: ESIModel, directory: Path, prior: dict[str, Any], selection: dict[str, Any]) -> None:
    """A loadable model directory plus its training label counts and which checkpoint it is."""
    model.save_pretrained(directory)
    atomic_write_json(directory / LABEL_PRIOR_FILE, prior)
    atomic_write_json(directory / SELECTION_FILE, selection)
