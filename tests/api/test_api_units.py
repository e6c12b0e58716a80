"""Upload parsing, plotting and the serve CLI on real records, without a server or a model."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pytest
import wfdb
from PIL import Image

from esi.serve.api.uploads import UploadError, parse_upload, sanitize_name
from esi.serve.plotting import STANDARD_LEADS, plot_ecg


def _pair(folder: Path, name: str, data_suffix: str) -> dict[str, bytes]:
    return {f"{name}.hea": (folder / f"{name}.hea").read_bytes(),
            f"{name}{data_suffix}": (folder / f"{name}{data_suffix}").read_bytes()}


# ---- uploads ----------------------------------------------------------------------------------------


def test_wfdb_upload_equals_wfdb_rdrecord(ptbxl_root):
    folder = ptbxl_root / "records500" / "00000"
    name = sorted(p.stem for p in folder.glob("*.hea"))[0]
    parsed = parse_upload(_pair(folder, name, ".dat"))
    reference = wfdb.rdrecord(str(folder / name))
    assert parsed.sampling_rate == 500.0 and parsed.source_format == "wfdb"
    np.testing.assert_allclose(parsed.signal, reference.p_signal.T, atol=1e-6)


def test_cinc_mat_upload_equals_wfdb_rdrecord(cinc_root):
    parsed = parse_upload(_pair(cinc_root, "A0001", ".mat"))
    reference = wfdb.rdrecord(str(cinc_root / "A0001"))
    assert parsed.source_format == "cinc-mat" and (parsed.age, parsed.sex) == (74.0, "male")
    np.testing.assert_allclose(parsed.signal, reference.p_signal.T, atol=1e-6)


def test_georgia_header_rejected_by_wfdb_is_read_tolerantly(cinc_root):
    name = sorted(p.stem for p in cinc_root.glob("E*.hea"))[0]
    parsed = parse_upload(_pair(cinc_root, name, ".mat"))
    assert parsed.signal.shape[0] == 12 and parsed.sampling_rate == 500.0
    assert np.abs(parsed.signal).max() < 20  # millivolts, gain 4880/mV applied


def test_data_file_renamed_on_the_client_is_still_matched(ptbxl_root):
    files = _pair(ptbxl_root / "records100" / "00000", "00001_lr", ".dat")
    renamed = {"my.hea": files["00001_lr.hea"], "upload.dat": files["00001_lr.dat"]}
    np.testing.assert_array_equal(parse_upload(renamed).signal, parse_upload(files).signal)


def test_microvolt_header_is_converted_to_millivolts(ptbxl_root):
    files = _pair(ptbxl_root / "records100" / "00000", "00001_lr", ".dat")
    micro = dict(files)
    micro["00001_lr.hea"] = files["00001_lr.hea"].replace(b"1000.0(0)/mV", b"1.0(0)/uV")
    np.testing.assert_allclose(parse_upload(micro).signal, parse_upload(files).signal, atol=1e-6)


def test_npy_upload_needs_and_checks_the_rate():
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((12, 1000), dtype=np.float32))
    parsed = parse_upload({"x.npy": buffer.getvalue()}, "100")
    assert parsed.signal.shape == (12, 1000) and parsed.duration_s == 10.0
    with pytest.raises(UploadError, match="sampling_rate"):
        parse_upload({"x.npy": buffer.getvalue()}, "fast")
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UploadError, match="not a readable .npy"):
        parse_upload({"x.npy": pickled.getvalue()}, "100")


@pytest.mark.parametrize("raw,safe", [
    ("../../etc/passwd", "passwd"), ("..\\..\\windows\\win.ini", "win.ini"), ("/abs/path/rec.hea", "rec.hea"),
    (".hidden", "hidden"), ("a b;c$(rm).dat", "a_b_c_rm_.dat"), ("", "upload"), ("..", "upload"),
])
def test_sanitize_name(raw, safe):
    assert sanitize_name(raw) == safe


# ---- plotting ---------------------------------------------------------------------------------------


def test_plot_sizes_follow_paper_speed_and_gain(ptbxl_root):
    signal = wfdb.rdrecord(str(ptbxl_root / "records100" / "00000" / "00001_lr")).p_signal.T
    image = Image.open(io.BytesIO(plot_ecg(signal, 100.0, layout="3x4")))
    # 0.4 s calibration margin + 10 s at 25 mm/s; 12 mV of rows at 10 mm/mV; 100 dpi.
    assert image.width == pytest.approx(10.4 * 25 / 25.4 * 100, abs=2)
    assert image.height == pytest.approx(12 * 10 / 25.4 * 100, abs=2)
    rows = Image.open(io.BytesIO(plot_ecg(signal, 100.0, layout="12row")))
    assert rows.height > image.height  # one row per lead
    pixels = np.asarray(image.convert("L"))
    assert (pixels < 60).mean() > 0.003  # dark trace pixels exist, not only grid


def test_plot_svg_and_arbitrary_leads_in_12row():
    signal = np.sin(np.linspace(0, 20 * np.pi, 1000))[None].repeat(3, axis=0)
    svg = plot_ecg(signal, 100.0, lead_names=["I", "II", "V1"], layout="12row", image_format="svg")
    assert svg.lstrip().startswith(b"<?xml") and b"<svg" in svg
    with pytest.raises(ValueError, match="needs all 12 standard leads"):
        plot_ecg(signal, 100.0, lead_names=["I", "II", "V1"], layout="3x4")


@pytest.mark.parametrize("kwargs,message", [
    ({"layout": "2x6"}, "unknown layout"), ({"image_format": "gif"}, "unknown image format"),
])
def test_plot_rejects_unknown_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plot_ecg(np.zeros((12, 500)), 100.0, **kwargs)


def test_plot_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="match the lead names"):
        plot_ecg(np.zeros((11, 500)), 100.0, lead_names=STANDARD_LEADS)


# ---- CLI --------------------------------------------------------------------------------------------


def test_register_adds_serve_with_defaults():
    from esi.cli.serve import register, run_serve

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", "--model", "m", "--store", "s"])
    assert (args.host, args.port, args.collection) == ("127.0.0.1", 8000, "ecg")
    assert args._run is run_serve


def test_serve_reports_a_bad_model_dir(tmp_path, capsys):
    from esi.cli.serve import main

    assert main(["serve", "--model", str(tmp_path / "nope"), "--store", str(tmp_path / "store")]) == 2
    assert "not an ESI model directory" in capsys.readouterr().err
