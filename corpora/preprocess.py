"""The signal transform's two stages, built from :mod:`corpora.preprocessors` steps.

:class:`Preprocess` is the export stage (its parameters are saved in export configs and in a model's
``signal_preprocess``); :func:`model_input` is the model-input stage (resample to the model's rate,
crop/pad to its window, z-score the record). Training applies the first in ``corpora export`` and the
second in ESI's loader; serving (:func:`esi.inference.fit_to_model`: inference, eval, search and API
uploads) applies both in turn, so the arrays are identical. Why each rule is the one kept is in
:mod:`corpora.preprocessors`.

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
   ratio (e.g. 500 -> 100 is up 1 / down 5; 257 -> 100 is up 100 / down 257; see
   :func:`corpora.preprocessors.resampling_ratio`), whose built-in FIR is the anti-aliasing filter.
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
from typing import Any, Literal

import numpy as np

from .base import ECGRecord, RecordError
from .preprocessors import (
    BandPass,
    BaselineRemoval,
    FitLength,
    HoldZeroFilled,
    NanPolicy,
    NanRepair,
    Normalise,
    Pipeline,
    Resample,
    Step,
)

NormaliseMode = Literal["none", "zscore", "minmax"]
Crop = Literal["start", "centre"]
# The model-input stage divides by std + this (the official ESI loader's rule; every model trained with it).
MODEL_INPUT_EPS = 1e-6


@dataclass(frozen=True)
class Preprocess:
    """The export stage's parameters (see the module docstring for the steps and their order)."""

    target_rate: float | None = None
    duration_s: float | None = 10.0
    bandpass: tuple[float, float] | None = (0.5, 40.0)
    baseline: bool = False
    normalise: NormaliseMode = "none"
    nan: NanPolicy = "interpolate"
    crop: Crop = "start"
    filter_order: int = 4

    def __post_init__(self) -> None:
        if self.bandpass is not None:
            low, high = self.bandpass
            object.__setattr__(self, "bandpass", (float(low), float(high)))
        if self.normalise not in ("none", "zscore", "minmax"):
            raise ValueError(f"normalise must be 'none', 'zscore' or 'minmax', not {self.normalise!r}")
        self.pipeline()  # every other parameter is checked by the step it configures

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters (stored in manifests, ``extra["preprocess"]`` and model configs)."""
        values = dataclasses.asdict(self)
        values["bandpass"] = list(self.bandpass) if self.bandpass else None
        return values

    def pipeline(self) -> Pipeline:
        """These parameters as a :class:`~corpora.preprocessors.Pipeline` of steps."""
        steps: list[Step] = [NanRepair(self.nan)]
        if self.baseline:
            steps.append(BaselineRemoval())
        if self.bandpass is not None:
            steps.append(BandPass(*self.bandpass, order=self.filter_order))
        elif self.filter_order < 1:
            raise ValueError("filter_order must be at least 1")
        if self.target_rate is not None:
            steps.append(Resample(self.target_rate))
        if self.duration_s is not None:
            steps.append(FitLength(seconds=self.duration_s, crop=self.crop))
        elif self.crop not in ("start", "centre"):
            raise ValueError(f"crop must be 'start' or 'centre', not {self.crop!r}")
        if self.normalise != "none":
            steps.append(Normalise(self.normalise, scope="lead"))
        steps.append(HoldZeroFilled())
        return Pipeline(tuple(steps))

    def __call__(self, record: ECGRecord) -> ECGRecord:
        rid = record.record_id
        if record.signal is None or record.sampling_rate is None:
            raise RecordError(rid, "no signal to preprocess (metadata-only record)")
        state = self.pipeline().run(record.signal, float(record.sampling_rate), rid,
                                    missing=record.missing_leads,
                                    zero_filled=record.extra.get("zero_filled_leads", []))
        extra = dict(record.extra)
        info = dict(state.info)
        if "nan_samples" in info:
            info["nan_samples"] = {**extra.get("nan_samples", {}), **info["nan_samples"]}
        extra.update(info)
        if "padded_samples" not in info:  # no length step: nothing padded by this pass
            extra["padded_samples"] = 0
        extra.update(
            preprocess=self.params(),
            original_sampling_rate=float(record.sampling_rate),
            original_samples=int(record.signal.shape[1]),
        )
        if state.zero_filled:
            extra["zero_filled_leads"] = state.zero_filled
        if state.flat:
            extra["flat_leads"] = state.flat
        return dataclasses.replace(
            record,
            signal=state.data.astype(np.float32),
            sampling_rate=state.fs,
            missing_leads=state.missing,
            label_info={key: dict(value) for key, value in record.label_info.items()},
            labels=dict(record.labels),
            extra=extra,
        )


def model_input(sampling_rate: float, n_samples: int) -> Pipeline:
    """The model-input stage: ``(12, T)`` at any rate -> ``(12, n_samples)`` at ``sampling_rate``,
    z-scored over the whole record. Applied to exported rows in training and after :class:`Preprocess`
    at serving time; the model config's ``sampling_rate`` and ``n_samples`` are its parameters."""
    return Pipeline((
        NanRepair("interpolate"),
        Resample(float(sampling_rate)),
        FitLength(samples=int(n_samples)),
        Normalise("zscore", scope="record", eps=MODEL_INPUT_EPS),
    ))
