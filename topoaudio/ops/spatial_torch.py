"""The spatial loss's tile primitives in chunked PyTorch: the fallback backend on any device, and
the readable statement of what the C++, CUDA and Triton kernels compute. Memory stays at
O(N B + tile rows x N) whatever N is.

Primitives (z [N, B] unit vectors, positions [N, 2], units sorted spatially for the tiled ones):
- weighted_sum(z, positions) -> (W z [N, B], row sums of W [N], row sums of W^2 [N]),
  W_ij = 1 / (1 + d_ij) for i != j, W_ii = 0. The diagonal is left out, not subtracted afterwards:
  a unit's own w_ii = 1 beside off-diagonal weights of 1e-6 (positions in micrometres, or far
  apart) would round those weights out of the float32 sums (issue 23).
- pair_sums(z, positions, radius) -> float64 [6]: count, sum w, w^2, r, r^2, w r and |r - w| over
  the pairs i < j with d_ij <= radius (r_ij = z_i . z_j).
- pair_grad(z, positions, radius, coef) -> dS/dz [N, B] for S = sum over those pairs of
  coef[0] r + coef[1] r^2 + coef[2] w r + coef[3] |r - w|.
"""
from __future__ import annotations

import torch

# Elements of one [rows, N] distance/weight block: bounds the working memory (~64 MB in float32).
BLOCK_ELEMENTS = 1 << 24


def _distances(p_rows: torch.Tensor, p_cols: torch.Tensor) -> torch.Tensor:
    # Direct differences, not the |a|^2 + |b|^2 - 2ab expansion that loses nearby pairs.
    return torch.cdist(p_rows, p_cols, compute_mode="donot_use_mm_for_euclid_dist")


def _row_blocks(n_rows: int, n_cols: int):
    step = max(1, min(n_rows, BLOCK_ELEMENTS // max(n_cols, 1)))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def weighted_sum(z: torch.Tensor, positions: torch.Tensor):
    n_units = z.shape[0]
    p = positions.to(z.dtype)
    wz = torch.empty_like(z)
    w_sum = z.new_empty(n_units)
    w2_sum = z.new_empty(n_units)
    for rows in _row_blocks(n_units, n_units):
        w = 1.0 / (1.0 + _distances(p[rows], p))
        w[torch.arange(w.shape[0], device=w.device), torch.arange(rows.start, rows.stop, device=w.device)] = 0
        wz[rows] = w @ z
        w_sum[rows] = w.sum(dim=1)
        w2_sum[rows] = (w * w).sum(dim=1)
    return wz, w_sum, w2_sum


def _tile_pairs(z, positions, radius, tile):
    """Yield (rows, cols, r, w, mask) for tile pairs that can hold a pair within radius."""
    n_units = z.shape[0]
    p = positions.to(z.dtype)
    starts = range(0, n_units, tile)
    boxes = [(p[s:s + tile].min(dim=0).values, p[s:s + tile].max(dim=0).values) for s in starts]
    for a, row_start in enumerate(starts):
        rows = slice(row_start, min(n_units, row_start + tile))
        for b, col_start in enumerate(starts):
            cols = slice(col_start, min(n_units, col_start + tile))
            gap = (torch.maximum(boxes[a][0] - boxes[b][1], boxes[b][0] - boxes[a][1])).clamp_min(0)
            if float(gap.norm()) > radius:
                continue  # every pair of these two tiles is farther apart than the radius
            d = _distances(p[rows], p[cols])
            mask = d <= radius
            yield rows, cols, z[rows] @ z[cols].t(), 1.0 / (1.0 + d), mask


def _tile_size(n_units: int) -> int:
    return max(1, min(n_units, 1024))


def pair_sums(z: torch.Tensor, positions: torch.Tensor, radius: float) -> torch.Tensor:
    sums = torch.zeros(7, dtype=torch.float64, device=z.device)
    index = torch.arange(z.shape[0], device=z.device)
    for rows, cols, r, w, mask in _tile_pairs(z, positions, radius, _tile_size(z.shape[0])):
        mask = mask & (index[rows, None] < index[None, cols])
        r, w = r.double()[mask], w.double()[mask]
        sums += torch.stack([torch.tensor(float(r.numel()), dtype=torch.float64, device=z.device),
                             w.sum(), (w * w).sum(), r.sum(), (r * r).sum(), (w * r).sum(),
                             (r - w).abs().sum()])
    return sums


def pair_grad(z: torch.Tensor, positions: torch.Tensor, radius: float,
              coef: torch.Tensor) -> torch.Tensor:
    grad = torch.zeros_like(z)
    c_r, c_r2, c_wr, c_abs = (float(c) for c in coef)
    index = torch.arange(z.shape[0], device=z.device)
    for rows, cols, r, w, mask in _tile_pairs(z, positions, radius, _tile_size(z.shape[0])):
        mask = mask & (index[rows, None] != index[None, cols])  # both orders of each pair
        dr = c_r + 2 * c_r2 * r + c_wr * w + c_abs * torch.sign(r - w)
        grad[rows] += torch.where(mask, dr, 0.0) @ z[cols]
    return grad
