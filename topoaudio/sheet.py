"""Cortical sheets: where a layer's units sit, in mm (docs/SCIENCE.md section 5).

Two kinds:
- ``channels`` (TopoNets): one unit per output channel on the h x w grid of ``grid_shape``, the same
  grid TopoLoss blurs weights on, so weight smoothness there is map smoothness here.
- ``channel_freq`` (TDANN-like): one unit per (channel, frequency row) of a feature map
  [B, C, F, T]; rows are iso-frequency bands stacked along y, channels scatter inside each band.

Sheet x is the first position column, y the second; both start at 0 mm.

Both kinds put their units on a lattice, recorded as ``lattice_spacing`` (mm): the channel grid
itself for ``channels``, and for ``channel_freq`` positions rounded to multiples of
DEFAULT_LATTICE_MM (each coordinate moves by at most half a step). On a lattice the whole-sheet
spatial loss takes its FFT path (topoaudio.ops.spatial_lattice, docs/SPATIAL_LOSS.md).
"""
from __future__ import annotations

import copy
import math
import numbers

import torch

from topoaudio.ops.spatial_lattice import on_lattice

KINDS = ("channels", "channel_freq")
# One spacing for every layer, so a radius in mm covers the same number of neighbours in every
# layer; 0.25 mm puts a 512-channel layer (16 x 32) on 8 x 4 mm, a few mm like a cortical field.
DEFAULT_CHANNEL_SPACING_MM = 0.25
# About the extent of human primary auditory cortex (~1 cm along Heschl's gyrus).
DEFAULT_CHANNEL_FREQ_SIZE_MM = 10.0
DEFAULT_OVERLAP = 0.5
DEFAULT_JITTER_MM = 0.05
# Lattice step of channel_freq sheets, equal to the default jitter's std so the jitter survives as
# whole steps: a 10 mm sheet is ~210 x 210 sites, an FFT grid of 420 x 420 (docs/SPATIAL_LOSS.md).
DEFAULT_LATTICE_MM = 0.05


def grid_shape(n_channels: int) -> tuple[int, int]:
    """(h, w) with h the largest divisor of n_channels that is <= sqrt(n_channels), w = C // h.

    512 -> (16, 32); 64 -> (8, 8); a prime C -> (1, C).
    """
    n_channels = _check_count("n_channels", n_channels)
    height = math.isqrt(n_channels)
    while n_channels % height:
        height -= 1
    return height, n_channels // height


