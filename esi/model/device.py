"""Which torch device to run on: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``.

Why a function of its own: asking for CUDA on a machine without it must be a one-line error naming
the option (exit code 2 in the CLIs), not a traceback from deep inside torch when the first tensor moves.
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(ValueError):
    """The requested device is unknown or not available on this machine."""


def resolve_device(name: str | None, option: str = "device") -> str:
    """``auto``/None -> ``cuda`` if ``torch.cuda.is_available()`` else ``cpu``; ``cuda`` without CUDA is a
    :class:`DeviceError` naming ``option`` (a CLI passes its flag). Returns ``cpu`` or ``cuda``."""
    import torch

    kind = (name or "auto").strip().lower()
    if kind not in DEVICES:
        raise DeviceError(f"{option} must be one of {', '.join(DEVICES)}, got {name!r}")
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"{option} cuda: CUDA is not available on this machine (torch.cuda.is_available() "
                          f"is False); use {option} cpu or {option} auto")
    return kind
