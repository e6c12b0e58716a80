"""One documented signal transform shared by export, retrieval and model training.

``Preprocess(...)(record)`` returns a *new* :class:`ECGRecord` (the input is not modified).
Steps, in this order, each skipped when switched off:

1. **NaN handling** (``nan``). A lead that is entirely NaN counts as missing: with
   ``nan="error"`` it raises :class:`RecordError`, otherwise it becomes zeros and is added to
   ``missing_leads`` and ``extra["zero_filled_leads"]``. Isolated NaN stretches are linearly
   interpolated (``"interpolate"``, edges held at the nearest valid sample), set to 0
   (``"zero"``), or raise (``"error"``).
2. **Baseline removal** (``baseline=True``): subtract a two-stage running median
   (0.2 s, then 0.6 s; windows shrink at the edges), the classic de Chazal baseline estimate.
3. **Band-pass** (``bandpass=(low, high)`` Hz, default 0.5-40): zero-phase Butterworth
   (``butter`` order ``filter_order``, second-order sections, ``sosfiltfilt``) at the native
   rate. When ``high`` is at or above 95 % of Nyquist the low-pass half is dropped (the signal
   is already band-limited there) and only the high-pass is applied.
4. **Resampling** (``target_rate``): ``scipy.signal.resample_poly`` with the exact rational
   ratio (e.g. 500 -> 100 is up 1 / down 5; 257 -> 100 is up 100 / down 257), whose built-in
   FIR is the anti-aliasing filter.
5. **Length** (``duration_s``): longer signals are cropped, from the start (``crop="start"``,
   the default: keeps time zero aligned with the report) or the centre (``crop="centre"``);
   shorter ones are padded with zeros at the end, recorded in ``extra["padded_samples"]``.
6. **Normalisation** (``normalise``) per lead over the real (unpadded) samples: ``"zscore"``
   (mean 0, std 1) or ``"minmax"`` (to [-1, 1]); constant leads become 0 instead of dividing
   by zero. Padding stays exactly zero.

Flat leads (constant after step 1, e.g. an unconnected electrode) are set to exactly 0 by
high-pass filtering/baseline removal and by normalisation, and reported in ``extra["flat_leads"]``.

The output signal is float32 ``(12, T)``; ``extra["preprocess"]``
records the parameters and ``extra["original_sampling_rate"]``/``["original_samples"]`` the input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import signal as sps

from .base import STANDARD_LEADS, ECGRecord, RecordError

NanPolicy = Literal["zero", "interpolate", "error"]
Normalise = Literal["none", "zscore", "minmax"]
Crop = Literal["start", "centre"]


def _running_median(data: np.ndarray, window: int) -> np.ndarray:
    """Centred running median along time (pandas' skip-list rolling median: O(n log w),
    ~20x faster than scipy.ndimage.median_filter for 0.6 s windows); edges use shorter windows."""
    frame = pd.DataFrame(data.T)
    return frame.rolling(window, center=True, min_periods=1).median().to_numpy().T


def _interpolate_nans(lead: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN stretches; edges take the nearest valid sample."""
    valid = np.isfinite(lead)
    positions = np.arange(lead.size)
    return np.interp(positions, positions[valid], lead[valid]).astype(lead.dtype)