class CorticalSheet:
    """Positions [N, 2] (float32, mm) of a layer's N units and how activations become responses.

    Attributes: ``layer`` (name), ``kind`` ("channels" or "channel_freq"), ``n_units``,
    ``n_channels``, ``n_freqs`` (None for "channels"), ``positions`` [N, 2], ``params`` (the
    construction parameters, plain Python values) and ``lattice_spacing`` (mm: every position is
    an origin plus whole multiples of it on both axes; None when not on a lattice, as in sheets
    saved before lattices). Build one with ``channels_sheet`` or ``channel_freq_sheet``.
    """

    def __init__(self, layer: str, kind: str, positions: torch.Tensor, n_channels: int,
                 n_freqs: int | None = None, params: dict | None = None,
                 lattice_spacing: float | None = None):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        n_channels = _check_count("n_channels", n_channels)
        if kind == "channel_freq":
            n_freqs = _check_count("n_freqs", n_freqs)
        elif n_freqs is not None:
            raise ValueError(f"a 'channels' sheet has no frequency rows, got n_freqs={n_freqs!r}")
        n_units = n_channels * (n_freqs or 1)
        if not isinstance(positions, torch.Tensor) or tuple(positions.shape) != (n_units, 2):
            got = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions)
            raise ValueError(f"positions must be [{n_units}, 2] for layer {layer!r}, got {got}")
        self.layer = str(layer)
        self.kind = kind
        self.n_channels = n_channels
        self.n_freqs = n_freqs
        self.n_units = n_units
        self.positions = positions.detach().to(torch.float32)
        self.params = copy.deepcopy(dict(params or {}))
        if lattice_spacing is not None:
            _check_positive("lattice_spacing", lattice_spacing)
            if not on_lattice(self.positions, lattice_spacing):
                raise ValueError(f"layer {layer!r}: positions are not on a lattice of spacing "
                                 f"{lattice_spacing} mm")
            lattice_spacing = float(lattice_spacing)
        self.lattice_spacing = lattice_spacing

    def responses(self, activations: torch.Tensor) -> torch.Tensor:
        """Unit responses [B, N] from the layer's activations.

        channels: [B, C, ...] averaged over every trailing dim -> [B, C] (unit = channel).
        channel_freq: [B, C, F, T] averaged over T -> [B, C, F], flattened so unit = f * C + c.
        """
        if not isinstance(activations, torch.Tensor):
            raise ValueError(f"activations must be a torch.Tensor, got {type(activations)}")
        shape = tuple(activations.shape)
        if self.kind == "channels":
            if activations.dim() < 2 or shape[1] != self.n_channels:
                raise ValueError(f"layer {self.layer!r}: expected activations [B, {self.n_channels}, ...], "
                                 f"got shape {shape}")
            if activations.dim() == 2:
                return activations
            return activations.flatten(2).mean(dim=2)
        if activations.dim() != 4 or shape[1:3] != (self.n_channels, self.n_freqs):
            raise ValueError(f"layer {self.layer!r}: expected activations "
                             f"[B, {self.n_channels}, {self.n_freqs}, T], got shape {shape}")
        per_channel_freq = activations.mean(dim=3)
        # Frequency-major order keeps each iso-frequency band contiguous, as in `positions`.
        return per_channel_freq.transpose(1, 2).reshape(shape[0], self.n_units)

    def state_dict(self) -> dict:
        """Plain values and one CPU tensor; ``from_state_dict`` restores the sheet exactly."""
        return {"layer": self.layer, "kind": self.kind, "n_channels": self.n_channels,
                "n_freqs": self.n_freqs, "params": copy.deepcopy(self.params),
                "positions": self.positions.detach().cpu().clone(),
                "lattice_spacing": self.lattice_spacing}

    @classmethod
    def from_state_dict(cls, state: dict) -> CorticalSheet:
        missing = {"layer", "kind", "n_channels", "n_freqs", "params", "positions"} - set(state)
        if missing:
            raise ValueError(f"sheet state is missing {sorted(missing)}")
        # states saved before lattices have no lattice_spacing: their positions load as they were
        return cls(state["layer"], state["kind"], state["positions"].clone(), state["n_channels"],
                   state["n_freqs"], state["params"], state.get("lattice_spacing"))

    def __repr__(self) -> str:
        extent = self.positions.amax(dim=0) - self.positions.amin(dim=0)
        freqs = f", n_freqs={self.n_freqs}" if self.kind == "channel_freq" else ""
        return (f"CorticalSheet(layer={self.layer!r}, kind={self.kind!r}, n_units={self.n_units}, "
                f"n_channels={self.n_channels}{freqs}, span={extent[0]:.2f}x{extent[1]:.2f} mm)")


def build_sheets(tap_shapes: dict, kind: str, *, size_mm: float = DEFAULT_CHANNEL_FREQ_SIZE_MM,
                 seed: int = 0) -> dict:
    """{layer: CorticalSheet} for layers whose activations are [B, C, F, T] with
    ``tap_shapes[layer] = (C, F)`` (``models.tap_shapes`` measures them). Training and evaluation
    both call this, so a model is mapped on the sheet its spatial loss used (or would have used):
    layer i of a channel_freq sheet draws its jitter from seed + i."""
    if kind not in KINDS:
        raise ValueError(f"sheet must be one of {KINDS}, got {kind!r}")
    sheets = {}
    for index, (layer, (channels, freqs)) in enumerate(tap_shapes.items()):
        sheets[layer] = (channel_freq_sheet(layer, channels, freqs, size_mm=size_mm, seed=seed + index)
                         if kind == "channel_freq" else channels_sheet(layer, channels))
    return sheets


def channels_sheet(layer: str, n_channels: int, *, size_mm: float | None = None,
                   spacing_mm: float = DEFAULT_CHANNEL_SPACING_MM) -> CorticalSheet:
    """One unit per channel at the centre of its cell on the grid_shape(C) = h x w grid.

    Channel c sits at row c // w, column c % w: x = (c % w + 0.5) * spacing, y = (c // w + 0.5) *
    spacing, so the sheet covers [0, w * spacing] x [0, h * spacing] mm. ``size_mm``, when given,
    overrides the spacing so the longer side (w) spans size_mm. The grid is the sheet's lattice
    (lattice_spacing = spacing): nothing is moved.
    """
    n_channels = _check_count("n_channels", n_channels)
    height, width = grid_shape(n_channels)
    if size_mm is not None:
        _check_positive("size_mm", size_mm)
        spacing_mm = size_mm / width
    _check_positive("spacing_mm", spacing_mm)
    channel = torch.arange(n_channels, dtype=torch.float64)
    column, row = channel % width, torch.div(channel, width, rounding_mode="floor")
    positions = torch.stack([(column + 0.5) * spacing_mm, (row + 0.5) * spacing_mm], dim=1)
    params = {"spacing_mm": float(spacing_mm), "grid": [height, width]}
    return CorticalSheet(layer, "channels", positions, n_channels, None, params, spacing_mm)


