"""Triton tile kernels of the spatial-correlation loss (contract: topoaudio/ops/spatial_torch.py
and csrc/spatial_loss.h). z [N, B] unit vectors, positions [N, 2] in mm, same dtype.

Products run on tensor cores through tl.dot; float32 uses 3xTF32 ("tf32x3"), which keeps float32
accuracy (plain TF32 would cost ~1e-3 relative error). Pair sums are reduced per row tile into a
float64 buffer and summed in a fixed order, so results do not depend on scheduling.
"""
import math

import torch
import triton
import triton.language as tl


@triton.jit
def _weighted_sum_kernel(z_ptr, p_ptr, wz_ptr, wsum_ptr, w2sum_ptr, n_units, batch, j_per_split,
                         PRECISION: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
                         BLOCK_B: tl.constexpr):
    """Partial sums over the columns [split * j_per_split, (split + 1) * j_per_split) of W: one
    slice of wz / wsum / w2sum per split, added up afterwards (splitting the column loop gives
    a small sheet enough programs to fill the GPU)."""
    i_block, b_block, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_i = i_block * BLOCK_I + tl.arange(0, BLOCK_I)
    o_b = b_block * BLOCK_B + tl.arange(0, BLOCK_B)
    m_i, m_b = o_i < n_units, o_b < batch
    b_xi = tl.load(p_ptr + 2 * o_i, mask=m_i, other=0.0)
    b_yi = tl.load(p_ptr + 2 * o_i + 1, mask=m_i, other=0.0)
    b_acc = tl.zeros([BLOCK_I, BLOCK_B], dtype=tl.float32 if PRECISION != "ieee64" else tl.float64)
    b_wsum = tl.zeros([BLOCK_I], dtype=b_acc.dtype)
    b_w2sum = tl.zeros([BLOCK_I], dtype=b_acc.dtype)
    j_start = split * j_per_split
    j_end = tl.minimum(j_start + j_per_split, n_units)
    for j0 in range(j_start, j_end, BLOCK_J):
        o_j = j0 + tl.arange(0, BLOCK_J)
        m_j = o_j < j_end
        b_xj = tl.load(p_ptr + 2 * o_j, mask=m_j, other=0.0)
        b_yj = tl.load(p_ptr + 2 * o_j + 1, mask=m_j, other=0.0)
        b_dx = b_xi[:, None] - b_xj[None, :]
        b_dy = b_yi[:, None] - b_yj[None, :]
        b_w = 1.0 / (1.0 + tl.sqrt(b_dx * b_dx + b_dy * b_dy))
        # zero diagonal: w_ii = 1 would round small off-diagonal sums away (far-apart units)
        b_w = tl.where(m_i[:, None] & m_j[None, :] & (o_i[:, None] != o_j[None, :]), b_w, 0.0)
        b_wsum += tl.sum(b_w, axis=1)
        b_w2sum += tl.sum(b_w * b_w, axis=1)
        b_z = tl.load(z_ptr + o_j[:, None] * batch + o_b[None, :], mask=m_j[:, None] & m_b[None, :],
                      other=0.0)
        if PRECISION == "ieee64":
            b_acc += tl.dot(b_w.to(tl.float64), b_z)
        else:
            b_acc += tl.dot(b_w.to(tl.float32), b_z.to(tl.float32), input_precision=PRECISION)
    p_wz = wz_ptr + split.to(tl.int64) * n_units * batch
    tl.store(p_wz + o_i[:, None] * batch + o_b[None, :], b_acc, mask=m_i[:, None] & m_b[None, :])
    if b_block == 0:  # the weight sums depend on positions only: one batch block writes them
        tl.store(wsum_ptr + split * n_units + o_i, b_wsum.to(tl.float64), mask=m_i)
        tl.store(w2sum_ptr + split * n_units + o_i, b_w2sum.to(tl.float64), mask=m_i)


