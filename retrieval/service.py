"""Start a local HTTP service (``chroma run``, ``python -m esi.api.cli serve``) and wait until it answers.

Used by the server tests and the API benchmark, which each need a real server process on loopback:
one place owns the free-port pick, the readiness poll, the log tail in errors and the clean stop.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

HOST = "127.0.0.1"  # loopback only


class ServiceError(RuntimeError):
    """The service exited or did not answer in time; the message ends with its log tail."""


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _log_tail(log_path: Path, chars: int = 3000) -> str:
    try:
        return log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def start_service(command: Sequence[str], ready_url: str, log_path: str | Path, *, timeout_s: float = 120.0,
                  env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                  poll_s: float = 0.3) -> subprocess.Popen:
    """Run ``command`` (output to ``log_path``) and return once ``GET ready_url`` gives HTTP 200.

    Raises :class:`ServiceError` (with the log tail) when the process exits first or ``timeout_s``
    passes; the process is stopped before raising.
    """
    log_path = Path(log_path)
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(env) if env is not None else None, cwd=cwd)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise ServiceError(f"{command[0]} exited with {process.returncode} before answering {ready_url}:\n"
                               f"{_log_tail(log_path)}")
        try:
            if httpx.get(ready_url, timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_service(process)
            raise ServiceError(f"{ready_url} did not answer within {timeout_s:g} s:\n{_log_tail(log_path)}")
        time.sleep(poll_s)


def stop_service(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """Terminate, then kill if it does not exit within ``timeout_s``."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