def channel_freq_sheet(layer: str, n_channels: int, n_freqs: int, *,
                       size_mm: float | tuple[float, float] = DEFAULT_CHANNEL_FREQ_SIZE_MM,
                       overlap: float = DEFAULT_OVERLAP, jitter_mm: float = DEFAULT_JITTER_MM,
                       seed: int = 0,
                       lattice_mm: float | None = DEFAULT_LATTICE_MM) -> CorticalSheet:
    """One unit per (channel c, frequency row f), unit index f * C + c; N = C * F.

    The sheet is size_mm (a float for a square, or (x, y)). Frequency row f owns a band (patch)
    spanning the full width and a height chosen so that neighbouring bands overlap by the
    ``overlap`` fraction of that height, with the bands together filling the sheet height; band
    centres rise along y from low (f = 0) to high frequency.

    Inside a band, channel c has a fixed base offset shared by all rows: the centre of its cell on
    the grid_shape(C) grid (the TopoLoss grid) stretched over the band. A channel thus keeps one
    place across rows, so a map smooth on that grid is smooth on the sheet. Each unit then gets
    its own Gaussian jitter (std ``jitter_mm`` per axis) from
    ``torch.Generator().manual_seed(seed)``: same seed, same positions. Jitter may carry a unit a
    few jitter_mm past the sheet's edge.

    Last, each coordinate is rounded to the nearest multiple of ``lattice_mm`` (moving it by at most
    lattice_mm / 2), so the whole-sheet spatial loss runs as an FFT convolution; None keeps the
    positions off any lattice.
    """
    n_channels = _check_count("n_channels", n_channels)
    n_freqs = _check_count("n_freqs", n_freqs)
    size_x, size_y = _sheet_size(size_mm)
    if not (isinstance(overlap, numbers.Real) and 0 <= overlap < 1):
        raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap!r}")
    if not (isinstance(jitter_mm, numbers.Real) and math.isfinite(jitter_mm) and jitter_mm >= 0):
        raise ValueError(f"jitter_mm must be a finite number >= 0, got {jitter_mm!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if lattice_mm is not None:
        _check_positive("lattice_mm", lattice_mm)

    # F bands of height H stepping by H (1 - overlap) fill size_y: H (1 + (F - 1)(1 - overlap)).
    band_height = size_y / (1 + (n_freqs - 1) * (1 - overlap))
    band_step = band_height * (1 - overlap)
    band_centre_y = band_height / 2 + band_step * torch.arange(n_freqs, dtype=torch.float64)

    grid_h, grid_w = grid_shape(n_channels)
    channel = torch.arange(n_channels, dtype=torch.float64)
    grid_column, grid_row = channel % grid_w, torch.div(channel, grid_w, rounding_mode="floor")
    base_x = (grid_column + 0.5) / grid_w * size_x
    base_dy = ((grid_row + 0.5) / grid_h - 0.5) * band_height

    x = base_x.expand(n_freqs, n_channels)
    y = band_centre_y[:, None] + base_dy[None, :]
    positions = torch.stack([x, y], dim=2).reshape(n_freqs * n_channels, 2)
    generator = torch.Generator().manual_seed(seed)
    jitter = torch.randn(positions.shape, generator=generator, dtype=torch.float64)
    positions = positions + jitter * jitter_mm
    if lattice_mm is not None:
        positions = torch.round(positions / lattice_mm) * lattice_mm
    params = {"size_mm": [size_x, size_y], "overlap": float(overlap), "jitter_mm": float(jitter_mm),
              "seed": int(seed), "band_height_mm": band_height, "grid": [grid_h, grid_w],
              "lattice_mm": None if lattice_mm is None else float(lattice_mm)}
    return CorticalSheet(layer, "channel_freq", positions, n_channels, n_freqs, params, lattice_mm)


def _sheet_size(size_mm) -> tuple[float, float]:
    if isinstance(size_mm, numbers.Real):
        size_mm = (size_mm, size_mm)
    if not (isinstance(size_mm, (tuple, list)) and len(size_mm) == 2):
        raise ValueError(f"size_mm must be a number or an (x, y) pair of mm, got {size_mm!r}")
    for side in size_mm:
        _check_positive("size_mm", side)
    return float(size_mm[0]), float(size_mm[1])


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
