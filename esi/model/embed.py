"""Batched, gradient-free embedding helpers shared by zero-shot, the training monitor and serving.

They live beside the model (not in zero-shot or inference) because every consumer of an
:class:`~esi.model.model.ESIModel` embeds texts the same way: in batches, without gradients, as unit
rows in float32 numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class TextEncoder(Protocol):
    """Anything with ``encode_text(list[str])`` (an ESIModel, or a stub in tests)."""

    def encode_text(self, texts: list[str]) -> Any: ...


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero instead of dividing by zero)."""
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.clip(norms, 1e-12, None)


def to_numpy(tensor: Any) -> np.ndarray:
    """A float32 numpy copy of a torch tensor or array-like (detached, on CPU)."""
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().float().cpu().numpy()
    return np.asarray(tensor, dtype=np.float32)


def embed_texts(model: TextEncoder, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised text embeddings (N, D) in batches, without gradients."""
    import torch

    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            chunks.append(to_numpy(model.encode_text(list(texts[start:start + batch_size]))))
    if not chunks:
        raise ValueError("no texts to embed")
    return unit_rows(np.concatenate(chunks))