@dataclass(frozen=True)
class Preprocess:
    """The signal transform (see the module docstring for the exact steps and their order)."""

    target_rate: float | None = None
    duration_s: float | None = 10.0
    bandpass: tuple[float, float] | None = (0.5, 40.0)
    baseline: bool = False
    normalise: Normalise = "none"
    nan: NanPolicy = "interpolate"
    crop: Crop = "start"
    filter_order: int = 4

    def __post_init__(self) -> None:
        if self.target_rate is not None and not self.target_rate > 0:
            raise ValueError(f"target_rate must be positive, not {self.target_rate}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration_s must be positive, not {self.duration_s}")
        if self.bandpass is not None:
            low, high = self.bandpass
            if not 0 <= low < high:
                raise ValueError(f"bandpass must be (low, high) with 0 <= low < high, not {self.bandpass}")
            object.__setattr__(self, "bandpass", (float(low), float(high)))
        if self.normalise not in ("none", "zscore", "minmax"):
            raise ValueError(f"normalise must be 'none', 'zscore' or 'minmax', not {self.normalise!r}")
        if self.nan not in ("zero", "interpolate", "error"):
            raise ValueError(f"nan must be 'zero', 'interpolate' or 'error', not {self.nan!r}")
        if self.crop not in ("start", "centre"):
            raise ValueError(f"crop must be 'start' or 'centre', not {self.crop!r}")
        if self.filter_order < 1:
            raise ValueError("filter_order must be at least 1")

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters (stored in manifests and ``extra["preprocess"]``)."""
        values = dataclasses.asdict(self)
        values["bandpass"] = list(self.bandpass) if self.bandpass else None
        return values

    def __call__(self, record: ECGRecord) -> ECGRecord:
        rid = record.record_id
        if record.signal is None or record.sampling_rate is None:
            raise RecordError(rid, "no signal to preprocess (metadata-only record)")
        data = np.array(record.signal, dtype=np.float64)
        if data.ndim != 2 or data.shape[0] != len(STANDARD_LEADS):
            raise RecordError(rid, f"expected a (12, T) signal, got shape {data.shape}")
        fs = float(record.sampling_rate)
        missing = list(record.missing_leads)
        zero_filled = list(record.extra.get("zero_filled_leads", []))
        extra = dict(record.extra)

        # 1. NaN handling.
        for index, lead in enumerate(STANDARD_LEADS):
            finite = np.isfinite(data[index])
            if finite.all():
                continue
            if not finite.any():
                if self.nan == "error":
                    raise RecordError(rid, f"lead {lead} is entirely NaN")
                data[index] = 0.0
                if lead not in missing:
                    missing.append(lead)
                if lead not in zero_filled:
                    zero_filled.append(lead)
            elif self.nan == "error":
                raise RecordError(rid, f"lead {lead} has {int((~finite).sum())} NaN samples")
            elif self.nan == "zero":
                data[index, ~finite] = 0.0
            else:
                data[index] = _interpolate_nans(data[index])
            extra.setdefault("nan_samples", {})[lead] = int((~finite).sum())
        flat = [lead for index, lead in enumerate(STANDARD_LEADS)
                if lead not in zero_filled and np.ptp(data[index]) == 0]

        # 2. Baseline wander removal.
        if self.baseline:
            estimate = _running_median(data, max(1, int(round(0.2 * fs)) | 1))
            data = data - _running_median(estimate, max(1, int(round(0.6 * fs)) | 1))

        # 3. Band-pass at the native rate.
        if self.bandpass is not None:
            data = self._bandpass(rid, data, fs, extra)

        flat_rows = [STANDARD_LEADS.index(lead) for lead in flat]
        if flat_rows and (self.baseline or (self.bandpass is not None and self.bandpass[0] > 0)):
            data[flat_rows] = 0.0  # the exact high-pass of a constant; avoids float residue

        # 4. Resampling.
        rate = fs
        if self.target_rate is not None and float(self.target_rate) != fs:
            ratio = Fraction(str(float(self.target_rate))) / Fraction(str(fs))
            data = sps.resample_poly(data, ratio.numerator, ratio.denominator, axis=1)
            rate = float(self.target_rate)

        # 5. Crop or pad.
        real_samples = data.shape[1]
        padded = 0
        if self.duration_s is not None:
            wanted = int(round(self.duration_s * rate))
            if real_samples > wanted:
                start = (real_samples - wanted) // 2 if self.crop == "centre" else 0
                data = data[:, start:start + wanted]
                extra["crop_start_sample"] = start
                real_samples = wanted
            elif real_samples < wanted:
                padded = wanted - real_samples
                data = np.concatenate([data, np.zeros((data.shape[0], padded))], axis=1)
        extra["padded_samples"] = padded

        # 6. Normalisation over real samples only.
        if self.normalise != "none":
            body = data[:, :real_samples]
            if self.normalise == "zscore":
                centre = body.mean(axis=1, keepdims=True)
                scale = body.std(axis=1, keepdims=True)
                body = np.where(scale > 0, (body - centre) / np.where(scale > 0, scale, 1.0), 0.0)
            else:
                low = body.min(axis=1, keepdims=True)
                span = body.max(axis=1, keepdims=True) - low
                body = np.where(span > 0, 2.0 * (body - low) / np.where(span > 0, span, 1.0) - 1.0, 0.0)
            body[flat_rows] = 0.0  # a constant lead normalises to 0, not to amplified rounding noise
            data[:, :real_samples] = body
        for index, lead in enumerate(STANDARD_LEADS):  # zero-filled leads stay exactly zero
            if lead in zero_filled:
                data[index] = 0.0

        extra.update(
            preprocess=self.params(),
            original_sampling_rate=fs,
            original_samples=int(record.signal.shape[1]),
        )
        if zero_filled:
            extra["zero_filled_leads"] = zero_filled
        if flat:
            extra["flat_leads"] = flat
        return dataclasses.replace(
            record,
            signal=data.astype(np.float32),
            sampling_rate=rate,
            missing_leads=missing,
            label_info={key: dict(value) for key, value in record.label_info.items()},
            labels=dict(record.labels),
            extra=extra,
        )

    def _bandpass(self, rid: str, data: np.ndarray, fs: float, extra: dict[str, Any]) -> np.ndarray:
        assert self.bandpass is not None
        low, high = self.bandpass
        nyquist = fs / 2.0
        use_high = high < 0.95 * nyquist
        use_low = low > 0
        if use_low and use_high:
            sos = sps.butter(self.filter_order, [low, high], btype="bandpass", fs=fs, output="sos")
        elif use_low:
            sos = sps.butter(self.filter_order, low, btype="highpass", fs=fs, output="sos")
        elif use_high:
            sos = sps.butter(self.filter_order, high, btype="lowpass", fs=fs, output="sos")
        else:
            return data
        if not use_high:
            extra["bandpass_note"] = f"low-pass {high:g} Hz skipped: at or above 95% of Nyquist ({nyquist:g} Hz)"
        padlen = 3 * (2 * len(sos) + 1)
        if data.shape[1] <= padlen:
            raise RecordError(rid, f"signal of {data.shape[1]} samples is too short to band-pass (needs > {padlen})")
        return sps.sosfiltfilt(sos, data, axis=1)
