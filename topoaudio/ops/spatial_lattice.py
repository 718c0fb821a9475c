"""W z for units on a lattice, by FFT convolution: the one position-dependent product of the
all-pairs relative spatial loss (docs/SPATIAL_LOSS.md, "Lattice sheets").

When every unit sits on a lattice, position = origin + (a h0, b h1) with integers a, b (several
units may share a site), w_ij = 1 / (1 + d_ij) depends only on the integer offset between the two
sites, so W z is a 2D convolution: scatter z onto the (G0, G1) grid of sites (summing units that
share one), convolve with k(a, b) = 1 / (1 + sqrt((a h0)^2 + (b h1)^2)) over offsets |a| < G0,
|b| < G1, gather back. Zero padding to L >= 2G - 1 per axis makes the circular FFT convolution the
linear one exactly, so the cost is O(B L0 L1 log(L0 L1)) whatever N is, instead of N^2 B.

The primitive has the tile primitives' contract (spatial_torch.weighted_sum): W z [N, B], row sums
of W and of W^2 [N], with a zero diagonal w_ii = 0. The convolution's kernel has k(0, 0) = 0, so it
leaves out every unit on the same site; units sharing a site with another (at distance 0, w = 1)
get those partners back from the scattered site sums, minus their own term.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from .spatial_common import SHEET_CACHE

# The padded FFT grid L0 x L1 may hold at most this many sites (a 4096 x 4096 grid): its kernel
# spectrum is cached per sheet (64 MB in float32) and each batch column's spectra are as large.
# Beyond it the tiles run (their memory does not grow with the sheet's extent).
MAX_PADDED_SITES = 1 << 24
# Batch columns are transformed in chunks whose complex spectra stay under this many bytes.
CHUNK_BYTES = 1 << 28
# On the CPU, chunks of a few columns, spread over threads: a chunk's spectra (1.3 MB per column on
# a 10 mm sheet at 0.05 mm) then stay in cache, where a whole batch's (80 MB at B = 64) did not, and
# torch's CPU FFT used about one core whatever its intra-op threads. Measured at G = 195 x 203,
# B = 64 (loaded 2-core machine, median of 9): all 64 columns at once 108 ms (2 threads) and 144 ms
# (1); chunks of 8 one after another 51 ms at either; chunks of 8 on two Python threads 37 ms.
CPU_CHUNK_BYTES = 1 << 23
# A coordinate is on the lattice when it is within this many units of its dtype's epsilon (relative
# to the largest |coordinate|) of a site: float32 positions computed as h * k carry half an ulp of
# rounding each, and the origin and fitted spacing as much again.
TOLERANCE_EPS = 8
# A lattice's spacing must exceed the rounding it tolerates this many times over: float32 positions
# near 1e6 mm are all multiples of 0.0625 mm, a grid that says nothing of where the units were put;
# a lattice found at a spacing of a few tolerances is that rounding, not a layout (issue 23). Real
# sheets are far above it (10 mm at 0.05 mm in float32: 5,000 tolerances).
MIN_SPACING_IN_TOLERANCES = 64
# The smallest gap between distinct coordinates is a multiple m of the lattice spacing; m up to this
# is searched (a sparse sample of a lattice may miss every neighbouring pair).
MAX_GAP_MULTIPLE = 12
# Cost model for `auto`: one padded site of one batch column, times log2 of the padded grid, costs
# about as much as this many (i, j) pairs of one column in the cpp tiles. From whole
# forward+backward steps (bench/test_spatial_lattice.py, 2 threads, idle machine, B = 64, 10 mm
# sheets at 0.05 mm): at N = 16,384 (FFT grid 392 x 405) tiles 250 ms, lattice 40 ms, so the
# lattice costs what the tiles cost at N ~ 6,550: 15.6 pairs per site and log2; at N = 4,096
# (375 x 405) tiles 17.7 ms, lattice 38 ms, break-even N ~ 6,000: 14.2. Break-even on 10 mm
# sheets is N ~ 6,300.
FFT_COST_IN_PAIRS = 15


class NotOnLattice(ValueError):
    """The positions are on no lattice the FFT path can use; the message says why."""


def _fast_size(minimum: int) -> int:
    """Smallest n >= minimum whose prime factors are 2, 3, 5 and 7 (fast in MKL, pocketfft, cuFFT)."""
    n = max(1, minimum)
    while True:
        m = n
        for prime in (2, 3, 5, 7):
            while m % prime == 0:
                m //= prime
        if m == 1:
            return n
        n += 1


class Lattice:
    """Sites of a positions tensor on a lattice, and what the FFT convolution needs, made once per
    positions tensor (``lattice_of``): site index per unit [N] (on the positions' device), spacing
    (h0, h1) in mm, origin, grid (G0, G1) and padded FFT sizes (L0, L1); kernel spectra and the W
    row sums per dtype, computed on first use."""

    def __init__(self, indices: torch.Tensor, spacing: tuple[float, float],
                 origin: tuple[float, float], device: torch.device):
        self.spacing, self.origin = spacing, origin
        self.shape = tuple(int(indices[:, axis].max()) + 1 for axis in (0, 1))
        self.padded = tuple(_fast_size(2 * g - 1) for g in self.shape)
        # each unit's site in the rows padded for the last axis's transform, [G0, L1]: the scatter
        # writes there and the gather reads the inverse transform there, with no padding copy
        # and no copy of the [G0, G1] corner
        self.padded_site = (indices[:, 0] * self.padded[1] + indices[:, 1]).to(device)
        self.n_units = indices.shape[0]
        # whether some site holds several units (each then has partners at distance 0, w = 1)
        self.shares_sites = bool(torch.unique(self.padded_site).numel() < self.n_units)
        self._spectra: dict = {}
        self._row_sums: dict = {}

    @property
    def site(self) -> torch.Tensor:
        """Each unit's site a G1 + b on the unpadded (G0, G1) grid [N] (derived from padded_site,
        which the transforms use)."""
        row = self.padded_site.div(self.padded[1], rounding_mode="floor")
        return row * self.shape[1] + self.padded_site % self.padded[1]

    @property
    def padded_sites(self) -> int:
        return self.padded[0] * self.padded[1]

    def cheaper_than_tiles(self) -> bool:
        """Whether the FFT path should beat the N x N tiles (FFT_COST_IN_PAIRS)."""
        fft = FFT_COST_IN_PAIRS * self.padded_sites * math.log2(max(self.padded_sites, 2))
        return fft < self.n_units ** 2

    def _kernel(self, power: int = 1) -> torch.Tensor:
        """k(a, b)^power at every padded offset, float64 on the CPU; offsets a in (-G0, G0) sit at
        a mod L0 and the unused middle is 0 (no needed output reads it). k(0, 0) = 0: a site's own
        units are added separately (weighted_sum_by_column, row_sums), so that no unit's own
        w_ii = 1 enters the float sums beside its small off-diagonal weights."""
        axes = []
        for size, padded, h in zip(self.shape, self.padded, self.spacing, strict=True):
            a = torch.arange(padded, dtype=torch.float64)
            offset = torch.where(a < size, a, a - padded)
            used = offset.abs() < size
            axes.append((offset * h, used))
        (d0, used0), (d1, used1) = axes
        distance = torch.sqrt(d0[:, None] ** 2 + d1[None, :] ** 2)
        kernel = (1.0 / (1.0 + distance)) ** power
        kernel[0, 0] = 0.0
        return torch.where(used0[:, None] & used1[None, :], kernel, 0.0)

    def spectrum(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The kernel's spectrum as _convolve takes it, computed in float64, stored in dtype."""
        key = (dtype, device)
        if key not in self._spectra:
            self._spectra[key] = _real_spectrum(self._kernel()).to(dtype=dtype, device=device)
        return self._spectra[key]

    def row_sums(self, dtype: torch.dtype, device: torch.device):
        """(sum_{j != i} w_ij, sum_{j != i} w_ij^2) per unit [N]: the kernel and its square
        convolved with the units' counts per site, plus the other units on the unit's own site
        (w = 1), once per sheet in float64."""
        key = (dtype, device)
        if key not in self._row_sums:
            site = self.padded_site.cpu()
            counts = torch.zeros(self.shape[0] * self.padded[1], dtype=torch.float64)
            counts.index_add_(0, site, torch.ones(self.n_units, dtype=torch.float64))
            sums = []
            for power in (1, 2):
                spectrum = _real_spectrum(self._kernel(power))
                per_site = _convolve(counts.view(1, self.shape[0], -1), spectrum, self.padded[0])
                per_unit = per_site.reshape(-1)[site] + (counts[site] - 1)
                sums.append(per_unit.to(dtype=dtype, device=device))
            self._row_sums[key] = tuple(sums)
        return self._row_sums[key]

    def weighted_sum(self, z: torch.Tensor, positions: torch.Tensor | None = None):
        """(W z [N, B], row sums of W [N], row sums of W^2 [N]) as spatial_torch.weighted_sum;
        positions are not read (the lattice holds them)."""
        wz_by_column, w_rows, w2_rows = self.weighted_sum_by_column(z.t())
        return wz_by_column.t().contiguous(), w_rows, w2_rows

    def weighted_sum_by_column(self, zt: torch.Tensor):
        """weighted_sum for z laid out by batch column, zt [B, N]: (W z)^T [B, N] contiguous and
        the row sums. The CPU loss keeps its unit vectors in this layout (the features' own), so
        that neither the scatter, the FFT's input and output nor the gather need a transpose."""
        batch, n_units = zt.shape
        if n_units != self.n_units:
            raise ValueError(f"z has {n_units} units but the lattice {self.n_units}")
        g0, l1 = self.shape[0], self.padded[1]
        spectrum = self.spectrum(zt.dtype, zt.device)
        rows = _scatter_sum(zt, self.padded_site, g0 * l1)  # [B, G0 L1]
        on_cpu = zt.device.type == "cpu"
        column_bytes = self.padded_sites * 2 * zt.element_size()
        chunk = max(1, (CPU_CHUNK_BYTES if on_cpu else CHUNK_BYTES) // column_bytes)
        if chunk >= batch:  # one transform of every column, no buffer
            out = _convolve(rows.view(batch, g0, l1), spectrum, self.padded[0]).view(batch, -1)
        else:
            out = torch.empty_like(rows)

            def transform(columns: slice):
                block = rows[columns].view(-1, g0, l1)
                out[columns] = _convolve(block, spectrum, self.padded[0]).view(-1, g0 * l1)

            chunks = [slice(start, min(batch, start + chunk)) for start in range(0, batch, chunk)]
            if on_cpu:
                _run_in_parallel(transform, chunks)
            else:  # one stream: the GPU runs each transform in parallel itself
                for columns in chunks:
                    transform(columns)
        w_rows, w2_rows = self.row_sums(zt.dtype, zt.device)
        wzt = out.index_select(1, self.padded_site)
        if self.shares_sites:  # the other units on each unit's own site, at w = 1
            wzt += rows.index_select(1, self.padded_site) - zt
        return wzt, w_rows, w2_rows


_POOL: tuple[int, int, ThreadPoolExecutor] | None = None  # (process id, workers, pool)


def _run_in_parallel(job, items) -> None:
    """job(item) for every item on torch.get_num_threads() Python threads (torch ops release the
    GIL), each thread taking every k-th item; exceptions are raised here. The pool is made once
    per process and thread count (a forked child, e.g. a DataLoader worker, makes its own: the
    parent's threads do not exist there)."""
    global _POOL
    workers = max(1, min(torch.get_num_threads(), len(items)))
    if workers == 1:
        for item in items:
            job(item)
        return
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < workers:
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[2].shutdown(wait=False)
        _POOL = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="topoaudio-fft"))

    def share(first: int):
        for item in items[first::workers]:
            job(item)

    for future in [_POOL[2].submit(share, first) for first in range(workers)]:
        future.result()


