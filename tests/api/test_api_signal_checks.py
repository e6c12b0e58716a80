"""POST /api/classify with bad or exported ECGs: no usable lead is a 422, flat leads and NaN repairs are
in the response's notes, and an exported file (CSV here) is read like the CLI reads it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import wfdb

from corpora.base import STANDARD_LEADS


def _signal(ptbxl_root: Path) -> np.ndarray:
    return wfdb.rdrecord(str(ptbxl_root / "records100" / "00000" / "00001_lr")).p_signal.T.astype(np.float32)


def _npy(array: np.ndarray) -> list[tuple[str, tuple[str, bytes]]]:
    buffer = io.BytesIO()
    np.save(buffer, array.astype(np.float32))
    return [("files", ("ecg.npy", buffer.getvalue()))]


def test_all_zero_ecg_is_422(client):
    response = client.post("/api/classify", files=_npy(np.zeros((12, 1000))), data={"sampling_rate": "100"})
    assert response.status_code == 422
    assert response.json()["detail"] == ("ecg.npy: no usable lead: leads I, II, III, aVR, aVL, aVF, V1, V2, V3, V4, "
                                         "V5, V6 flat (peak-to-peak under 0.005 mV)")


def test_single_real_lead_is_scored_with_a_note(client, ptbxl_root):
    one_lead = np.zeros((12, 1000))
    one_lead[1] = _signal(ptbxl_root)[1]
    response = client.post("/api/classify", files=_npy(one_lead), data={"sampling_rate": "100"})
    assert response.status_code == 200, response.text
    assert response.json()["notes"] == ["leads I, III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6 flat "
                                        "(peak-to-peak under 0.005 mV), zero-filled"]


def test_nan_samples_are_repaired_with_a_note(client, ptbxl_root):
    signal = _signal(ptbxl_root)
    signal[STANDARD_LEADS.index("V3"), 100:120] = np.nan
    response = client.post("/api/classify", files=_npy(signal), data={"sampling_rate": "100"})
    assert response.status_code == 200, response.text
    assert response.json()["notes"] == ["repaired 20 NaN samples by linear interpolation (V3 20)"]


def test_csv_upload_scores_like_the_npy_upload(client, ptbxl_root):
    signal = _signal(ptbxl_root)
    text = "\n".join([",".join(STANDARD_LEADS)] + [",".join(repr(float(v)) for v in row) for row in signal.T])
    csv_body = client.post("/api/classify", files=[("files", ("ecg.csv", text.encode()))],
                           data={"sampling_rate": "100"})
    npy_body = client.post("/api/classify", files=_npy(signal), data={"sampling_rate": "100"})
    assert csv_body.status_code == 200, csv_body.text
    assert csv_body.json()["ecg"]["format"] == "csv" and csv_body.json()["ecg"]["notes"] == []
    assert [s["class"] for s in csv_body.json()["scores"]] == [s["class"] for s in npy_body.json()["scores"]]
    missing = client.post("/api/classify", files=[("files", ("ecg.csv", text.encode()))])
    assert missing.status_code == 422 and "does not carry its sampling rate" in missing.json()["detail"]
