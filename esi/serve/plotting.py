"""Server-side 12-lead ECG plots (matplotlib, Agg) as PNG or SVG bytes.

Two layouts, both on standard ECG paper (25 mm/s, 10 mm/mV, 1 mm / 5 mm grid):

* ``"3x4"``: the clinical print-out, four columns of 2.5 s (I/II/III, aVR/aVL/aVF, V1-V3, V4-V6)
  plus a full-length lead-II rhythm strip;
* ``"12row"``: every lead on its own row over the whole record.

The object-oriented matplotlib API (``Figure`` + ``FigureCanvasAgg``) is used instead of pyplot so the
functions hold no global state and can be called from the web server's worker threads.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from typing import Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

STANDARD_LEADS: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
Layout = Literal["3x4", "12row"]
ImageFormat = Literal["png", "svg"]
LAYOUTS: tuple[str, ...] = ("3x4", "12row")
FORMATS: tuple[str, ...] = ("png", "svg")
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml"}

_PAPER_SPEED_MM_PER_S = 25.0
_GAIN_MM_PER_MV = 10.0
_MM_PER_INCH = 25.4
_GRID_MINOR = "#f6c8c8"
_GRID_MAJOR = "#e79a9a"
_TRACE = "#101010"
# Text rendering (font cache, mathtext) is not guaranteed thread-safe in matplotlib; plotting is
# cheap relative to the lock's cost, so serialise the draw/save step.
_RENDER_LOCK = threading.Lock()


def _validate(signal: np.ndarray, sampling_rate: float, lead_names: Sequence[str]) -> np.ndarray:
    signal = np.asarray(signal, dtype=np.float32)
    if signal.ndim != 2 or signal.shape[0] != len(lead_names):
        raise ValueError(
            f"signal must have shape ({len(lead_names)}, T) to match the lead names; got {signal.shape}"
        )
    if signal.shape[1] < 2:
        raise ValueError(f"signal has {signal.shape[1]} samples; at least 2 are needed to plot")
    if not np.isfinite(sampling_rate) or sampling_rate <= 0:
        raise ValueError(f"sampling_rate must be a positive number; got {sampling_rate}")
    return np.nan_to_num(signal, nan=0.0, posinf=0.0, neginf=0.0)


def _draw_grid(ax, x_max_s: float, y_min_mv: float, y_max_mv: float) -> None:
    """ECG paper: 1 mm minor (0.04 s x 0.1 mV) and 5 mm major (0.2 s x 0.5 mV) lines."""
    for step_s, step_mv, color, width in ((0.04, 0.1, _GRID_MINOR, 0.3), (0.2, 0.5, _GRID_MAJOR, 0.6)):
        xs = np.arange(0.0, x_max_s + 1e-9, step_s)
        ys = np.arange(np.floor(y_min_mv / step_mv) * step_mv, y_max_mv + 1e-9, step_mv)
        segments = [((x, y_min_mv), (x, y_max_mv)) for x in xs] + [((0.0, y), (x_max_s, y)) for y in ys]
        ax.add_collection(LineCollection(segments, colors=color, linewidths=width, zorder=0))


def _size_figure(fig: Figure, width_s: float, height_mv: float, dpi: int, scale: float) -> None:
    """Size the figure so that 1 s is 25 mm and 1 mV is 10 mm (times ``scale``)."""
    width_in = width_s * _PAPER_SPEED_MM_PER_S / _MM_PER_INCH * scale
    height_in = height_mv * _GAIN_MM_PER_MV / _MM_PER_INCH * scale
    fig.set_size_inches(width_in, height_in)
    fig.set_dpi(dpi)


def _calibration_pulse(ax, x0: float, baseline: float) -> None:
    """The 1 mV x 0.2 s calibration pulse at the left edge of a row."""
    xs = [x0, x0 + 0.04, x0 + 0.04, x0 + 0.16, x0 + 0.16, x0 + 0.2]
    ys = [baseline, baseline, baseline + 1.0, baseline + 1.0, baseline, baseline]
    ax.plot(xs, ys, color=_TRACE, linewidth=0.8)


def _layout_3x4(
    ax, signal: np.ndarray, fs: float, lead_index: dict[str, int], rhythm_lead: str
) -> tuple[float, float, float]:
    """Draw the 3x4 + rhythm strip layout; returns (width_s, y_min, y_max) of the drawing."""
    columns = (("I", "II", "III"), ("aVR", "aVL", "aVF"), ("V1", "V2", "V3"), ("V4", "V5", "V6"))
    n_samples = signal.shape[1]
    duration = n_samples / fs
    column_s = min(2.5, duration / 4)
    row_pitch = 3.0  # mV between row baselines
    cal_s = 0.4  # room on the left for the calibration pulse
    width = cal_s + 4 * column_s
    rows = 4
    baselines = [row_pitch * (rows - 1 - r) for r in range(rows)]
    for r in range(rows):
        _calibration_pulse(ax, 0.1, baselines[r])
    for c, leads in enumerate(columns):
        start = int(round(c * column_s * fs))
        stop = min(n_samples, int(round((c + 1) * column_s * fs)))
        t = cal_s + c * column_s + np.arange(stop - start) / fs
        for r, lead in enumerate(leads):
            trace = signal[lead_index[lead], start:stop]
            ax.plot(t, baselines[r] + np.clip(trace, -row_pitch * 0.6, row_pitch * 0.9),
                    color=_TRACE, linewidth=0.6)
            ax.text(t[0] + 0.04, baselines[r] + 0.9, lead, fontsize=8, fontweight="bold")
        if c > 0:
            for r in range(rows - 1):
                ax.plot([t[0], t[0]], [baselines[r] - 0.3, baselines[r] + 0.3], color=_TRACE, linewidth=0.8)
    rhythm = signal[lead_index[rhythm_lead], : int(round(4 * column_s * fs))]
    t = cal_s + np.arange(rhythm.shape[0]) / fs
    ax.plot(t, baselines[-1] + np.clip(rhythm, -row_pitch * 0.6, row_pitch * 0.9), color=_TRACE, linewidth=0.6)
    ax.text(t[0] + 0.04, baselines[-1] + 0.9, rhythm_lead, fontsize=8, fontweight="bold")
    return width, baselines[-1] - 1.5, baselines[0] + 1.5


def _layout_12row(ax, signal: np.ndarray, fs: float, lead_names: Sequence[str]) -> tuple[float, float, float]:
    """Draw one full-length row per lead; returns (width_s, y_min, y_max)."""
    row_pitch = 2.0
    cal_s = 0.4
    n = len(lead_names)
    duration = signal.shape[1] / fs
    t = cal_s + np.arange(signal.shape[1]) / fs
    for i, lead in enumerate(lead_names):
        baseline = row_pitch * (n - 1 - i)
        _calibration_pulse(ax, 0.1, baseline)
        ax.plot(t, baseline + np.clip(signal[i], -row_pitch * 0.6, row_pitch * 0.6), color=_TRACE, linewidth=0.5)
        ax.text(cal_s + 0.04, baseline + 0.7, lead, fontsize=8, fontweight="bold")
    return cal_s + duration, -1.2, row_pitch * (n - 1) + 1.2


def plot_ecg(
    signal: np.ndarray,
    sampling_rate: float,
    *,
    lead_names: Sequence[str] = STANDARD_LEADS,
    layout: Layout = "3x4",
    image_format: ImageFormat = "png",
    title: str | None = None,
    dpi: int = 100,
    scale: float = 1.0,
    max_seconds: float = 10.0,
) -> bytes:
    """Render a ``(n_leads, T)`` signal in millivolts as PNG or SVG bytes.

    ``"3x4"`` needs the 12 standard leads; ``"12row"`` works for any lead set. Only the first
    ``max_seconds`` are drawn so a long upload cannot make the server render a huge image.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if image_format not in FORMATS:
        raise ValueError(f"unknown image format {image_format!r}; choose one of {', '.join(FORMATS)}")
    lead_names = list(lead_names)
    signal = _validate(signal, sampling_rate, lead_names)
    signal = signal[:, : max(2, int(round(max_seconds * sampling_rate)))]
    # Remove each lead's median so baseline offsets do not push traces into neighbouring rows.
    signal = signal - np.median(signal, axis=1, keepdims=True)

    if layout == "3x4":
        lead_index = {name: i for i, name in enumerate(lead_names)}
        missing = [lead for lead in STANDARD_LEADS if lead not in lead_index]
        if missing:
            raise ValueError(f"the 3x4 layout needs all 12 standard leads; missing {', '.join(missing)}")
        draw = lambda ax: _layout_3x4(ax, signal, sampling_rate, lead_index, "II")  # noqa: E731
    else:
        draw = lambda ax: _layout_12row(ax, signal, sampling_rate, lead_names)  # noqa: E731

    with _RENDER_LOCK:
        fig = Figure()
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        ax.set_axis_off()
        width_s, y_min, y_max = draw(ax)
        title_mv = 1.0 if title else 0.0
        _size_figure(fig, width_s, y_max - y_min + title_mv, dpi, scale)
        _draw_grid(ax, width_s, y_min, y_max + title_mv)
        if title:
            ax.text(0.05, y_max + title_mv * 0.35, title, fontsize=9)
        ax.set_xlim(0.0, width_s)
        ax.set_ylim(y_min, y_max + title_mv)
        fig.patch.set_facecolor("white")
        buffer = io.BytesIO()
        if image_format == "png":
            FigureCanvasAgg(fig).print_png(buffer)
        else:
            FigureCanvasSVG(fig).print_svg(buffer)
    return buffer.getvalue()
