"""The spatial-correlation loss as an exact whole-sheet op: ``topoaudio.ops.spatial_loss``.

No N x N tensor is ever formed (docs/SCIENCE.md section 3, docs/DESIGN.md). Features become unit
vectors z [N, B] (autograd-visible, O(N B)); one registered op reduces all pairs to seven sums
(count, w, w^2, r, r^2, w r, |r - w|); the loss is a float64 function of those sums.
- relative, all pairs: the sums are algebra on s = sum_i z_i, the B x B Gram Z^T Z and W Z, which
  a tiled kernel computes from positions; W Z is kept, so the backward is O(N B).
  On a lattice sheet (spatial_lattice) W Z is an FFT convolution instead, O(B G log G) for G
  lattice sites.
- radius or absolute: units are sorted along a Morton curve so tiles are compact, and a tiled
  kernel computes r tiles Z_I Z_J^T on the fly, skipping tile pairs farther apart than the radius;
  the backward recomputes the tiles.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import dispatch, spatial_lattice, spatial_torch
from . import reference as _reference
from .settings import backend_name, finite_number
from .spatial_common import (
    SHEET_CACHE,
    check_finite_features,
    check_spatial_args,
    compute_dtype,
    constant,
    has_pair_within,
    loss_and_grad_from_sums,
    loss_from_sums,
    positions_on,
    power_of_two_above,
    relative_positions,
    spatial_settings,
    unit_vectors,
)
from .transforms import refuse_double_backward, refuse_functorch

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
        w_rows.double().sum() / 2,  # (W has a zero diagonal: no i = j terms to remove)
        w2_rows.double().sum() / 2,
        ((s.double() ** 2).sum() - self_dot.double().sum()) / 2,
        ((gram.double() ** 2).sum() - (self_dot.double() ** 2).sum()) / 2,
        (z.double() * wz.double()).sum() / 2,
        torch.zeros((), dtype=f64, device=z.device),
    ])
    return sums, wz


def _required_lattice(positions: torch.Tensor) -> spatial_lattice.Lattice:
    """The lattice positions lie on (found once per tensor), or ValueError for lattice=True."""
    found = spatial_lattice.lattice_of(positions)
    if isinstance(found, spatial_lattice.NotOnLattice):
        raise ValueError(f"lattice=True: {found}")
    return found


@torch.library.custom_op("topoaudio::spatial_pair_sums", mutates_args=())
def _pair_sums_op(z: torch.Tensor, positions: torch.Tensor, radius: float, all_pairs: bool,
                  backend: str, lattice: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """z [N, B], positions [N, 2] -> (sums float64 [7], W z [N, B] or an empty tensor).
    lattice: W z by FFT convolution on the lattice the positions lie on (all pairs only)."""
    weighted_sum, pair_sums, _ = _primitives(backend)
    if all_pairs:
        if lattice:
            weighted_sum = _required_lattice(positions).weighted_sum
        return _all_pairs_sums(z, positions, weighted_sum)
    return pair_sums(z, positions, radius), z.new_empty(0)


@_pair_sums_op.register_fake
def _(z, positions, radius, all_pairs, backend, lattice=False):
    return z.new_empty(7, dtype=torch.float64), z.new_empty(z.shape if all_pairs else (0,))


@torch.library.custom_op("topoaudio::spatial_pair_sums_backward", mutates_args=())
def _pair_sums_backward_op(grad_sums: torch.Tensor, z: torch.Tensor, positions: torch.Tensor,
                           wz: torch.Tensor, radius: float, all_pairs: bool,
                           backend: str) -> torch.Tensor:
    if all_pairs:
        # d/dz_i of the pair sums (the i = j terms are removed in _all_pairs_sums; W's diagonal
        # is 0). The
        # coefficients stay device tensors: reading them on the host would wait for the GPU.
        g_r, g_r2, g_wr = grad_sums[3:6].to(z.dtype).unbind()
        s = z.sum(dim=0, keepdim=True)
        self_dot = (z * z).sum(dim=1, keepdim=True)
        return g_r * (s - z) + g_wr * wz + 2 * g_r2 * (z @ (z.t() @ z) - self_dot * z)
    _, _, pair_grad = _primitives(backend)
    # The tile kernels take the four coefficients as host numbers (one read of 32 bytes).
    return pair_grad(z, positions, radius, grad_sums[3:7].cpu())


@_pair_sums_backward_op.register_fake
def _(grad_sums, z, positions, wz, radius, all_pairs, backend):
    return torch.empty_like(z)


def _setup_context(ctx, inputs, output):
    z, positions, radius, all_pairs, backend, _ = inputs  # (the backward never needs W again)
    ctx.save_for_backward(z, positions, output[1])
    ctx.params = (radius, all_pairs, backend)


def _backward(ctx, grad_sums, grad_wz):
    refuse_double_backward(OP_NAME)
    z, positions, wz = ctx.saved_tensors
    radius, all_pairs, backend = ctx.params
    if grad_sums is None:
        return None, None, None, None, None, None
    grad_z = _pair_sums_backward_op(grad_sums.contiguous(), z, positions, wz, radius, all_pairs, backend)
    return grad_z, None, None, None, None, None


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
                 backend: str | None = "auto", lattice: bool | None = None) -> torch.Tensor:
    """Spatial-correlation loss of a layer's responses on a cortical sheet (scalar tensor).

    features [B, N]: responses of N units over a batch (float32/float16/bfloat16 accumulate in
    float32; float64 stays float64). positions [N, 2]: unit positions in mm (no gradient).
    kind="relative": (1 - corr_P(r, 1 / (1 + d))) / 2 (TDANN); kind="absolute": mean_P |r - w|.
    P: all pairs i < j, or those with d_ij <= radius. Exact; never builds an N x N matrix.
    Scale-invariant: features x c (any finite c > 0) give the same loss; a unit whose std over the
    batch is <= eps x its own RMS counts as dead (correlates 0, zero gradient). Numbers may be
    Python or NumPy scalars; any strides work; backend=None means "auto".
    TDANN's neighbourhood sampling is ``spatial_loss(x[:, idx], pos[idx])``.
    lattice (all pairs, relative only): None runs W z as an FFT convolution when the positions lie
    on a lattice (spatial_lattice; detected once per positions tensor) within its memory budget
    and the cost model expects it to beat the tiles; True whenever they lie on one (ValueError
    saying why if not); False never. last_backend() then reads e.g. "cpp+lattice".

    Example::

        >>> import torch, topoaudio.ops as ops
        >>> x, pos = torch.randn(32, 1000), torch.rand(1000, 2) * 10
        >>> loss = ops.spatial_loss(x, pos)          # about 0.5 for random responses
    """
    on_cpu = isinstance(features, torch.Tensor) and features.device.type == "cpu"
    if isinstance(features, torch.Tensor):
        refuse_functorch(OP_NAME, features.device, backend)
    # the CPU path checks values itself, from a reduction it needs anyway
    kind, radius, eps = check_spatial_args(features, positions, kind, radius, eps,
                                           check_values=not on_cpu)
    all_pairs = kind == "relative" and radius is None
    if _lattice_option(lattice) and not all_pairs:
        raise ValueError("lattice=True runs only the all-pairs relative loss (kind='relative', "
                         f"radius=None), got kind={kind!r}, radius={radius!r}")
    name = dispatch.choose(OP_NAME, features.device, backend)
    if name == "reference":
        return _reference.spatial_loss(features, positions, kind=kind, radius=radius, eps=eps)
    dtype = compute_dtype(features)
    if features.device.type == "meta":  # shapes only (checked above): no values to compute with
        return (features.sum() * 0).to(dtype)
    sheet = _sheet(positions, dtype, radius, all_pairs, lattice if all_pairs else False)
    if sheet.lattice is not None:
        dispatch.record(OP_NAME, f"{name}+lattice")
    if on_cpu:
        return _CpuSpatialLoss.apply(features, sheet, kind, radius, eps, name)
    # The one place inputs get the layout every kernel assumes (row-major, contiguous): z is built
    # contiguous, positions of any strides (a transposed [2, N] view, a slice) are copied (once
    # per sheet, in _sheet).
    z, _ = unit_vectors(features, eps)
    if sheet.order is not None:
        z = z[sheet.order].contiguous()
    sums, _ = _pair_sums_op(z, sheet.positions, math.inf if radius is None else radius, all_pairs,
                            name, sheet.lattice is not None)
    return loss_from_sums(sums, kind, dtype).to(dtype)


def _lattice_option(lattice) -> bool | None:
    if lattice is not None and not isinstance(lattice, bool):
        raise ValueError(f"lattice must be None (auto), True or False, got {lattice!r}")
    return lattice


class _Sheet:
    """What spatial_loss derives from a positions tensor alone, once per tensor and version
    (SHEET_CACHE): positions contiguous in the compute dtype (Morton-sorted for tiled kinds), the
    order and its inverse, the lattice W z runs on (None: tiles), and per backend the W row-sum
    totals of the all-pairs path."""

    def __init__(self, positions: torch.Tensor, dtype: torch.dtype, radius: float | None,
                 all_pairs: bool, lattice: bool | None):
        if radius is not None and not has_pair_within(positions, radius):
            raise ValueError(f"no pair of units lies within radius {radius} mm: every unit is "
                             "farther than that from all others; use a larger radius or None")
        p = relative_positions(positions, dtype)
        self.order = self.inverse = None
        if not all_pairs:
            self.order = morton_order(p)
            self.inverse = torch.argsort(self.order)
            p = p[self.order].contiguous()
        self.positions = p
        self.lattice = None
        if lattice is not False:
            # detected on the caller's positions: their dtype's rounding sets the tolerance
            found = (_required_lattice(positions) if lattice
                     else spatial_lattice.lattice_of(positions))
            if lattice or (isinstance(found, spatial_lattice.Lattice) and found.cheaper_than_tiles()):
                self.lattice = found
                # the registered op finds it again from the positions it is given
                SHEET_CACHE.get(p, ("lattice",), lambda: found)
        self.w_totals: dict[str, tuple[float, float]] = {}  # backend -> (sum w, sum w^2) over i < j


def _sheet(positions: torch.Tensor, dtype: torch.dtype, radius: float | None,
           all_pairs: bool, lattice: bool | None) -> _Sheet:
    return SHEET_CACHE.get(positions, ("sheet", dtype, radius, all_pairs, lattice),
                           lambda: _Sheet(positions, dtype, radius, all_pairs, lattice))


class _CpuSpatialLoss(torch.autograd.Function):
    """The whole loss on CPU tensors (any CPU backend's primitives) as one autograd node with a
    hand-written backward: unit vectors, pair sums, the float64 loss on host floats. At small N the
    cost is the number of small ops, not the kernels (issue 10: 552 aten calls at N = 64 through
    autograd of each step); here the sums are on the host anyway, so reading them costs no sync.
    Same sums, same zero-variance rule and formulas as the registered-op path the GPU takes.
    Ops are written to the fewest aten calls (constants as cached tensors, scalars as alpha=,
    float64 reductions as dot products); bench/test_host_cost.py and tests/ count them. With the
    cpp backend the forward and the backward are one C++ call each (_fused_forward, issue 23)."""

    @staticmethod
    def forward(ctx, features, sheet, kind, radius, eps, backend):
        # (Function.forward runs without autograd recording: no detach needed.)
        dtype = compute_dtype(features)
        x = features if features.dtype == dtype else features.to(dtype)
        ctx.fused = backend == "cpp" and _fused_ops() is not None
        if ctx.fused:
            return _fused_forward(ctx, x, features, sheet, kind, radius, eps)
        if sheet.order is not None:
            x = x.index_select(1, sheet.order)  # columns are units: sorting them sorts z's rows
        # NaN propagates through amax, Inf stays: the peak is finite iff every value is. It is
        # read with the sums (one host read); non-finite values make units dead, so the work
        # before the check is harmless
        largest = x.abs().amax(dim=0)
        peak = largest.amax(dim=0, keepdim=True)
        # unit vectors as spatial_common.unit_vectors computes them (exact power-of-two scale,
        # centring, the same live-unit rule), keeping what the backward needs
        batch, n_units = x.shape
        scale = power_of_two_above(largest)
        x = x / scale
        mean = x.sum(dim=0, keepdim=True).div_(constant(batch, dtype))
        centred = x - mean
        # Squared norms as a product and a column sum: linalg.vector_norm over dim 0 of [B, N]
        # took 11 ms at N = 65,536, B = 64 (2 threads), this 3.5 ms. The live rule
        # |centred| > eps |x| is compared squared, with |x|^2 = |centred|^2 + B mean^2 (no pass
        # over x for its norm).
        norm2 = (centred * centred).sum(dim=0, keepdim=True)
        live = norm2 > torch.addcmul(norm2, mean, mean, value=batch).mul_(constant(eps * eps, dtype))
        norm = norm2.sqrt_().view(-1)
        live = live.view(-1)
        inv_norm = torch.where(live, norm.reciprocal(), constant(0.0, dtype))  # 0: dead unit
        # z^T [B, N]: the unit vectors by batch column, the features' own layout (contiguous)
        zt = centred.mul_(inv_norm)
        weighted_sum, pair_sums, pair_grad = _primitives(backend)
        if kind == "relative" and radius is None:
            if sheet.lattice is not None:
                wzt, w_rows, w2_rows = sheet.lattice.weighted_sum_by_column(zt)
            else:  # the tiles take z [N, B]; beside their O(N^2 B) the transposes cost nothing
                wz, w_rows, w2_rows = weighted_sum(zt.t().contiguous(), sheet.positions)
                wzt = wz.t()
            if backend not in sheet.w_totals:  # positions alone fix W: once per sheet
                totals = (w_rows.double().sum().item(), w2_rows.double().sum().item())
                sheet.w_totals[backend] = tuple(t / 2 for t in totals)  # W's diagonal is 0
            # Every term in z's dtype, as the registered-op path forms s and the Gram: float32
            # sums (pairwise in torch) of unit-norm vectors, whose rounding the tests bound
            # against the float64 reference. At N = 65,536 the float64 copies of z and W z and
            # the float64 Gram and addmm took ~60 of ~300 ms.
            s = zt.sum(dim=1)
            gram = torch.mm(zt, zt.t())
            self_dot = (zt * zt).sum(dim=0)
            flat_gram = gram.view(-1)
            peak, s2, sum_sd, sd2, gram2, zwz = torch.cat([
                peak, torch.dot(s, s).view(1), self_dot.sum(dim=0, keepdim=True),
                torch.dot(self_dot, self_dot).view(1), torch.dot(flat_gram, flat_gram).view(1),
                (zt * wzt).sum(dim=0).sum(dim=0, keepdim=True),
            ]).tolist()  # one host read for the six numbers
            # the i = j terms removed: sum r = (|s|^2 - sum z_i.z_i) / 2, and alike (W z has none)
            s_r, s_r2, s_wr = (s2 - sum_sd) / 2, (gram2 - sd2) / 2, zwz / 2
            sums = [n_units * (n_units - 1) / 2, *sheet.w_totals[backend], s_r, s_r2, s_wr, 0.0]
            ctx.all_pairs = (wzt, s, gram)
            ctx.z = None
        else:
            z = zt.t().contiguous()  # the tiles take z [N, B]
            sums = pair_sums(z, sheet.positions, math.inf if radius is None else radius)
            peak, *sums = torch.cat([peak, sums]).tolist()
            ctx.all_pairs, ctx.z = None, z
        if not math.isfinite(peak):
            check_finite_features(features)
        loss, ctx.coef = loss_and_grad_from_sums(sums, kind, dtype)
        ctx.zt, ctx.factor, ctx.sheet, ctx.radius = zt, inv_norm / scale, sheet, radius
        ctx.pair_grad, ctx.features_dtype = pair_grad, features.dtype
        return torch.full((), loss, dtype=dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        # (once_differentiable would return a detached gradient without a word: issue 23)
        refuse_double_backward(OP_NAME)
        if ctx.fused:
            return _fused_backward(ctx, grad_loss), None, None, None, None, None
        g = grad_loss.item()
        c_r, c_r2, c_wr, c_abs = (g * c for c in ctx.coef)
        zt = ctx.zt
        if ctx.all_pairs is not None:
            # d/dz_i of the all-pairs sums: c_r (s - z_i) + c_wr (W z)_i
            # + 2 c_r2 (Z^T Z z_i - |z_i|^2 z_i), by batch column. The terms along z_i are left
            # out: the projection below removes every component along z_i (|z_i| = 1; dead units
            # have z_i = 0 and a zero factor)
            wzt, s, gram = ctx.all_pairs
            grad_zt = torch.addmm(wzt, gram, zt, beta=c_wr, alpha=2 * c_r2)
            grad_zt.add_(s.unsqueeze(1), alpha=c_r)
        else:
            coef = torch.tensor([c_r, c_r2, c_wr, c_abs], dtype=torch.float64)
            grad_z = ctx.pair_grad(ctx.z, ctx.sheet.positions,
                                   math.inf if ctx.radius is None else ctx.radius, coef)
            grad_zt = grad_z.permute(1, 0)
        # back through z = (x / scale - mean) / norm per unit: project out z, centre, scale
        # (keepdim=True sums skip a squeeze: one aten call fewer each)
        u = grad_zt - zt * (zt * grad_zt).sum(dim=0, keepdim=True)
        u -= u.sum(dim=0, keepdim=True).div_(constant(u.shape[0], u.dtype))
        if ctx.sheet.inverse is not None:
            u = u.index_select(1, ctx.sheet.inverse)
            factor = ctx.factor.index_select(0, ctx.sheet.inverse)
        else:
            factor = ctx.factor
        grad = u.mul_(factor)  # (u is a fresh tensor in the compute dtype, as factor)
        if grad.dtype != ctx.features_dtype:
            grad = grad.to(ctx.features_dtype)
        return grad, None, None, None, None, None


# Modes of topoaudio::spatial_loss_forward_cpu / _backward_cpu (csrc/spatial_loss_cpu.cpp)
_FUSED_ALL_PAIRS, _FUSED_LATTICE, _FUSED_TILES = 0, 1, 2
_NO_ORDER = torch.empty(0, dtype=torch.int64)
_fused: list = []


def _fused_ops():
    """(forward, backward) of the whole loss in C++ (topoaudio._C registers them), or None for an
    extension built before them: the CPU Function then runs the primitives from Python."""
    if not _fused:
        ext = dispatch.extension()
        namespace = torch.ops.topoaudio
        found = None
        if ext is not None and hasattr(namespace, "spatial_loss_forward_cpu"):
            found = (namespace.spatial_loss_forward_cpu.default,
                     namespace.spatial_loss_backward_cpu.default)
        _fused.append(found)
    return _fused[0]


def _fused_forward(ctx, x, features, sheet, kind, radius, eps):
    """The cpp backend's forward, one C++ call (issue 23): unit vectors, s and the Gram, then W z
    (all pairs) or the pair sums (tiles), as blocks on the extension's helper threads
    (csrc/parallel_blocks.h, run_block_pool). ATen's static split of the ~25 small ops this
    replaces made each wait for a thread that shared its core with other processes (2 threads
    took 1.65-1.8x the 1-thread time under load), and at small N their dispatch was the cost
    (bench/test_host_cost.py). The lattice's W z stays in torch (spatial_lattice)."""
    forward, _ = _fused_ops()
    n_units = x.shape[1]
    all_pairs = kind == "relative" and radius is None
    lattice = sheet.lattice if all_pairs else None
    mode = (_FUSED_TILES if not all_pairs else
            _FUSED_LATTICE if lattice is not None else _FUSED_ALL_PAIRS)
    row_sums = mode == _FUSED_ALL_PAIRS and "cpp" not in sheet.w_totals
    order = _NO_ORDER if sheet.order is None else sheet.order
    stats, z, factor, wz, s, gram = forward(x, sheet.positions, order, eps, mode,
                                            math.inf if radius is None else radius, row_sums)
    finite, *values = stats.tolist()  # one host read
    if not finite:
        check_finite_features(features)  # raises, counting them
    if mode == _FUSED_TILES:
        sums = values
    else:
        s2, sum_sd, sd2, gram2, zwz = values[:5]
        if mode == _FUSED_LATTICE:  # z is z^T [B, N], the lattice's layout
            wzt, w_rows, w2_rows = lattice.weighted_sum_by_column(z)
            if "cpp" not in sheet.w_totals:
                sheet.w_totals["cpp"] = (w_rows.double().sum().item() / 2,
                                         w2_rows.double().sum().item() / 2)
            zwz = torch.dot(z.view(-1), wzt.reshape(-1)).item()
            wz = wzt.t()
        elif row_sums:  # positions alone fix W: once per sheet (W's diagonal is 0)
            sheet.w_totals["cpp"] = (values[5] / 2, values[6] / 2)
        # the i = j terms removed: sum r = (|s|^2 - sum z_i.z_i) / 2, and alike (W z has none)
        sums = [n_units * (n_units - 1) / 2, *sheet.w_totals["cpp"], (s2 - sum_sd) / 2,
                (gram2 - sd2) / 2, zwz / 2, 0.0]
    loss, ctx.coef = loss_and_grad_from_sums(sums, kind, x.dtype)
    ctx.saved = (z, factor, order, wz, gram, s, sheet.positions)
    ctx.mode, ctx.radius, ctx.features_dtype = mode, radius, features.dtype
    return torch.full((), loss, dtype=x.dtype)


def _fused_backward(ctx, grad_loss):
    _, backward = _fused_ops()
    z, factor, order, wz, gram, s, positions = ctx.saved
    grad = backward(grad_loss, z, factor, order, wz, gram, s, positions,
                    math.inf if ctx.radius is None else ctx.radius, ctx.coef, ctx.mode)
    return grad if grad.dtype == ctx.features_dtype else grad.to(ctx.features_dtype)


class SpatialLoss(nn.Module):
    """nn.Module form: weight x spatial_loss of a layer's unit responses on a cortical sheet.

    `sheet` is a positions tensor [N, 2] (mm, any float dtype; kept without gradient), or anything
    with ``positions`` [N, 2] (a ``topoaudio.sheet.CorticalSheet``) and, optionally,
    ``responses(activations)`` turning a layer's activations into unit responses [B, N].
    ``responses=`` (a callable activations -> [B, N]) overrides both; without either, activations
    are flattened to [B, N] (every element after the batch dim is a unit). The number of units is
    checked against the positions at each forward, a ValueError naming both counts.
    ``layer`` names the layer in messages and the repr; ``SpatialLoss.from_layer(model, name,
    positions)`` also hooks that layer of a model, so ``loss()`` reads its latest output.

    Example::

        >>> import torch, topoaudio.ops as ops
        >>> loss = ops.SpatialLoss(torch.rand(64, 2) * 5, weight=0.25)
        >>> value = loss(torch.randn(8, 64))           # activations [B, 64]: 64 units
    """

    def __init__(self, sheet, *, kind: str = "relative", radius: float | None = None,
                 eps: float = 1e-6, weight: float = 1.0, backend: str = "auto",
                 lattice: bool | None = None, responses=None, layer: str | None = None):
        super().__init__()
        self.kind, self.radius, self.eps = spatial_settings(kind, radius, eps)
        self.weight = finite_number("weight", weight)
        self.backend = backend_name(backend)
        self.lattice = _lattice_option(lattice)
        if responses is not None and not callable(responses):
            raise ValueError(f"responses must be a callable activations -> [B, N], got {responses!r}")
        if layer is not None and not isinstance(layer, str):
            raise ValueError(f"layer must be a layer name (str) or None, got {layer!r}")
        self.layer, self.responses = layer, responses
        if isinstance(sheet, torch.Tensor):
            self.sheet, self._positions = None, _checked_positions(sheet, self._who())
        elif hasattr(sheet, "positions"):
            self.sheet, self._positions = sheet, None
            _checked_positions(torch.as_tensor(sheet.positions), self._who())
        else:
            raise ValueError(f"{self._who()} takes a positions tensor [N, 2] (mm) or a sheet with "
                             f".positions, got {type(sheet).__name__}")
        self._captured = None
        self._hook = None

    @property
    def positions(self) -> torch.Tensor:
        """The units' positions [N, 2] in mm (the sheet's own tensor when built from a sheet)."""
        return self._positions if self.sheet is None else self.sheet.positions

    @property
    def n_units(self) -> int:
        return int(self.positions.shape[0])

    @classmethod
    def from_layer(cls, model: nn.Module, layer: str, sheet, **kwargs) -> SpatialLoss:
        """A SpatialLoss hooked on layer `layer` of `model` (a name from ``named_modules()``): each
        forward of the model keeps that layer's output, and ``loss()`` (no argument) computes the
        loss on the latest one, in the same graph. `sheet` and keyword arguments as the
        constructor's. ValueError naming the layer when the model lacks it; ``remove()`` detaches
        the hook. A layer whose output is not one tensor is refused at its first forward.

        Example::

            >>> import torch, topoaudio.ops as ops
            >>> model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU())
            >>> loss = ops.SpatialLoss.from_layer(model, "0", torch.rand(32, 2) * 4)
            >>> logits = model(torch.randn(16, 10))
            >>> value = loss()                              # on model[0]'s output [16, 32]
        """
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        modules = dict(model.named_modules())
        if not isinstance(layer, str) or layer not in modules:
            names = [name for name in modules if name]
            shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
            raise ValueError(f"model ({type(model).__name__}) has no layer {layer!r}; its layers are "
                             f"{shown or 'none'}")
        loss = cls(sheet, layer=layer, **kwargs)
        loss._hook = modules[layer].register_forward_hook(loss._capture)
        return loss

    def _capture(self, module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"{self._who()}: layer output is a {type(output).__name__}, not a "
                             "tensor [B, ...]; hook a layer that returns one tensor")
        self._captured = output

    def remove(self) -> None:
        """Detach the forward hook of ``from_layer`` and drop the activations it kept."""
        if self._hook is not None:
            self._hook.remove()
        self._hook = self._captured = None

    def forward(self, activations: torch.Tensor | None = None) -> torch.Tensor:
        if activations is None:
            if self._hook is None:
                raise ValueError(f"{self._who()} needs activations; only a loss made with "
                                 "SpatialLoss.from_layer reads them from its layer")
            if self._captured is None:
                raise ValueError(f"{self._who()}: no activations yet; run the model forward first")
            activations = self._captured
        if not isinstance(activations, torch.Tensor) or activations.dim() < 2:
            got = tuple(activations.shape) if isinstance(activations, torch.Tensor) else \
                type(activations).__name__
            raise ValueError(f"{self._who()} expects activations [B, ...], got {got}")
        if self.responses is not None:
            responses = self.responses(activations)
        elif self.sheet is not None and hasattr(self.sheet, "responses"):
            responses = self.sheet.responses(activations)
        else:
            responses = activations.flatten(1)
        if not isinstance(responses, torch.Tensor) or responses.dim() != 2:
            got = tuple(responses.shape) if isinstance(responses, torch.Tensor) else \
                type(responses).__name__
            raise ValueError(f"{self._who()}: responses must be [B, N], got {got}")
        if responses.shape[1] != self.n_units:
            raise ValueError(f"{self._who()}: the layer has {responses.shape[1]} units (activations "
                             f"{tuple(activations.shape)} -> responses {tuple(responses.shape)}) but "
                             f"the positions hold {self.n_units}")
        positions = self._positions_on(responses.device)
        return self.weight * spatial_loss(responses, positions, kind=self.kind, radius=self.radius,
                                          eps=self.eps, backend=self.backend, lattice=self.lattice)

    def _positions_on(self, device: torch.device) -> torch.Tensor:
        source = self.positions
        if not isinstance(source, torch.Tensor):
            return torch.as_tensor(source, device=device)
        return positions_on(source, device)

    def _who(self) -> str:
        return "SpatialLoss" if self.layer is None else f"SpatialLoss on layer {self.layer!r}"

    def extra_repr(self) -> str:
        extent = (self.positions.amax(dim=0) - self.positions.amin(dim=0)).tolist()
        source = "positions" if self.sheet is None else type(self.sheet).__name__
        parts = [f"layer={self.layer!r}"] if self.layer is not None else []
        parts += [f"units={self.n_units} ({source}, {extent[0]:.3g} x {extent[1]:.3g} mm)",
                  f"kind={self.kind!r}", f"radius={self.radius}", f"eps={self.eps}",
                  f"weight={self.weight}", f"backend={self.backend!r}", f"lattice={self.lattice}"]
        return ", ".join(parts)


def _checked_positions(positions: torch.Tensor, who: str) -> torch.Tensor:
    """positions [N, 2] (N >= 2), real floating point, finite, detached; ValueError naming it."""
    if positions.dim() != 2 or positions.shape[1] != 2 or positions.shape[0] < 2:
        raise ValueError(f"{who}: positions must be [N, 2] (x, y in mm) with N >= 2, got shape "
                         f"{tuple(positions.shape)}")
    if not positions.is_floating_point():
        raise ValueError(f"{who}: positions must be floating point (mm), got {positions.dtype}")
    if positions.device.type != "meta" and not bool(torch.isfinite(positions).all()):
        raise ValueError(f"{who}: positions contain {int((~torch.isfinite(positions)).sum())} "
                         "NaN or Inf values")
    return positions.detach()
