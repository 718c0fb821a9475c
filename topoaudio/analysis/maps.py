"""Figures of maps on the cortical sheet, written as PNG files without a display (Agg).

Figures are built on ``matplotlib.figure.Figure`` directly, not pyplot: no global figure state, no
GUI back end, safe in tests and worker processes.
"""
from __future__ import annotations

import math
import pathlib

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

NO_VALUE_COLOUR = "0.7"


def plot_sheet_map(values, positions, path, title: str, cmap: str = "viridis", label: str = "",
                   vmin: float | None = None, vmax: float | None = None) -> pathlib.Path:
    """Units as dots coloured by value [N] at positions [N, 2] (mm), equal aspect, colour bar.

    ``label`` names the colour bar and should carry units (e.g. "best frequency (log2 Hz)"). Pass
    the same vmin / vmax to compare maps on one colour scale; by default the scale spans the
    finite values. Units without a finite value (dead units) are drawn light grey. Returns path.
    """
    values = torch.as_tensor(values).detach().to("cpu", torch.float64).reshape(-1)
    positions = torch.as_tensor(positions).detach().to("cpu", torch.float64)
    if positions.shape != (values.numel(), 2):
        raise ValueError(f"need values [N] and positions [N, 2], got {tuple(values.shape)} and "
                         f"{tuple(positions.shape)}")
    finite = values.isfinite()
    # Dots shrink as units crowd, so a dense sheet reads as a surface, a sparse one as points.
    dot_area = min(40.0, max(0.5, 2e4 / max(values.numel(), 1)))

    figure = Figure(figsize=(6.0, 5.0), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if not bool(finite.all()):
        missing = positions[~finite]
        axes.scatter(missing[:, 0], missing[:, 1], s=dot_area, c=NO_VALUE_COLOUR, linewidths=0,
                     rasterized=True, label="no value")
        axes.legend(loc="upper right", fontsize="small")
    shown = positions[finite]
    dots = axes.scatter(shown[:, 0], shown[:, 1], c=values[finite], s=dot_area, cmap=cmap, vmin=vmin,
                        vmax=vmax, linewidths=0, rasterized=True)
    figure.colorbar(dots, ax=axes, label=label)
    axes.set_aspect("equal")
    axes.set_xlabel("sheet x (mm)")
    axes.set_ylabel("sheet y (mm)")
    axes.set_title(title)
    return _save(figure, path)


def plot_smoothness_curve(result: dict, path, title: str, value_label: str = "mapped value"
                          ) -> pathlib.Path:
    """c(d) of a ``smoothness`` result with the shuffle null (mean and 95 % band). Returns path."""
    centres = result["bin_centres"].numpy()
    null_low, null_high = result["null_curve_interval"].numpy()
    low, high = result["null_interval"]

    figure = Figure(figsize=(6.0, 4.0), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.fill_between(centres, null_low, null_high, color="0.8", label="shuffled positions, 95 %")
    axes.plot(centres, result["null_curve_mean"].numpy(), color="0.4", linestyle="--",
              label="shuffled positions, mean")
    smoothness_text = "nan" if math.isnan(result["smoothness"]) else f"{result['smoothness']:.2f}"
    axes.plot(centres, result["curve"].numpy(), color="C0", marker="o", markersize=3,
              label=f"map: smoothness {smoothness_text} (null {low:.2f} to {high:.2f})")
    axes.set_xlabel("cortical distance (mm)")
    axes.set_ylabel(f"mean |difference| of {value_label}")
    axes.set_xlim(0, result["max_distance"])
    axes.set_ylim(bottom=0)
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def _save(figure: Figure, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path