@triton.jit
def _pair_tile(z_ptr, p_ptr, a, b, n_units, batch, PRECISION: tl.constexpr, TILE: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """r, w, d and validity of the tile (row tile a, column tile b); r sums the whole batch in
    chunks of BLOCK_K, so any batch size fits in registers."""
    o_i = a * TILE + tl.arange(0, TILE)
    o_j = b * TILE + tl.arange(0, TILE)
    m_i, m_j = o_i < n_units, o_j < n_units
    b_r = tl.zeros([TILE, TILE], dtype=tl.float32 if PRECISION != "ieee64" else tl.float64)
    for k0 in range(0, batch, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < batch
        b_zi = tl.load(z_ptr + o_i[:, None] * batch + o_k[None, :], mask=m_i[:, None] & m_k[None, :],
                       other=0.0)
        b_zj = tl.load(z_ptr + o_j[:, None] * batch + o_k[None, :], mask=m_j[:, None] & m_k[None, :],
                       other=0.0)
        if PRECISION == "ieee64":
            b_r += tl.dot(b_zi, tl.trans(b_zj))
        else:
            b_r += tl.dot(b_zi.to(tl.float32), tl.trans(b_zj.to(tl.float32)),
                          input_precision=PRECISION)
    b_dx = tl.load(p_ptr + 2 * o_i, mask=m_i, other=0.0)[:, None] - \
        tl.load(p_ptr + 2 * o_j, mask=m_j, other=0.0)[None, :]
    b_dy = tl.load(p_ptr + 2 * o_i + 1, mask=m_i, other=0.0)[:, None] - \
        tl.load(p_ptr + 2 * o_j + 1, mask=m_j, other=0.0)[None, :]
    b_d = tl.sqrt(b_dx * b_dx + b_dy * b_dy).to(b_r.dtype)
    return b_r, 1.0 / (1.0 + b_d), b_d, o_i, o_j, m_i[:, None] & m_j[None, :]


@triton.jit
def _tiles_apart(box_ptr, a, b, radius):
    ax0, ay0 = tl.load(box_ptr + 4 * a), tl.load(box_ptr + 4 * a + 1)
    ax1, ay1 = tl.load(box_ptr + 4 * a + 2), tl.load(box_ptr + 4 * a + 3)
    bx0, by0 = tl.load(box_ptr + 4 * b), tl.load(box_ptr + 4 * b + 1)
    bx1, by1 = tl.load(box_ptr + 4 * b + 2), tl.load(box_ptr + 4 * b + 3)
    gx = tl.maximum(tl.maximum(ax0 - bx1, bx0 - ax1), 0.0)
    gy = tl.maximum(tl.maximum(ay0 - by1, by0 - ay1), 0.0)
    return gx * gx + gy * gy > radius * radius


@triton.jit
def _pair_sums_kernel(z_ptr, p_ptr, box_ptr, part_ptr, n_units, batch, n_tiles, param_ptr,
                      PRECISION: tl.constexpr, TILE: tl.constexpr, BLOCK_K: tl.constexpr):
    a = tl.program_id(0)
    radius = tl.load(param_ptr)  # float64: Python floats would arrive as float32
    acc_count = tl.zeros([1], dtype=tl.float64)
    acc_w, acc_w2 = tl.zeros([1], dtype=tl.float64), tl.zeros([1], dtype=tl.float64)
    acc_r, acc_r2 = tl.zeros([1], dtype=tl.float64), tl.zeros([1], dtype=tl.float64)
    acc_wr, acc_abs = tl.zeros([1], dtype=tl.float64), tl.zeros([1], dtype=tl.float64)
    for b in range(a, n_tiles):  # pairs i < j live in tiles b >= a
        if not _tiles_apart(box_ptr, a, b, radius):
            b_r, b_w, b_d, o_i, o_j, m = _pair_tile(z_ptr, p_ptr, a, b, n_units, batch, PRECISION,
                                                    TILE, BLOCK_K)
            b_in = m & (o_i[:, None] < o_j[None, :]) & (b_d.to(tl.float64) <= radius)
            b_r = tl.where(b_in, b_r, 0.0)
            b_w = tl.where(b_in, b_w, 0.0)
            acc_count += tl.sum(tl.sum(b_in.to(tl.float32), axis=1), axis=0).to(tl.float64)
            acc_w += tl.sum(tl.sum(b_w, axis=1), axis=0).to(tl.float64)
            acc_w2 += tl.sum(tl.sum(b_w * b_w, axis=1), axis=0).to(tl.float64)
            acc_r += tl.sum(tl.sum(b_r, axis=1), axis=0).to(tl.float64)
            acc_r2 += tl.sum(tl.sum(b_r * b_r, axis=1), axis=0).to(tl.float64)
            acc_wr += tl.sum(tl.sum(b_w * b_r, axis=1), axis=0).to(tl.float64)
            acc_abs += tl.sum(tl.sum(tl.abs(b_r - b_w), axis=1), axis=0).to(tl.float64)
    o = tl.arange(0, 1)
    p_out = part_ptr + a * 7 + o
    tl.store(p_out, acc_count)
    tl.store(p_out + 1, acc_w)
    tl.store(p_out + 2, acc_w2)
    tl.store(p_out + 3, acc_r)
    tl.store(p_out + 4, acc_r2)
    tl.store(p_out + 5, acc_wr)
    tl.store(p_out + 6, acc_abs)


@triton.jit
def _pair_grad_kernel(z_ptr, p_ptr, box_ptr, grad_ptr, n_units, batch, n_tiles, param_ptr,
                      PRECISION: tl.constexpr, TILE: tl.constexpr, BLOCK_K: tl.constexpr,
                      BLOCK_B: tl.constexpr):
    a, b_block = tl.program_id(0), tl.program_id(1)
    # float64 parameters (radius, then dS/dr coefficients): Python floats arrive as float32
    radius = tl.load(param_ptr)
    c_r, c_r2 = tl.load(param_ptr + 1), tl.load(param_ptr + 2)
    c_wr, c_abs = tl.load(param_ptr + 3), tl.load(param_ptr + 4)
    o_b = b_block * BLOCK_B + tl.arange(0, BLOCK_B)  # this program's gradient columns
    m_b = o_b < batch
    o_rows = a * TILE + tl.arange(0, TILE)
    b_grad = tl.zeros([TILE, BLOCK_B], dtype=tl.float32 if PRECISION != "ieee64" else tl.float64)
    for b in range(0, n_tiles):  # both orders of every pair
        if not _tiles_apart(box_ptr, a, b, radius):
            b_r, b_w, b_d, o_i, o_j, m = _pair_tile(z_ptr, p_ptr, a, b, n_units, batch, PRECISION,
                                                    TILE, BLOCK_K)
            b_in = m & (o_i[:, None] != o_j[None, :]) & (b_d.to(tl.float64) <= radius)
            b_diff = b_r - b_w
            b_sign = tl.where(b_diff > 0, 1.0, tl.where(b_diff < 0, -1.0, 0.0)).to(b_r.dtype)
            b_c = c_r.to(b_r.dtype) + 2 * c_r2.to(b_r.dtype) * b_r + c_wr.to(b_r.dtype) * b_w \
                + c_abs.to(b_r.dtype) * b_sign
            b_c = tl.where(b_in, b_c, 0.0)
            b_zj = tl.load(z_ptr + o_j[:, None] * batch + o_b[None, :],
                           mask=(o_j < n_units)[:, None] & m_b[None, :], other=0.0)
            if PRECISION == "ieee64":
                b_grad += tl.dot(b_c.to(tl.float64), b_zj)
            else:
                b_grad += tl.dot(b_c.to(tl.float32), b_zj.to(tl.float32), input_precision=PRECISION)
    tl.store(grad_ptr + o_rows[:, None] * batch + o_b[None, :], b_grad,
             mask=(o_rows < n_units)[:, None] & m_b[None, :])


def _precision(z: torch.Tensor) -> str:
    return "ieee64" if z.dtype == torch.float64 else "tf32x3"


TILE = 64  # units per tile side
BLOCK_K = 32  # batch chunk of the r = Z_I Z_J^T products
BLOCK_B = 64  # gradient columns per program
# Weighted sum W Z: launch configuration chosen by bench/sweep_spatial_triton.py on an H200
# (bench/RESULTS.md): 32-column steps beat 64 by 20 % at N = 16,384, B = 256 (5.9 vs 7.4 ms) and
# at N = 14,336, B = 64 (1.32 vs 1.65 ms). Below TARGET_PROGRAMS (row, batch) blocks the column
# loop is split over programs; measured, that changes little (1.65 -> 1.63 ms) but costs nothing.
WEIGHTED_SUM = dict(BLOCK_I=TILE, BLOCK_J=32, BLOCK_B=BLOCK_B, num_warps=4, num_stages=2)
TARGET_PROGRAMS = 4 * 132
MAX_SPLITS = 16


def _boxes(positions: torch.Tensor, tile: int) -> torch.Tensor:
    n_units = positions.shape[0]
    n_tiles = math.ceil(n_units / tile)
    padded = torch.cat([positions, positions[-1:].expand(n_tiles * tile - n_units, 2)])
    tiles = padded.view(n_tiles, tile, 2)
    return torch.cat([tiles.min(dim=1).values, tiles.max(dim=1).values], dim=1).contiguous()


def n_splits(n_units: int, batch: int, config: dict) -> int:
    blocks = triton.cdiv(n_units, config["BLOCK_I"]) * triton.cdiv(batch, config["BLOCK_B"])
    column_tiles = triton.cdiv(n_units, config["BLOCK_J"])
    return max(1, min(MAX_SPLITS, triton.cdiv(TARGET_PROGRAMS, blocks), column_tiles))


def weighted_sum(z: torch.Tensor, positions: torch.Tensor, config: dict | None = None,
                 splits: int | None = None):
    """(W z [N, B], row sums of W [N], of W^2 [N]) with W_ij = 1 / (1 + d_ij) off the diagonal,
    W_ii = 0."""
    config = dict(WEIGHTED_SUM, **(config or {}))
    n_units, batch = z.shape
    splits = n_splits(n_units, batch, config) if splits is None else splits
    j_per_split = triton.cdiv(triton.cdiv(n_units, splits), config["BLOCK_J"]) * config["BLOCK_J"]
    splits = triton.cdiv(n_units, j_per_split)  # no empty split
    wz = z.new_empty(splits, n_units, batch)
    w_sum = torch.empty(splits, n_units, dtype=torch.float64, device=z.device)
    w2_sum = torch.empty_like(w_sum)
    grid = (triton.cdiv(n_units, config["BLOCK_I"]), triton.cdiv(batch, config["BLOCK_B"]), splits)
    _weighted_sum_kernel[grid](z, positions, wz, w_sum, w2_sum, n_units, batch, j_per_split,
                               PRECISION=_precision(z), **config)
    if splits == 1:
        return wz[0], w_sum[0], w2_sum[0]
    return wz.sum(dim=0), w_sum.sum(dim=0), w2_sum.sum(dim=0)


def pair_sums(z: torch.Tensor, positions: torch.Tensor, radius: float) -> torch.Tensor:
    n_units, batch = z.shape
    n_tiles = triton.cdiv(n_units, TILE)
    partial = torch.zeros(n_tiles, 7, dtype=torch.float64, device=z.device)
    params = torch.tensor([radius], dtype=torch.float64, device=z.device)
    _pair_sums_kernel[(n_tiles,)](z, positions, _boxes(positions, TILE), partial, n_units, batch,
                                  n_tiles, params, PRECISION=_precision(z), TILE=TILE,
                                  BLOCK_K=BLOCK_K)
    return partial.sum(dim=0)


def pair_grad(z: torch.Tensor, positions: torch.Tensor, radius: float,
              coef: torch.Tensor) -> torch.Tensor:
    n_units, batch = z.shape
    n_tiles = triton.cdiv(n_units, TILE)
    grad = torch.empty_like(z)
    params = torch.cat([torch.tensor([radius], dtype=torch.float64), coef.double().cpu()])
    grid = (n_tiles, triton.cdiv(batch, BLOCK_B))
    _pair_grad_kernel[grid](z, positions, _boxes(positions, TILE), grad, n_units, batch, n_tiles,
                            params.to(z.device), PRECISION=_precision(z), TILE=TILE,
                            BLOCK_K=BLOCK_K, BLOCK_B=BLOCK_B)
    return grad