def _scatter_sum(zt: torch.Tensor, site: torch.Tensor, n_sites: int) -> torch.Tensor:
    """[B, n_sites]: the columns of zt [B, N] summed per site, in a fixed order on every device,
    so results repeat bitwise. On the CPU index_add_ adds the units serially in unit order; on a
    GPU it would use atomics, and index_put_ with accumulate sorts the indices first."""
    grid = zt.new_zeros(zt.shape[0], n_sites)
    if zt.device.type == "cpu":
        return grid.index_add_(1, site, zt)
    grid.t().index_put_((site,), zt.t(), accumulate=True)
    return grid


def _real_spectrum(kernel: torch.Tensor) -> torch.Tensor:
    """rfft2 of a padded kernel [L0, L1] as _convolve multiplies it: [L1 // 2 + 1, L0, 2]. The
    kernel is even in both offsets, so its spectrum is real; that real part is repeated for the
    real and imaginary parts of the data, so the product is one contiguous elementwise multiply
    (broadcasting over a last axis of 2 costs several times more)."""
    return torch.fft.rfft2(kernel).real.t().unsqueeze(-1).expand(-1, -1, 2).contiguous()


def _convolve(rows: torch.Tensor, spectrum: torch.Tensor, padded_rows: int) -> torch.Tensor:
    """Linear convolution of a grid [C, G0, G1] with the kernel whose real spectrum
    [L1 // 2 + 1, L0] (_real_spectrum) is given, the grid handed over with its rows already
    zero-padded to L1 (rows [C, G0, L1]); returns [C, G0, L1], the convolution at the grid's sites
    in [..., :G1]. Pruned: the last axis is transformed on the G0 occupied rows only, forward and
    back (the zero rows need no transform, only G0 output rows are read). The first axis is
    transformed after a transpose that makes it contiguous: cheaper than the strided transform
    (CPU time at G = 195 x 203, B = 64: 77 ms against 102 ms)."""
    g0 = rows.shape[-2]
    spectra_of_rows = torch.fft.rfft(rows, dim=-1)  # [C, G0, L1 // 2 + 1]
    # transposed straight into the zero-padded buffer of the first axis's transform: one copy, and
    # only the padding is zeroed
    spectra = spectra_of_rows.new_empty(rows.shape[0], spectra_of_rows.shape[2], padded_rows)
    spectra[..., :g0] = spectra_of_rows.transpose(-1, -2)
    spectra[..., g0:] = 0
    spectra = torch.fft.fft(spectra, dim=-1)  # [C, L1 // 2 + 1, L0]
    torch.view_as_real(spectra).mul_(spectrum)
    spectra = torch.fft.ifft(spectra, dim=-1)[..., :g0].transpose(-1, -2)
    return torch.fft.irfft(spectra, n=rows.shape[-1], dim=-1)


