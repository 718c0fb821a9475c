"""TDANN's neighbourhood sampler, public: which units one step of a sampled spatial loss sees.

TDANN (Margalit et al. 2024; github.com/neuroailab/TDANN, ``precompute_neighborhoods`` +
``collapse_and_trim_neighborhoods``, as its position script calls them) computes the spatial loss
on one window of a sheet per layer and step: a square of ``width_mm`` whose centre is drawn
uniformly from the positions' bounding box shrunk by half a width (so the window stays on the
sheet), thinned at random to a common size: int(5th percentile of window sizes), at least 25 and
at most a limit (TDANN: 500); windows with fewer units are skipped, as TDANN drops them. TDANN draws
20,000 windows once and picks one per step; ``tdann_neighbourhood`` draws a fresh window from the
same distribution each call. ``nearest_neighbourhood``: the k units nearest a random unit.
Checked against TDANN's own code in tests/test_sampling_tdann.py (docs/LOSS_FIDELITY.md).

Use with any positions [N, 2] (mm), e.g. for a layer of a model of your own::

    >>> import torch, topoaudio.ops as ops
    >>> positions, responses = torch.rand(400, 2) * 10, torch.randn(16, 400)
    >>> generator = torch.Generator().manual_seed(0)
    >>> size = ops.tdann_neighbourhood_size(positions, 4.0, 500, generator)
    >>> index = ops.tdann_neighbourhood(positions, 4.0, size, generator)
    >>> loss = ops.spatial_loss(responses[:, index], positions[index], lattice=False)
"""
from __future__ import annotations

import torch

from .spatial_common import SHEET_CACHE

TDANN_MIN_UNITS = 25  # collapse_and_trim_neighborhoods' min_nb_size
TDANN_SIZE_PERCENTILE = 5.0  # its keep_fraction 0.95
TDANN_SIZE_WINDOWS = 20_000  # how many windows its position script draws
MAX_REDRAWS = 10_000


def _window_bounds(points: torch.Tensor, width_mm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) [2] of the window centres: the bounding box shrunk by half a width per side."""
    low = points.min(dim=0).values + width_mm / 2
    high = points.max(dim=0).values - width_mm / 2
    if bool((high < low).any()):
        extent = (high - low + width_mm).tolist()
        raise ValueError(f"neighbourhood_width_mm={width_mm} is wider than the sheet "
                         f"({extent[0]:.3g} x {extent[1]:.3g} mm): no window fits on it")
    return low, high


def _sheet_windows(positions: torch.Tensor, width_mm: float):
    """(points, low, high): the positions in float64 on the CPU (draws come from a CPU generator
    on any device) and the window centres' bounds. Once per positions tensor, width and in-place
    version (SHEET_CACHE): a training step draws several windows from the same sheet, every step."""
    if not isinstance(positions, torch.Tensor) or positions.dim() != 2 or positions.shape[1] != 2:
        got = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
        raise ValueError(f"positions must be a tensor [N, 2] (mm), got {got}")

    def compute():
        points = positions.detach().cpu().double()
        return (points, *_window_bounds(points, width_mm))
    return SHEET_CACHE.get(positions, ("tdann windows", float(width_mm)), compute)


def _window_centres(low, high, count: int, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, 2, generator=generator, dtype=torch.float64)


def _in_windows(points: torch.Tensor, centres: torch.Tensor, width_mm: float) -> torch.Tensor:
    """[W, N] bool: unit n (points [N, 2] float64) inside the closed square of side width_mm
    around centre w."""
    # one axis at a time: two [W, N] passes instead of a [W, N, 2] offset tensor
    inside = (points[:, 0][None] - centres[:, :1]).abs_() <= width_mm / 2
    return inside.logical_and_((points[:, 1][None] - centres[:, 1:]).abs_() <= width_mm / 2)


def tdann_neighbourhood_size(positions: torch.Tensor, width_mm: float, limit: int,
                             generator: torch.Generator, windows: int = TDANN_SIZE_WINDOWS) -> int:
    """TDANN's common neighbourhood size for a sheet: min(limit, max(25, int(5th percentile of the
    unit counts of `windows` random windows))). positions [N, 2] in mm, on any device.
    ValueError when no window fits on the sheet or none holds that many units."""
    points, low, high = _sheet_windows(positions, width_mm)
    counts = []
    # chunks keep the [windows, N] mask small on large sheets
    chunk = max(1, 2 ** 22 // max(1, len(points)))
    for start in range(0, windows, chunk):
        centres = _window_centres(low, high, min(chunk, windows - start), generator)
        counts.append(_in_windows(points, centres, width_mm).sum(dim=1))
    counts = torch.cat(counts).double()
    # numpy's / scipy's default percentile: linear between order statistics
    size = min(limit, max(TDANN_MIN_UNITS, int(torch.quantile(counts, TDANN_SIZE_PERCENTILE / 100))))
    if size > len(points) or size > int(counts.max()):
        raise ValueError(f"no {width_mm} mm window holds {size} units (largest: {int(counts.max())}); "
                         "widen neighbourhood_width_mm")
    return size


def tdann_neighbourhood(positions: torch.Tensor, width_mm: float, size: int,
                        generator: torch.Generator) -> torch.Tensor:
    """Indices [size] (int64, CPU) of one TDANN neighbourhood: a random window (centre off the
    edges) holding at least `size` units, thinned to `size` of them at random without replacement.
    The draws depend only on the positions and the generator's state."""
    points, low, high = _sheet_windows(positions, width_mm)
    for _ in range(MAX_REDRAWS):
        inside = _in_windows(points, _window_centres(low, high, 1, generator), width_mm)[0]
        members = inside.nonzero().flatten()
        if len(members) >= size:
            return members[torch.randperm(len(members), generator=generator)[:size]]
    raise ValueError(f"{MAX_REDRAWS} random {width_mm} mm windows all held fewer than {size} units")


def nearest_neighbourhood(positions: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of the k units nearest a unit drawn at random (all units when there are fewer).
    positions [N, 2] on the CPU (the generator's device)."""
    centre = positions[int(torch.randint(len(positions), (1,), generator=generator))]
    k = min(k, len(positions))
    return torch.topk((positions - centre).norm(dim=1), k, largest=False).indices
