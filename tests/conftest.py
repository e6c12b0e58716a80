"""Shared test fixtures: the real data in ../shared/data and an offline Hugging Face environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ESI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real, read-only data (PTB-XL subset, CinC records, MIMIC statements)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}; set ESI_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ptbxl_root(shared_data: Path) -> Path:
    return shared_data / "ptbxl-mini"


@pytest.fixture(scope="session")
def cinc_root(shared_data: Path) -> Path:
    return shared_data / "cinc2020"


@pytest.fixture(scope="session")
def mimic_statements(shared_data: Path) -> list[str]:
    path = shared_data / "mimic-statements" / "statements.txt"
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