def _axis_spacing(values: torch.Tensor, tolerance: float) -> float | None:
    """The smallest gap between distinct values (float64, >= 0) beyond the tolerance; None when all
    are equal within it."""
    gaps = values.sort().values.diff()
    gaps = gaps[gaps > tolerance]
    return None if gaps.numel() == 0 else float(gaps.min())


def _fit_axis(values: torch.Tensor, gap: float | None, tolerance: float, padded_budget: int):
    """(integer indices, spacing) with values ~ spacing * index within tolerance, for the coarsest
    spacing gap / m (m <= MAX_GAP_MULTIPLE) whose padded axis (2 G - 1 sites) fits padded_budget,
    or raise NotOnLattice. values are >= 0 (origin removed), float64."""
    if gap is None:  # one coordinate for every unit: a single row of sites, any spacing
        return torch.zeros(values.shape, dtype=torch.int64), 1.0
    largest_miss = math.inf
    for multiple in range(1, MAX_GAP_MULTIPLE + 1):
        guess = gap / multiple
        count = float(values.max()) / guess + 1
        if 2 * count - 1 > padded_budget:
            break
        index = torch.round(values / guess)
        # least squares through the origin: the spacing from all coordinates, not from one gap
        spacing = float((index * values).sum() / (index * index).sum())
        miss = float((values - index * spacing).abs().max())
        if miss <= tolerance:
            return index.to(torch.int64), spacing
        largest_miss = min(largest_miss, miss)
    fit = "" if largest_miss == math.inf else f"; best fit misses by {largest_miss:.3g} mm"
    raise NotOnLattice(f"positions are on no lattice whose padded FFT grid fits {MAX_PADDED_SITES} "
                       f"sites (smallest gap {gap:.3g} mm{fit}; tolerance {tolerance:.3g} mm)")


