"""The one place where open_clip's torch-only modules are loaded without running ``open_clip/__init__``.

Why: ``import open_clip`` (and ``from open_clip.transformer import ...``, which runs the package
``__init__`` first) imports ``open_clip.utils``, which does ``from torchvision.ops.misc import
FrozenBatchNorm2d`` at module level. torchvision is deliberately not installed in this project
(CPU-only, pinned torch), yet the pieces we need -- ``transformer.MultimodalTransformer`` and
``loss.ClipLoss`` -- only need torch.

How: we locate the installed package directory with ``importlib.util.find_spec`` (which does not
execute the package), register a private, empty package module ``esi._open_clip_pkg`` whose
``__path__`` is that directory, and load the needed submodules from their files with
``spec_from_file_location``. Relative imports inside them (``from .utils import ...``) then resolve
inside the private package. ``utils`` itself is replaced by a small torch-only module holding the
two helpers ``transformer.py`` imports (``to_2tuple``, ``feature_take_indices``); they are used
only by open_clip's vision towers, which ESI never builds. The real ``open_clip`` name in
``sys.modules`` is never touched, and no ``sys.path`` entry is added.
"""

from __future__ import annotations

import collections.abc
import importlib.util
import sys
import types
from itertools import repeat
from pathlib import Path

_PRIVATE_PACKAGE = "esi._open_clip_pkg"


def _package_dir() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip_torch is not installed; run scripts/setup.sh (it installs open_clip_torch --no-deps)")
    return Path(next(iter(spec.submodule_search_locations)))


def _to_2tuple(value):
    """Same contract as open_clip.utils.to_2tuple (used only by vision towers)."""
    if isinstance(value, collections.abc.Iterable) and not isinstance(value, str):
        return tuple(value)
    return tuple(repeat(value, 2))


def _feature_take_indices(num_features: int, indices=None, as_set: bool = False):
    """Same contract as open_clip.utils.feature_take_indices (used only by forward_intermediates)."""
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"last-n ({indices}) is out of range (1 to {num_features})")
        take = [num_features - indices + i for i in range(indices)]
    else:
        take = []
        for i in indices:
            idx = num_features + i if i < 0 else i
            if not 0 <= idx < num_features:
                raise ValueError(f"feature index {idx} is out of range (0 to {num_features - 1})")
            take.append(idx)
    return (set(take) if as_set else take), max(take)


def _private_package() -> types.ModuleType:
    package = sys.modules.get(_PRIVATE_PACKAGE)
    if package is None:
        package = types.ModuleType(_PRIVATE_PACKAGE)
        package.__path__ = [str(_package_dir())]
        package.__package__ = _PRIVATE_PACKAGE
        sys.modules[_PRIVATE_PACKAGE] = package
        utils = types.ModuleType(f"{_PRIVATE_PACKAGE}.utils")
        utils.to_2tuple = _to_2tuple
        utils.feature_take_indices = _feature_take_indices
        sys.modules[utils.__name__] = utils
    return package


def _load(submodule: str) -> types.ModuleType:
    """Load ``open_clip/<submodule>.py`` as ``esi._open_clip_pkg.<submodule>`` (once)."""
    package = _private_package()
    name = f"{_PRIVATE_PACKAGE}.{submodule}"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(package.__path__[0]) / f"{submodule}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


_transformer = _load("transformer")
_loss = _load("loss")

MultimodalTransformer = _transformer.MultimodalTransformer
ClipLoss = _loss.ClipLoss
CoCaLoss = _loss.CoCaLoss
OPEN_CLIP_DIR = _package_dir()

__all__ = ["MultimodalTransformer", "ClipLoss", "CoCaLoss", "OPEN_CLIP_DIR"]
