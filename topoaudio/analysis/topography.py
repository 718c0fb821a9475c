"""How map-like a per-unit quantity is on the cortical sheet (docs/SCIENCE.md section 6).

values: [N] (e.g. log2 best frequency, Welch t); positions: [N, 2] in mm. Units whose value is
NaN or inf (e.g. dead units from ``best_frequency``) are dropped first. N may be 10^5: nothing here
builds an N x N tensor. Work is done in float64 on the CPU (smoothness, patches) or on the input's
device in row blocks (Moran's I).

Pair sampling in ``smoothness``: below ``n_pairs`` unit pairs every pair is used. Above, half the
budget is uniform random pairs (they cover every distance) and half are near neighbours: a random
unit i and a random unit j from the 3 x 3 block of grid cells (cell side = one distance bin)
around i's cell, so the first bin, which the statistic hinges on, is well populated. Each pair is
weighted by 1 / (n_uniform q_uniform + n_local q_local), its inverse probability under the two
schemes combined (the balance heuristic of multiple importance sampling), so each bin's weighted
mean is a consistent estimate of that bin's all-pairs mean: no region of the sheet counts more for
being sparse. Unweighted near-neighbour pairs would bias the first bins towards sparse regions.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from topoaudio.brain.stats import permutation_p

DEFAULT_N_BINS = 20
DEFAULT_N_PAIRS = 200_000
DEFAULT_N_SHUFFLES = 100
# Permutations are cheap for Moran's I (O(N k) each), and 999 lets a Holm-adjusted family of a
# dozen tests reach p < 0.05 (the smallest permutation p is 1 / (1 + n)).
DEFAULT_N_PERMUTATIONS = 999
# About 32 MB of float64 distances per row block in Moran's I.
MORAN_BLOCK_ELEMENTS = 2 ** 22
# Guard against a grid_mm given in the wrong unit (a 10 mm sheet at 1 um would be 10^8 cells).
MAX_PATCH_GRID_CELLS = 4_000_000
# 3 x 3 block of grid cells around a unit's cell; (0, 0), the unit's own cell, sits at index 4.
_NEIGHBOUR_OFFSETS = torch.tensor([(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)])


def smoothness(values, positions, n_bins: int = DEFAULT_N_BINS, max_distance: float | None = None,
               n_pairs: int = DEFAULT_N_PAIRS, n_shuffles: int = DEFAULT_N_SHUFFLES,
               seed: int = 0) -> dict:
    """TDANN smoothness of a map and its shuffle null.

    Unit pairs are binned by cortical distance d into ``n_bins`` equal bins on [0, max_distance]
    (default: half the diagonal of the units' bounding box; farther pairs are ignored). c(d) is
    the mean |value_i - value_j| per bin and smoothness = (max c - c[0]) / max c: near 1 when
    neighbours are alike, near 0 with no topography. The null recomputes it on the same pairs
    after permuting values across units (equivalent to shuffling positions) ``n_shuffles`` times.
    See the module docstring for how pairs are sampled when N is large; ``seed`` fixes pairs and
    shuffles.

    Returns a dict: "smoothness", "null_mean", "null_interval" (2.5 and 97.5 percentiles),
    "p_value" (one-sided, (1 + #null >= observed) / (1 + n_shuffles)), "null_smoothness"
    [n_shuffles], "bin_centres" [n_bins] mm, "curve" [n_bins], "null_curve_mean" [n_bins],
    "null_curve_interval" [2, n_bins], "pair_counts" [n_bins] (pairs drawn per bin),
    "max_distance", "n_units" (units used), "n_dropped" (units dropped for a NaN / inf value, e.g.
    silent units), "exact" (every pair used). Empty bins have NaN c; a constant map has NaN
    smoothness.

    Smoothness is >= 0 by construction (c[0] below the curve's peak), so it cannot tell "no
    structure" from "neighbours less alike than chance". The signed companion is the nearest bin
    against its own null: "near_z" = (null mean of c[0] - c[0]) / null sd of c[0] (> 0: neighbours
    more alike than chance, < 0: less alike), "near_p" its two-sided permutation p
    (``brain.stats.permutation_p`` on -c[0]), NaN when the first bin is empty.
    """
    n_input = torch.as_tensor(values).numel()
    values, positions = _finite_units(values, positions, device="cpu")
    n_units = values.numel()
    if n_units < 3:
        raise ValueError(f"need at least 3 units with finite values, got {n_units}")
    if n_bins < 2 or n_pairs < 1 or n_shuffles < 1:
        raise ValueError(f"need n_bins >= 2, n_pairs >= 1, n_shuffles >= 1; got {n_bins}, {n_pairs}, "
                         f"{n_shuffles}")
    if max_distance is None:
        span = positions.amax(dim=0) - positions.amin(dim=0)
        max_distance = 0.5 * float(span.norm())
    if not max_distance > 0:
        raise ValueError(f"max_distance must be > 0 mm (are all units at one place?), got {max_distance}")
    bin_width = max_distance / n_bins
    generator = torch.Generator().manual_seed(seed)

    exact = n_units * (n_units - 1) // 2 <= n_pairs
    if exact:
        first, second = torch.triu_indices(n_units, n_units, offset=1)
        pair_weights = torch.ones(first.numel(), dtype=torch.float64)
    else:
        first, second, pair_weights = _sample_pairs(positions, bin_width, n_pairs, generator)
    distances = (positions[first] - positions[second]).norm(dim=1)
    in_range = distances <= max_distance
    first, second, pair_weights = first[in_range], second[in_range], pair_weights[in_range]
    bins = (distances[in_range] / bin_width).floor().long().clamp(max=n_bins - 1)

    weight_sums = torch.bincount(bins, weights=pair_weights, minlength=n_bins)

    def curves_of(mapped: torch.Tensor) -> torch.Tensor:
        """c(d) [S, n_bins] of maps [S, N]; 0 / 0 = NaN marks an empty bin."""
        differences = (mapped[:, first] - mapped[:, second]).abs() * pair_weights
        weighted_sums = torch.zeros(mapped.shape[0], n_bins, dtype=torch.float64)
        return weighted_sums.index_add_(1, bins, differences) / weight_sums

    curve = curves_of(values[None, :])[0]
    # Shuffles in chunks: [chunk, n_pairs] differences stay around 16 MB.
    chunk = max(1, 2_000_000 // max(bins.numel(), 1))
    null_curves = torch.cat([
        curves_of(torch.stack([values[torch.randperm(n_units, generator=generator)]
                               for _ in range(min(chunk, n_shuffles - done))]))
        for done in range(0, n_shuffles, chunk)])
    observed = _smoothness_of(curve)
    null_smoothness = torch.tensor([_smoothness_of(null_curve) for null_curve in null_curves],
                                   dtype=torch.float64)
    quantiles = torch.tensor([0.025, 0.975], dtype=torch.float64)
    null_interval = torch.nanquantile(null_smoothness, quantiles)
    return {
        "smoothness": observed,
        "null_mean": float(null_smoothness.nanmean()),
        "null_interval": (float(null_interval[0]), float(null_interval[1])),
        "p_value": float((1 + (null_smoothness >= observed).sum()) / (1 + n_shuffles)),
        "null_smoothness": null_smoothness,
        "bin_centres": (torch.arange(n_bins, dtype=torch.float64) + 0.5) * bin_width,
        "curve": curve,
        "null_curve_mean": null_curves.nanmean(dim=0),
        "null_curve_interval": torch.nanquantile(null_curves, quantiles, dim=0),
        "pair_counts": torch.bincount(bins, minlength=n_bins),
        "max_distance": float(max_distance),
        "n_units": n_units,
        "n_dropped": n_input - n_units,
        "exact": exact,
        **_near_bin_test(curve, null_curves),
    }


def _near_bin_test(curve: torch.Tensor, null_curves: torch.Tensor) -> dict:
    """The nearest bin's c[0] against its shuffle null: z (signed, > 0 = alike) and two-sided p."""
    observed, null = float(curve[0]), null_curves[:, 0]
    null = null[~null.isnan()]
    if observed != observed or null.numel() < 2:
        return {"near_value": observed, "near_z": float("nan"), "near_p": float("nan")}
    spread = float(null.std())
    # a null without spread (a tiny map) has no z; its p value still says what the data allow
    z = (float(null.mean()) - observed) / spread if spread > 0 else float("nan")
    return {"near_value": observed, "near_z": z, "near_p": permutation_p(-observed, -null)}


def morans_i(values, positions, weights: str = "inverse_distance", k: int = 8,
             max_distance: float | None = None, rows_per_block: int | None = None) -> float:
    """Moran's I = N / sum(w) * sum_ij w_ij (x_i - m)(x_j - m) / sum_i (x_i - m)^2.

    weights: "inverse_distance" (w_ij = 1 / d_ij) or "knn" (w_ij = 1 if j is among the k nearest
    units of i, else 0; not symmetric, which the formula allows). w_ii = 0. With max_distance,
    w_ij = 0 for d_ij > max_distance (both kinds). Coincident units (d_ij = 0, i != j) get
    w_ij = 0 under inverse distance: 1/0 has no finite stand-in, and a floor distance would make
    I depend on an arbitrary constant; under knn they are ordinary nearest neighbours.
    Expected value with no spatial structure: -1 / (N - 1). A constant map or an empty weight
    matrix gives NaN.

    Cost: O(N^2) distance evaluations, computed in row blocks of ``rows_per_block`` rows (default
    about 4M pair elements per block) on the input's device in float64. With max_distance, units
    are sorted spatially and each block only visits units within max_distance of its bounding box.
    """
    if weights not in ("inverse_distance", "knn"):
        raise ValueError(f"weights must be 'inverse_distance' or 'knn', got {weights!r}")
    if weights == "knn" and k < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    if max_distance is not None and not max_distance > 0:
        raise ValueError(f"max_distance must be > 0 mm, got {max_distance!r}")
    values, positions = _finite_units(values, positions)
    n_units = values.numel()
    if max_distance is not None:
        order = _spatial_order(positions, max_distance)
        values, positions = values[order], positions[order]
    centred = values - values.mean()
    sum_of_squares = float((centred * centred).sum())
    if n_units < 2 or sum_of_squares == 0:
        return float("nan")
    if rows_per_block is None:
        rows_per_block = max(1, MORAN_BLOCK_ELEMENTS // n_units)

    cross_product_sum, weight_sum = 0.0, 0.0
    all_units = torch.arange(n_units, device=values.device)
    for start in range(0, n_units, rows_per_block):
        rows = all_units[start:start + rows_per_block]
        columns = all_units if max_distance is None else _units_near(positions, rows, max_distance)
        distances = _pair_distances(positions, rows, columns, max_distance)  # [rows, columns]
        if weights == "inverse_distance":
            # d = 0 (itself or a coincident unit) and d = inf (too far) both give weight 0.
            block_weights = torch.where((distances > 0) & distances.isfinite(), 1 / distances, 0.0)
        else:
            nearest_distances, nearest = _nearest_in_block(distances, rows, columns, k)
            block_weights = torch.zeros_like(distances).scatter_(
                1, nearest, nearest_distances.isfinite().to(distances.dtype))
        cross_product_sum += float((centred[rows] * (block_weights @ centred[columns])).sum())
        weight_sum += float(block_weights.sum())
    if weight_sum == 0:
        return float("nan")
    return n_units / weight_sum * cross_product_sum / sum_of_squares


def morans_i_test(values, positions, k: int = 8, n_permutations: int = DEFAULT_N_PERMUTATIONS,
                  seed: int = 0) -> dict:
    """Moran's I with k-nearest-neighbour weights (as ``morans_i(weights="knn")``) and its
    permutation null: values permuted across units ``n_permutations`` times, weights fixed.

    I is signed: > 0 when neighbours are alike, about -1 / (N - 1) with no structure, < 0 when
    neighbours differ (a checkerboard), so it tells anti-structure from no structure where
    smoothness cannot. Units with a NaN / inf value are dropped first. Each unit's k nearest
    neighbours are found once (row blocks, no N x N tensor), so a permutation costs O(N k).

    Returns a dict: "morans_i", "null_mean", "null_sd", "z" ((I - null_mean) / null_sd), "p"
    (two-sided permutation p, ``brain.stats.permutation_p``), "p_greater" (one-sided, structure),
    "n_permutations", "n_units", "n_dropped". A constant map gives NaN I, z and p.
    """
    if k < 1 or n_permutations < 1:
        raise ValueError(f"need k >= 1 and n_permutations >= 1, got {k!r}, {n_permutations!r}")
    n_input = torch.as_tensor(values).numel()
    values, positions = _finite_units(values, positions, device="cpu")
    n_units = values.numel()
    result = {"n_permutations": int(n_permutations), "n_units": n_units, "n_dropped": n_input - n_units}
    nan = float("nan")
    if n_units < 2 or float((values - values.mean()).square().sum()) == 0:
        return {**result, "morans_i": nan, "null_mean": nan, "null_sd": nan, "z": nan, "p": nan,
                "p_greater": nan}
    neighbours = _nearest_neighbours(positions, min(k, n_units - 1))            # [N, k]
    generator = torch.Generator().manual_seed(seed)

    def moran_of(maps: torch.Tensor) -> torch.Tensor:
        """I of maps [S, N] under the fixed knn weights (every row has k weights of 1)."""
        centred = maps - maps.mean(dim=1, keepdim=True)
        neighbour_sums = centred[:, neighbours].sum(dim=2)                       # [S, N]
        return ((centred * neighbour_sums).sum(dim=1) / neighbours.shape[1]
                / centred.square().sum(dim=1))

    observed = float(moran_of(values[None, :])[0])
    # [chunk, N, k] gathered values stay around 16 MB
    chunk = max(1, 2_000_000 // (n_units * neighbours.shape[1]))
    null = torch.cat([
        moran_of(torch.stack([values[torch.randperm(n_units, generator=generator)]
                              for _ in range(min(chunk, n_permutations - done))]))
        for done in range(0, n_permutations, chunk)])
    null_sd = float(null.std()) if n_permutations > 1 else nan
    return {**result, "morans_i": observed, "null_mean": float(null.mean()), "null_sd": null_sd,
            "z": (observed - float(null.mean())) / null_sd if null_sd > 0 else nan,
            "p": permutation_p(observed, null), "p_greater": permutation_p(observed, null, "greater")}


def within_band(values, bands) -> torch.Tensor:
    """values [N] minus the mean of the finite values of the unit's band (bands [N] int labels).

    On a ``channel_freq`` sheet a layer's frequency rows are stacked along y by construction, so
    any map that varies with the row (best frequency does in every model, trained or not) looks
    smooth. Removing each row's mean leaves what the model arranges within the iso-frequency bands;
    a map that depends on the row alone becomes 0 everywhere. NaN / inf values stay as they are.
    """
    values = torch.as_tensor(values).detach().to(torch.float64)
    bands = torch.as_tensor(bands).detach().to(device=values.device).reshape(-1)
    if values.dim() != 1 or bands.shape != values.shape:
        raise ValueError(f"need values [N] and bands [N], got {tuple(values.shape)} and {tuple(bands.shape)}")
    if bands.is_floating_point() or bands.is_complex():
        raise ValueError(f"bands must be integer labels, got {bands.dtype}")
    band_ids, band_of_unit = torch.unique(bands, return_inverse=True)
    finite = values.isfinite()
    sums = torch.zeros(band_ids.numel(), dtype=torch.float64, device=values.device).index_add_(
        0, band_of_unit[finite], values[finite])
    counts = torch.bincount(band_of_unit[finite], minlength=band_ids.numel()).to(torch.float64)
    return values - (sums / counts.clamp(min=1))[band_of_unit]


def patches(values, positions, threshold: float = 2.0, sigma_mm: float = 0.5,
            grid_mm: float = 0.1) -> dict:
    """Patches where the smoothed map exceeds ``threshold`` (e.g. music-selective t > 2).

    The units' values are rasterised onto a grid of ``grid_mm`` cells over the units' bounding box
    (mean per occupied cell), smoothed with a Gaussian of ``sigma_mm`` by normalised convolution
    (smooth(values) / smooth(occupancy), so empty cells between units neither count as 0 nor
    dilute their neighbours), and cells farther than about 2 sigma from every unit are left out
    (NaN). Cells with smoothed value > threshold are grouped into 4-connected components. For
    patches of the other sign (speech, t < -2) pass -values.

    Returns a dict: "count", "areas_mm2" [count] (patch k + 1 in "labels" has area areas_mm2[k]),
    "centroids_mm" [count, 2] (x, y), "labels" [n_rows, n_cols] int (0 = no patch), "smoothed_map"
    [n_rows, n_cols] (row = y, column = x), "extent_mm" (x0, x1, y0, y1; for imshow with
    origin="lower"), "grid_mm", "sigma_mm", "threshold".
    """
    if not (sigma_mm > 0 and grid_mm > 0):
        raise ValueError(f"sigma_mm and grid_mm must be > 0, got {sigma_mm!r}, {grid_mm!r}")
    values, positions = _finite_units(values, positions, device="cpu")
    if values.numel() == 0:
        raise ValueError("no unit has a finite value")
    values, positions = values.numpy(), positions.numpy()
    origin = positions.min(axis=0)
    cell = np.floor((positions - origin) / grid_mm).astype(np.int64)          # [N, 2] (column, row)
    n_cols, n_rows = (int(cell[:, 0].max()) + 1, int(cell[:, 1].max()) + 1)
    if n_rows * n_cols > MAX_PATCH_GRID_CELLS:
        raise ValueError(f"a {n_rows} x {n_cols} grid is too fine; is grid_mm={grid_mm} in mm?")
    flat_cell = cell[:, 1] * n_cols + cell[:, 0]
    value_sums = np.bincount(flat_cell, weights=values, minlength=n_rows * n_cols)
    unit_counts = np.bincount(flat_cell, minlength=n_rows * n_cols)
    occupied = (unit_counts > 0).reshape(n_rows, n_cols)
    cell_means = np.where(unit_counts > 0, value_sums / np.maximum(unit_counts, 1), 0.0)

    sigma_cells = sigma_mm / grid_mm
    cell_means = cell_means.reshape(n_rows, n_cols)
    smoothed_values = ndimage.gaussian_filter(cell_means, sigma_cells, mode="constant")
    smoothed_occupancy = ndimage.gaussian_filter(occupied.astype(np.float64), sigma_cells, mode="constant")
    # A lone occupied cell's kernel falls to exp(-2) of its peak 2 sigma away.
    covered = smoothed_occupancy >= math.exp(-2) * _gaussian_peak(sigma_cells)
    smoothed_map = np.full((n_rows, n_cols), np.nan)
    smoothed_map[covered] = smoothed_values[covered] / smoothed_occupancy[covered]

    labels, count = ndimage.label(covered & (np.nan_to_num(smoothed_map, nan=-np.inf) > threshold))
    cell_counts = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    rows, cols = np.indices(labels.shape)
    centroid_x = origin[0] + (np.bincount(labels.ravel(), weights=cols.ravel(), minlength=count + 1)[1:]
                              / np.maximum(cell_counts, 1) + 0.5) * grid_mm
    centroid_y = origin[1] + (np.bincount(labels.ravel(), weights=rows.ravel(), minlength=count + 1)[1:]
                              / np.maximum(cell_counts, 1) + 0.5) * grid_mm
    return {
        "count": int(count),
        "areas_mm2": torch.from_numpy(cell_counts * grid_mm ** 2),
        "centroids_mm": torch.from_numpy(np.stack([centroid_x, centroid_y], axis=1)),
        "labels": torch.from_numpy(labels.astype(np.int64)),
        "smoothed_map": torch.from_numpy(smoothed_map),
        "extent_mm": (float(origin[0]), float(origin[0] + n_cols * grid_mm),
                      float(origin[1]), float(origin[1] + n_rows * grid_mm)),
        "grid_mm": float(grid_mm),
        "sigma_mm": float(sigma_mm),
        "threshold": float(threshold),
    }


def _finite_units(values, positions, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """values [N], positions [N, 2] as float64, keeping only units with a finite value."""
    values = torch.as_tensor(values).detach()
    positions = torch.as_tensor(positions).detach()
    if values.dim() != 1 or positions.shape != (values.numel(), 2):
        raise ValueError(f"need values [N] and positions [N, 2], got {tuple(values.shape)} and "
                         f"{tuple(positions.shape)}")
    device = positions.device if device is None else device
    values = values.to(device=device, dtype=torch.float64)
    positions = positions.to(device=device, dtype=torch.float64)
    if not bool(positions.isfinite().all()):
        raise ValueError("positions must be finite")
    finite = values.isfinite()
    return values[finite], positions[finite]


def _smoothness_of(curve: torch.Tensor) -> float:
    peak = float(curve.nan_to_num(nan=-math.inf).max())
    if not peak > 0:            # constant map (or no pairs): no meaningful ratio
        return float("nan")
    return (peak - float(curve[0])) / peak


def _sample_pairs(positions: torch.Tensor, cell_mm: float, n_pairs: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit pairs (first [P], second [P]) and their importance weights [P]; see the module docstring."""
    n_units = positions.shape[0]
    cells = ((positions - positions.amin(dim=0)) / cell_mm).floor().long()      # [N, 2]
    n_cell_rows = int(cells[:, 1].max()) + 1
    cell_ids = cells[:, 0] * n_cell_rows + cells[:, 1]
    order = cell_ids.argsort()
    sorted_ids = cell_ids[order]
    sorted_slot = torch.empty_like(order)
    sorted_slot[order] = torch.arange(n_units)

    neighbour_cells = cells[:, None, :] + _NEIGHBOUR_OFFSETS[None, :, :]          # [N, 9, 2]
    inside = (neighbour_cells >= 0).all(dim=2) & (neighbour_cells[:, :, 1] < n_cell_rows)
    neighbour_ids = neighbour_cells[:, :, 0] * n_cell_rows + neighbour_cells[:, :, 1]
    # A neighbour id off the grid could alias a real cell: count it as empty instead.
    cell_starts = torch.searchsorted(sorted_ids, neighbour_ids)
    cell_counts = (torch.searchsorted(sorted_ids, neighbour_ids, right=True) - cell_starts) * inside
    n_neighbours = cell_counts.sum(dim=1) - 1                                     # excluding itself

    has_neighbours = (n_neighbours > 0).nonzero().squeeze(1)
    n_local = n_pairs // 2 if has_neighbours.numel() else 0
    n_uniform = n_pairs - n_local

    first_uniform = torch.randint(n_units, (n_uniform,), generator=generator)
    offset = torch.randint(1, n_units, (n_uniform,), generator=generator)
    second_uniform = (first_uniform + offset) % n_units

    first_local = has_neighbours[torch.randint(has_neighbours.numel(), (n_local,), generator=generator)]
    counts = cell_counts[first_local]                                             # [n_local, 9]
    # Draw one of i's n_neighbours[i] neighbours; slots index the 9 cells' units laid end to end,
    # skipping i's own slot (in the middle cell, index 4).
    own_slot = counts[:, :4].sum(dim=1) + sorted_slot[first_local] - cell_starts[first_local, 4]
    draw = (torch.rand(n_local, generator=generator, dtype=torch.float64)
            * n_neighbours[first_local]).long()
    draw = torch.minimum(draw, n_neighbours[first_local] - 1)     # guards u * n rounding up to n
    slot = draw + (draw >= own_slot).long()
    cumulative = counts.cumsum(dim=1)
    cell_index = (slot[:, None] >= cumulative).sum(dim=1)
    chosen_cell = cell_index[:, None]
    within_cell = slot - (cumulative.gather(1, chosen_cell) - counts.gather(1, chosen_cell))[:, 0]
    second_local = order[cell_starts[first_local].gather(1, chosen_cell)[:, 0] + within_cell]

    first = torch.cat([first_uniform, first_local])
    second = torch.cat([second_uniform, second_local])
    # Probabilities of the unordered pair {i, j} under each scheme (each sums to 1 over pairs).
    uniform_probability = 2.0 / (n_units * (n_units - 1))
    adjacent = ((cells[first] - cells[second]).abs() <= 1).all(dim=1)
    inverse_neighbours = 1.0 / n_neighbours.clamp(min=1).to(torch.float64)
    local_probability = torch.where(
        adjacent, (inverse_neighbours[first] + inverse_neighbours[second]) / max(has_neighbours.numel(), 1),
        0.0)
    pair_weights = 1.0 / (n_uniform * uniform_probability + n_local * local_probability)
    return first, second, pair_weights


def _nearest_neighbours(positions: torch.Tensor, k: int) -> torch.Tensor:
    """[N, k] indices of each unit's k nearest other units (coincident units included), the search
    ``morans_i``'s knn weights make, in row blocks of about MORAN_BLOCK_ELEMENTS distances."""
    n_units = positions.shape[0]
    rows_per_block = max(1, MORAN_BLOCK_ELEMENTS // n_units)
    all_units = torch.arange(n_units, device=positions.device)
    blocks = []
    for start in range(0, n_units, rows_per_block):
        rows = all_units[start:start + rows_per_block]
        distances = _pair_distances(positions, rows, all_units)
        blocks.append(_nearest_in_block(distances, rows, all_units, k)[1])
    return torch.cat(blocks)


def _pair_distances(positions: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                    max_distance: float | None = None) -> torch.Tensor:
    """[rows, columns] distances between units `rows` and `columns`, inf beyond max_distance.

    hypot of the coordinate differences, not cdist: cdist's matrix-product shortcut rounds
    differently and could reorder near ties among a unit's nearest neighbours."""
    distances = torch.hypot(positions[rows, 0, None] - positions[None, columns, 0],
                            positions[rows, 1, None] - positions[None, columns, 1])
    if max_distance is not None:
        distances = distances.masked_fill(distances > max_distance, math.inf)
    return distances


def _nearest_in_block(distances: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor,
                      k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices into `columns`) [rows, min(k, columns)] of each row unit's nearest other
    units, from its `distances` [rows, columns]; a distance is inf where fewer units are in reach."""
    distances = distances.masked_fill(rows[:, None] == columns[None, :], math.inf)
    return distances.topk(min(k, columns.numel()), dim=1, largest=False)


def _gaussian_peak(sigma_cells: float) -> float:
    """Peak of scipy's (truncated, normalised) Gaussian filter applied to one unit cell."""
    radius = int(4.0 * sigma_cells + 0.5) + 1
    delta = np.zeros((2 * radius + 1, 2 * radius + 1))
    delta[radius, radius] = 1.0
    return float(ndimage.gaussian_filter(delta, sigma_cells, mode="constant")[radius, radius])


def _spatial_order(positions: torch.Tensor, cell_mm: float) -> torch.Tensor:
    """Unit order that walks the sheet cell by cell, up one column of cells and down the next.

    The serpentine keeps consecutive cells adjacent, so a block of consecutive units is compact
    (a plain column-major walk would give the block that wraps a column a full-height bounding box).
    """
    cells = ((positions - positions.amin(dim=0)) / cell_mm).floor().long()
    n_cell_rows = int(cells[:, 1].max()) + 1
    row_in_walk = torch.where(cells[:, 0] % 2 == 0, cells[:, 1], n_cell_rows - 1 - cells[:, 1])
    return (cells[:, 0] * n_cell_rows + row_in_walk).argsort()


def _units_near(positions: torch.Tensor, rows: torch.Tensor, max_distance: float) -> torch.Tensor:
    """Indices of units within max_distance of the bounding box of ``rows`` (a superset of neighbours)."""
    low = positions[rows].amin(dim=0) - max_distance
    high = positions[rows].amax(dim=0) + max_distance
    near = ((positions >= low) & (positions <= high)).all(dim=1)
    return near.nonzero().squeeze(1)
