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


@pytest.fixture
def ptbxl_subset(tmp_path: Path, ptbxl_root: Path):
    """Factory: copy the first ``n_files`` ptbxl-mini records (100 Hz files) into a PTB-XL layout under
    tmp_path, with a ptbxl_database.csv of the first ``n_csv`` rows (default all copied); returns
    (root, [header, rows...]) so a test can rewrite the CSV or the headers."""
    import csv
    import shutil

    def make(n_files: int, n_csv: int | None = None) -> tuple[Path, list[list[str]]]:
        root = tmp_path / "ptbxl"
        root.mkdir()
        shutil.copy(ptbxl_root / "scp_statements.csv", root)
        with (ptbxl_root / "ptbxl_database.csv").open(newline="") as handle:
            rows = list(csv.reader(handle))[: n_files + 1]
        column = rows[0].index("filename_lr")
        for row in rows[1:]:
            target = root / row[column]
            target.parent.mkdir(parents=True, exist_ok=True)
            for suffix in (".hea", ".dat"):
                shutil.copy((ptbxl_root / row[column]).with_suffix(suffix), target.with_suffix(suffix))
        with (root / "ptbxl_database.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows(rows[: (n_files if n_csv is None else n_csv) + 1])
        return root, rows

    return make
