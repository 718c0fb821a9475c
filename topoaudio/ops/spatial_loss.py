"""The spatial-correlation loss as an exact whole-sheet op: ``topoaudio.ops.spatial_loss``.

No N x N tensor is ever formed (docs/SCIENCE.md section 3, docs/DESIGN.md). Features become unit
vectors z [N, B] (autograd-visible, O(N B)); one registered op reduces all pairs to seven sums
(count, w, w^2, r, r^2, w r, |r - w|); the loss is a float64 function of those sums.
- relative, all pairs: the sums are algebra on s = sum_i z_i, the B x B Gram Z^T Z and W Z, which
  a tiled kernel computes from positions; W Z is kept, so the backward is O(N B).
- radius or absolute: units are sorted along a Morton curve so tiles are compact, and a tiled
  kernel computes r tiles Z_I Z_J^T on the fly, skipping tile pairs farther apart than the radius;
  the backward recomputes the tiles.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import dispatch, spatial_torch
from . import reference as _reference
from .settings import backend_name, finite_number
from .spatial_common import (
    check_spatial_args,
    compute_dtype,
    has_pair_within,
    loss_from_sums,
    spatial_settings,
    unit_vectors,
)

OP_NAME = "spatial_loss"


def _primitives(backend: str):
    """(weighted_sum, pair_sums, pair_grad) of a backend; see spatial_torch for the contract."""
    if backend in ("torch", "reference"):
        return spatial_torch.weighted_sum, spatial_torch.pair_sums, spatial_torch.pair_grad
    if backend in ("cpp", "cuda"):
        ext = dispatch.extension()
        suffix = "cpu" if backend == "cpp" else "cuda"
        return (getattr(ext, f"spatial_weighted_sum_{suffix}"),
                getattr(ext, f"spatial_pair_sums_{suffix}"),
                getattr(ext, f"spatial_pair_grad_{suffix}"))
    if backend == "triton":
        from topoaudio.kernels import spatial_loss as triton_kernels
        return triton_kernels.weighted_sum, triton_kernels.pair_sums, triton_kernels.pair_grad
    raise ValueError(f"no spatial-loss kernels for backend {backend!r}")


def _all_pairs_sums(z, positions, weighted_sum):
    """Seven sums over all pairs i < j by algebra. The |r - w| sum needs tiles and is left at 0:
    only kind="relative" takes this path, and it does not read it."""
    n_units = z.shape[0]
    wz, w_rows, w2_rows = weighted_sum(z, positions)
    s = z.sum(dim=0)
    gram = z.t() @ z
    self_dot = (z * z).sum(dim=1)  # 1 for live units, 0 for dead ones (up to rounding)
    f64 = torch.float64
    sums = torch.stack([
        torch.tensor(n_units * (n_units - 1) / 2, dtype=f64, device=z.device),
        (w_rows.double().sum() - n_units) / 2,
        (w2_rows.double().sum() - n_units) / 2,
        ((s.double() ** 2).sum() - self_dot.double().sum()) / 2,
        ((gram.double() ** 2).sum() - (self_dot.double() ** 2).sum()) / 2,
        ((z.double() * wz.double()).sum() - self_dot.double().sum()) / 2,
        torch.zeros((), dtype=f64, device=z.device),
    ])
    return sums, wz


@torch.library.custom_op("topoaudio::spatial_pair_sums", mutates_args=())
def _pair_sums_op(z: torch.Tensor, positions: torch.Tensor, radius: float, all_pairs: bool,
                  backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """z [N, B], positions [N, 2] -> (sums float64 [7], W z [N, B] or an empty tensor)."""
    weighted_sum, pair_sums, _ = _primitives(backend)
    if all_pairs:
        return _all_pairs_sums(z, positions, weighted_sum)
    return pair_sums(z, positions, radius), z.new_empty(0)


@_pair_sums_op.register_fake
def _(z, positions, radius, all_pairs, backend):
    return z.new_empty(7, dtype=torch.float64), z.new_empty(z.shape if all_pairs else (0,))


@torch.library.custom_op("topoaudio::spatial_pair_sums_backward", mutates_args=())
def _pair_sums_backward_op(grad_sums: torch.Tensor, z: torch.Tensor, positions: torch.Tensor,
                           wz: torch.Tensor, radius: float, all_pairs: bool,
                           backend: str) -> torch.Tensor:
    g_r, g_r2, g_wr, g_abs = (float(g) for g in grad_sums[3:7].cpu())
    if all_pairs:
        # d/dz_i of the pair sums (the i = j terms are removed in _all_pairs_sums)
        s = z.sum(dim=0, keepdim=True)
        self_dot = (z * z).sum(dim=1, keepdim=True)
        grad = g_r * (s - z) + g_wr * (wz - z)
        if g_r2 != 0.0:
            grad = grad + 2 * g_r2 * (z @ (z.t() @ z) - self_dot * z)
        return grad
    _, _, pair_grad = _primitives(backend)
    coef = torch.tensor([g_r, g_r2, g_wr, g_abs], dtype=torch.float64)
    return pair_grad(z, positions, radius, coef)


@_pair_sums_backward_op.register_fake
def _(grad_sums, z, positions, wz, radius, all_pairs, backend):
    return torch.empty_like(z)


def _setup_context(ctx, inputs, output):
    z, positions, radius, all_pairs, backend = inputs
    ctx.save_for_backward(z, positions, output[1])
    ctx.params = (radius, all_pairs, backend)


def _backward(ctx, grad_sums, grad_wz):
    z, positions, wz = ctx.saved_tensors
    radius, all_pairs, backend = ctx.params
    if grad_sums is None:
        return None, None, None, None, None
    grad_z = _pair_sums_backward_op(grad_sums.contiguous(), z, positions, wz, radius, all_pairs, backend)
    return grad_z, None, None, None, None


torch.library.register_autograd("topoaudio::spatial_pair_sums", _backward,
                                setup_context=_setup_context)


def morton_order(positions: torch.Tensor) -> torch.Tensor:
    """Permutation sorting units along a Z-order curve, so that consecutive units (a tile) are
    close on the sheet and tile pairs beyond the radius can be skipped whole."""
    p = positions.detach().double()
    span = (p.max(dim=0).values - p.min(dim=0).values).clamp_min(1e-12)
    grid = ((p - p.min(dim=0).values) / span * 65535).to(torch.int64)
    code = torch.zeros(len(p), dtype=torch.int64, device=p.device)
    for bit in range(16):
        code |= ((grid[:, 0] >> bit) & 1) << (2 * bit)
        code |= ((grid[:, 1] >> bit) & 1) << (2 * bit + 1)
    return torch.argsort(code, stable=True)


def spatial_loss(features: torch.Tensor, positions: torch.Tensor, *, kind: str = "relative",
                 radius: float | None = None, eps: float = 1e-6,
                 backend: str | None = "auto") -> torch.Tensor:
    """Spatial-correlation loss of a layer's responses on a cortical sheet (scalar tensor).

    features [B, N]: responses of N units over a batch (float32/float16/bfloat16 accumulate in
    float32; float64 stays float64). positions [N, 2]: unit positions in mm (no gradient).
    kind="relative": (1 - corr_P(r, 1 / (1 + d))) / 2 (TDANN); kind="absolute": mean_P |r - w|.
    P: all pairs i < j, or those with d_ij <= radius. Exact; never builds an N x N matrix.
    Scale-invariant: features x c (any finite c > 0) give the same loss; a unit whose std over the
    batch is <= eps x its own RMS counts as dead (correlates 0, zero gradient). Numbers may be
    Python or NumPy scalars; any strides work; backend=None means "auto".
    TDANN's neighbourhood sampling is ``spatial_loss(x[:, idx], pos[idx])``.

    Example::

        >>> import torch, topoaudio.ops as ops
        >>> x, pos = torch.randn(32, 1000), torch.rand(1000, 2) * 10
        >>> loss = ops.spatial_loss(x, pos)          # about 0.5 for random responses
    """
    kind, radius, eps = check_spatial_args(features, positions, kind, radius, eps)
    name = dispatch.choose(OP_NAME, features.device, backend)
    if name == "reference":
        return _reference.spatial_loss(features, positions, kind=kind, radius=radius, eps=eps)
    if radius is not None and not has_pair_within(positions, radius):
        raise ValueError(f"no pair of units lies within radius {radius} mm: every unit is "
                         "farther than that from all others; use a larger radius or None")
    # The one place inputs get the layout every kernel assumes (row-major, contiguous): z is built
    # contiguous, positions of any strides (a transposed [2, N] view, a slice) are copied here.
    z, _ = unit_vectors(features, eps)
    positions = positions.detach().to(z.dtype).contiguous()
    all_pairs = kind == "relative" and radius is None
    if not all_pairs:
        order = morton_order(positions)
        z, positions = z[order].contiguous(), positions[order].contiguous()
    sums, _ = _pair_sums_op(z, positions, math.inf if radius is None else radius, all_pairs, name)
    dtype = compute_dtype(features)
    return loss_from_sums(sums, kind, dtype).to(dtype)


class SpatialLoss(nn.Module):
    """nn.Module form: weight x spatial_loss of a layer's unit responses on a cortical sheet.

    `sheet` is anything with ``positions`` [N, 2] (mm) and, optionally, ``responses(activations)``
    turning a layer's activations into unit responses [B, N]; without it, activations are
    flattened to [B, N].
    """

    def __init__(self, sheet, *, kind: str = "relative", radius: float | None = None,
                 eps: float = 1e-6, weight: float = 1.0, backend: str = "auto"):
        super().__init__()
        self.kind, self.radius, self.eps = spatial_settings(kind, radius, eps)
        self.sheet, self.weight = sheet, finite_number("weight", weight)
        self.backend = backend_name(backend)

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        responses = (self.sheet.responses(activations) if hasattr(self.sheet, "responses")
                     else activations.flatten(1))
        positions = torch.as_tensor(self.sheet.positions, device=responses.device)
        return self.weight * spatial_loss(responses, positions, kind=self.kind, radius=self.radius,
                                          eps=self.eps, backend=self.backend)
