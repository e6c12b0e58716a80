"""The model library, after open_clip's split of library and training code: what a trained ESI *is*.

- :mod:`~esi.model.ecg_encoder`  1-D ConvNeXt-V2 ECG encoder
- :mod:`~esi.model.text_encoder` Hugging Face text tower with a projection (and an embedding cache)
- :mod:`~esi.model.decoder`      leak-free CoCa caption decoder; :mod:`~esi.model.tokenizer` its vocabulary
- :mod:`~esi.model.loss`         CLIP contrastive (one-hot or label-aware targets) + captioning loss
- :mod:`~esi.model.model`        :class:`ESIModel` and :class:`ESIConfig`, save/load as a directory
- :mod:`~esi.model.factory`      registry of architectures (``configs/*.json``), ``create_model``
- :mod:`~esi.model.config`       strict dataclass configs (unknown keys and bad ranges named)
- :mod:`~esi.model.io`           atomic writes, the report number format, NaN-safe JSON
- :mod:`~esi.model.embed`        batched text embedding shared by zero-shot, training and serving
- :mod:`~esi.model.device`       ``auto``/``cpu``/``cuda`` with a clear error when CUDA is absent

``esi.model`` was the module of :class:`ESIModel`; its names (and the factory's) stay importable from
here, loaded on first use so that ``esi.model.io`` does not pull in torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from esi._lazy import lazy_exports

_EXPORTS = {
    "esi.model.model": ("ESIModel", "ESIConfig", "LossConfig", "FORMAT_VERSION"),
    "esi.model.factory": ("create_model", "get_model_config", "list_models", "resolve_model_config",
                          "save_random_model"),
}
__all__ = [  # the names of _EXPORTS (tests/esi/test_layout.py checks that the two agree)
    "ESIConfig", "ESIModel", "FORMAT_VERSION", "LossConfig", "create_model", "get_model_config", "list_models",
    "resolve_model_config", "save_random_model",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from esi.model.factory import (
        create_model,
        get_model_config,
        list_models,
        resolve_model_config,
        save_random_model,
    )
    from esi.model.model import FORMAT_VERSION, ESIConfig, ESIModel, LossConfig
