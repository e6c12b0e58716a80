"""Writing ESI's outputs: atomic files (:mod:`corpora.atomic`: temp file, fsync, ``os.replace``, so a crash
never leaves half a file) for configs, checkpoints and results, the one number format of reports and the one
JSON form of results (NaN as null). torch and safetensors are imported only by the checkpoint writers, so
reports and CLIs stay light."""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from corpora.atomic import atomic_write, atomic_write_text
from corpora.atomic import atomic_write_json as _atomic_write_json

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_save_safetensors", "atomic_torch_save", "atomic_write", "atomic_write_json", "atomic_write_text",
           "format_number", "to_json"]


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Indented JSON with sorted keys (configs and checkpoints diff cleanly)."""
    _atomic_write_json(path, data, sort_keys=True)


def atomic_save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def format_number(value: Any, missing: str = "–") -> str:
    """A metric for a report table: floats to 3 decimals; None, NaN and inf as ``missing`` (an undefined
    metric must not print as a number); anything else (counts, text) as ``str``."""
    if value is None:
        return missing
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # numpy floats too
        return f"{value:.3f}" if math.isfinite(value) else missing
    return str(value)


def to_json(obj: Any) -> str:
    """JSON with NaN/inf written as null (strict JSON readers reject NaN); numpy scalars and arrays as
    plain numbers and lists. Every command's ``--json`` output and the eval results use it."""

    def clean(value: Any) -> Any:
        if isinstance(value, float | np.floating):
            return None if not math.isfinite(float(value)) else float(value)
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, np.ndarray):
            return clean(value.tolist())
        return value

    return json.dumps(clean(obj), indent=2, ensure_ascii=False)
