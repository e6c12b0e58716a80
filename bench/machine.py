"""Machine description shared by every benchmark script (imported as a sibling module)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, object]:
    """CPU, cores, Python, platform, load average now, and torch threads when torch is loaded."""
    info: dict[str, object] = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
        "platform": platform.platform(), "load_avg_at_start": list(os.getloadavg()),
    }
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
        info["torch"] = sys.modules["torch"].__version__
    return info