def _relative_and_tolerance(positions: torch.Tensor):
    """(origin [2], positions - origin [N, 2] in float64 on the host, the rounding allowed:
    TOLERANCE_EPS x eps(positions.dtype) x the largest |coordinate|), for detect and on_lattice."""
    p = positions.detach().to(device="cpu", dtype=torch.float64)
    origin = p.min(dim=0).values
    largest = float(p.abs().max())
    return origin, p - origin, TOLERANCE_EPS * torch.finfo(positions.dtype).eps * max(largest, 1e-30)


def detect(positions: torch.Tensor) -> Lattice:
    """The coarsest lattice (per-axis spacing, origin at the smallest coordinates) holding every
    position up to TOLERANCE_EPS x eps(positions.dtype) x the largest |coordinate|; NotOnLattice
    (with the reason) when there is none or its padded grid exceeds MAX_PADDED_SITES."""
    origin, relative, tolerance = _relative_and_tolerance(positions)
    columns, spacing = [], []
    budget = MAX_PADDED_SITES
    for axis in (0, 1):
        values = relative[:, axis]
        gap = _axis_spacing(values, tolerance)
        # coordinates that differ by more than the tolerance but all in smaller steps (gap None),
        # or in steps of a few tolerances: rounding or jitter, not a layout
        if float(values.max()) > tolerance and (
                gap is None or gap < MIN_SPACING_IN_TOLERANCES * tolerance):
            step = "below the tolerance" if gap is None else f"{gap:.3g} mm"
            raise NotOnLattice(
                f"positions are on no lattice: their smallest step ({step}) is within "
                f"{MIN_SPACING_IN_TOLERANCES} x the {tolerance:.3g} mm that {positions.dtype} "
                f"resolves at their coordinates, so a lattice there would be rounding or jitter")
        index, h = _fit_axis(values, gap, tolerance, budget)
        columns.append(index)
        spacing.append(h)
        budget //= _fast_size(2 * int(index.max()) + 1)  # what the other axis may still use
    lattice = Lattice(torch.stack(columns, dim=1), tuple(spacing), tuple(origin.tolist()),
                      positions.device)
    if lattice.padded_sites > MAX_PADDED_SITES:
        raise NotOnLattice(f"positions are on no lattice within budget: the padded FFT grid "
                           f"{lattice.padded[0]} x {lattice.padded[1]} exceeds {MAX_PADDED_SITES} sites")
    return lattice


def _detect_or_reason(positions: torch.Tensor):
    try:
        return detect(positions)
    except NotOnLattice as reason:
        return reason


def lattice_of(positions: torch.Tensor) -> Lattice | NotOnLattice:
    """detect(positions), once per tensor and in-place version (SHEET_CACHE); the NotOnLattice
    reason is returned, not raised, so that `auto` can fall back to tiles."""
    return SHEET_CACHE.get(positions, ("lattice",), lambda: _detect_or_reason(positions))


def on_lattice(positions: torch.Tensor, spacing: float) -> bool:
    """Whether every position is origin + integer multiples of `spacing` on both axes (up to the
    rounding detect allows): for sheets checking the lattice they record."""
    _, relative, tolerance = _relative_and_tolerance(positions)
    steps = relative / spacing
    return bool(((steps - torch.round(steps)).abs() * spacing <= tolerance).all())
