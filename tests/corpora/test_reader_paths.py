"""Readers never leave the dataset folder: a header naming a signal file outside its record's folder
(a ``..`` step, an absolute path, a symlink pointing out) is a recorded skip that names the record
and the file, the other records still read, and the file outside is never opened.

Each outside file is a byte-exact copy of the record's own signal, so a reader that followed the
name would "succeed" with a silent wrong answer instead of failing for some other reason.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import wfdb

from corpora.__main__ import main
from corpora.base import RecordError, Skip
from corpora.cinc import CincReader
from corpora.ptbxl import PTBXLReader

N_ROWS = 4
CASES = ("dotdot", "absolute", "symlink")


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path the code under test opens (Python open/os.open, numpy, scipy, wfdb), resolved."""
    seen: list[Path] = []

    def spy(real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if args and isinstance(args[0], str | os.PathLike):
                seen.append(Path(args[0]).resolve())
            return real(*args, **kwargs)
        return wrapper

    for module, name in ((builtins, "open"), (io, "open"), (os, "open"), (np, "fromfile"),
                         (scipy.io, "loadmat"), (wfdb, "rdrecord")):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    return seen


def _batch(reader: PTBXLReader | CincReader) -> tuple[list[str], list[Skip]]:
    skipped: list[Skip] = []
    return [r.record_id for r in reader.iter_records(skipped)], skipped


def _point_outside(case: str, signal: Path, inside_root: Path, outside: Path) -> tuple[str, Path]:
    """Make ``signal``'s header reach a copy of it outside its folder; return (name in the reason, copy)."""
    header = signal.with_suffix(".hea")
    if case == "symlink":  # header untouched, the signal file itself leads out
        target = outside / f"decoy{signal.suffix}"
        shutil.move(signal, target)
        signal.symlink_to(target)
        return signal.name, target
    target = inside_root / f"x{signal.suffix}" if case == "dotdot" else outside / f"decoy{signal.suffix}"
    shutil.copy(signal, target)
    name = f"../../{target.name}" if case == "dotdot" else str(target)
    header.write_text(header.read_text().replace(f"{signal.name} ", f"{name} "))
    assert name in header.read_text()
    return name, target


@pytest.fixture
def ptbxl_copy(ptbxl_subset) -> Path:
    """The first rows of ptbxl-mini with their 100 Hz files, in the official layout."""
    return ptbxl_subset(N_ROWS)[0]


@pytest.fixture
def cinc_copy(tmp_path: Path, cinc_root: Path) -> Path:
    """Four CinC records two folders down (as in the 2021 layout), so ``../../`` lands in the root."""
    root = tmp_path / "cinc"
    records = root / "training" / "g1"
    records.mkdir(parents=True)
    for name in ("dx_mapping_scored.csv", "dx_mapping_unscored.csv"):
        shutil.copy(cinc_root / name, root)
    for record in ("A0002", "E00003", "S0002", "Q0002"):
        for suffix in (".hea", ".mat"):
            shutil.copy(cinc_root / f"{record}{suffix}", records)
    return root


@pytest.mark.parametrize("case", CASES)
def test_ptbxl_signal_file_outside_the_record_folder_is_a_skip(ptbxl_copy: Path, tmp_path: Path, case: str,
                                                               opened: list[Path]) -> None:
    (tmp_path / "outside").mkdir()
    dat = ptbxl_copy / "records100" / "00000" / "00002_lr.dat"
    before = PTBXLReader(ptbxl_copy).read("2").signal
    name, target = _point_outside(case, dat, ptbxl_copy, tmp_path / "outside")
    opened.clear()
    with pytest.raises(RecordError, match="outside the record's folder") as info:
        PTBXLReader(ptbxl_copy).read("2")
    assert info.value.record_id == "2" and repr(name) in info.value.reason
    read, skipped = _batch(PTBXLReader(ptbxl_copy))
    assert read == ["1", "3", "4"]
    assert [s.record for s in skipped] == ["2"] and repr(name) in skipped[0].reason
    assert target.resolve() not in opened and dat.resolve() not in opened
    assert (ptbxl_copy / "records100" / "00000" / "00003_lr.dat").resolve() in opened  # the spy does see reads
    assert before is not None and before.shape == (12, 1000)


@pytest.mark.parametrize("case", CASES)
def test_cinc_signal_file_outside_the_record_folder_is_a_skip(cinc_copy: Path, tmp_path: Path, case: str,
                                                              opened: list[Path]) -> None:
    (tmp_path / "outside").mkdir()
    mat = cinc_copy / "training" / "g1" / "A0002.mat"
    name, target = _point_outside(case, mat, cinc_copy, tmp_path / "outside")
    opened.clear()
    with pytest.raises(RecordError, match="outside the record's folder") as info:
        CincReader(cinc_copy).read("A0002")
    assert info.value.record_id == "A0002" and repr(name) in info.value.reason
    read, skipped = _batch(CincReader(cinc_copy))
    assert sorted(read) == ["E00003", "Q0002", "S0002"]
    assert [s.record for s in skipped] == ["A0002"] and repr(name) in skipped[0].reason
    assert target.resolve() not in opened and mat.resolve() not in opened
    assert (cinc_copy / "training" / "g1" / "S0002.mat").resolve() in opened


def test_export_records_the_skip_and_exports_the_rest(ptbxl_copy: Path, cinc_copy: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "outside").mkdir()
    _, ptbxl_target = _point_outside("absolute", ptbxl_copy / "records100" / "00000" / "00003_lr.dat",
                                     ptbxl_copy, tmp_path / "outside")
    cinc_name, _ = _point_outside("dotdot", cinc_copy / "training" / "g1" / "Q0002.mat", cinc_copy,
                                  tmp_path / "outside")
    for dataset, root, record, bad, n_left in (("ptbxl", ptbxl_copy, "3", str(ptbxl_target), N_ROWS - 1),
                                               ("cinc", cinc_copy, "Q0002", cinc_name, 3)):
        out = tmp_path / f"export-{dataset}"
        args = ["export", "--dataset", dataset, "--root", str(root), "--out", str(out), "--no-progress"]
        assert main(args) == 0
        assert json.loads(capsys.readouterr().out)["n_records"] == n_left
        skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
        assert [s["record"] for s in skipped] == [record] and repr(bad) in skipped[0]["reason"]


def test_links_and_folders_inside_the_dataset_still_read(ptbxl_copy: Path, tmp_path: Path) -> None:
    """Only leaving the record's folder is refused: a link within it, or a linked records folder, is fine."""
    folder = ptbxl_copy / "records100" / "00000"
    expected = PTBXLReader(ptbxl_copy).read("2").signal
    shutil.move(folder / "00002_lr.dat", folder / "real.dat")
    (folder / "00002_lr.dat").symlink_to("real.dat")
    assert np.array_equal(PTBXLReader(ptbxl_copy).read("2").signal, expected)
    shutil.move(folder, tmp_path / "elsewhere")  # the whole records folder lives on another disk
    folder.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert np.array_equal(PTBXLReader(ptbxl_copy).read("2").signal, expected)
    assert _batch(PTBXLReader(ptbxl_copy))[0] == ["1", "2", "3", "4"]


def test_ptbxl_csv_file_name_outside_the_dataset_is_a_skip(ptbxl_copy: Path, tmp_path: Path) -> None:
    shutil.copytree(ptbxl_copy / "records100", tmp_path / "records100")  # a full copy one folder up
    path = ptbxl_copy / "ptbxl_database.csv"
    path.write_text(path.read_text().replace("records100/00000/00004_lr", "../records100/00000/00004_lr"))
    with pytest.raises(RecordError, match=r"^4: filename_lr '\.\./records100/00000/00004_lr' points outside"):
        PTBXLReader(ptbxl_copy).read("4")
    assert _batch(PTBXLReader(ptbxl_copy))[0] == ["1", "2", "3"]
