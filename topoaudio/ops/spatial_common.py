"""Shared pieces of the spatial-correlation loss (docs/SCIENCE.md section 3): argument checks,
unit vectors with the zero-variance rule, and the loss as a function of pair sums.

Every backend reduces the pairs P to the same seven sums, so the loss and its gradient with respect
to the sums are written once here, in float64, and autograd carries them back to the sums.
"""
from __future__ import annotations

import collections
import math
import threading
import weakref

import torch

from .settings import positive_number

KINDS = ("relative", "absolute")
# Order of the pair sums every backend returns (float64 [7]).
SUM_NAMES = ("count", "w", "w2", "r", "r2", "wr", "abs_r_minus_w")
N_SUMS = len(SUM_NAMES)


def spatial_settings(kind: str, radius, eps) -> tuple[str, float | None, float]:
    """(kind, radius, eps) checked, numbers as Python floats (np.float32(2.0) is a radius)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    radius = None if radius is None else positive_number("radius", radius)
    return kind, radius, positive_number("eps", eps)


def check_spatial_args(features, positions, kind: str, radius, eps, check_values: bool = True):
    """ValueError naming the problem, before any work; returns (kind, radius, eps) as
    spatial_settings does. check_values=False leaves the features' finiteness to the caller
    (check_finite_features), which may read it from a reduction it computes anyway."""
    if not isinstance(features, torch.Tensor) or not isinstance(positions, torch.Tensor):
        raise ValueError("spatial_loss expects torch.Tensor features [B, N] and positions [N, 2]")
    kind, radius, eps = spatial_settings(kind, radius, eps)
    if features.dim() != 2:
        raise ValueError(f"features must be [B, N] (batch x units), got shape {tuple(features.shape)}")
    if not features.is_floating_point() or not positions.is_floating_point():
        raise ValueError(f"features and positions must be floating point, got {features.dtype} "
                         f"and {positions.dtype}")
    batch, n_units = features.shape
    if positions.dim() != 2 or positions.shape[1] != 2:
        raise ValueError(f"positions must be [N, 2] (x, y in mm), got shape {tuple(positions.shape)}")
    if positions.shape[0] != n_units:
        raise ValueError(f"features have {n_units} units but positions has {positions.shape[0]} rows")
    if features.device != positions.device:
        raise ValueError(f"features are on {features.device} but positions on {positions.device}")
    if n_units < 2:
        raise ValueError(f"need at least 2 units to form a pair, got N = {n_units}")
    if batch < 2:
        raise ValueError(f"batch size is {batch}: a correlation over the batch needs at least 2 "
                         "samples")
    if features.device.type == "meta":  # shapes only: no values to check
        return kind, radius, eps
    if check_values:
        check_finite_features(features)
    # A sheet's positions rarely change: checked once per tensor and content.
    SHEET_CACHE.get(positions, ("finite",), lambda: _check_finite_positions(positions))
    return kind, radius, eps


def check_finite_features(features: torch.Tensor) -> None:
    """ValueError counting the NaN/Inf values of features. One reduction and one read in the common
    (finite) case: amax propagates NaN and keeps Inf, so the largest |x| is finite exactly when
    every value is; the count is taken only on the way to the error."""
    with torch.no_grad():
        peak = float(features.abs().amax())
    if not math.isfinite(peak):
        raise ValueError(f"features contain {int((~torch.isfinite(features)).sum())} NaN or Inf values")


def _check_finite_positions(positions: torch.Tensor) -> bool:
    if not bool(torch.isfinite(positions).all()):
        raise ValueError(f"positions contain {int((~torch.isfinite(positions)).sum())} NaN or Inf "
                         "values")
    return True


class TensorCache:
    """Values derived from a tensor's data (a sheet's positions: finiteness, Morton order, radius
    check, W row sums), computed once per tensor and per content instead of every call.

    One record per tensor, found by its id, holds a weak reference to that very tensor (a freed
    tensor's id may be reused), a copy of its values at the time, and the values derived from them.
    A record is used only while the tensor still holds exactly those values (torch.equal against
    the copy) and its shape, strides, dtype and device are unchanged; otherwise every value derived
    from it is dropped and recomputed. The version counter alone is not enough: writes through
    ``tensor.data``, ``tensor.numpy()`` or a DLPack view change the data without bumping it (issue
    23). The comparison reads N x 2 numbers, a few microseconds for a sheet of thousands of units
    and ~1 ms at 2^20 units, beside a loss that costs ~1 s there. Inference tensors are not
    cached, nor is anything while torch.compile traces. Bounded (least recently used tensors
    go), thread-safe."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._records: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _layout(tensor: torch.Tensor):
        return tensor.shape, tensor.stride(), tensor.dtype, tensor.device

    def _record(self, tensor: torch.Tensor) -> dict:
        """The values derived from `tensor` as it is now: its record if still valid, else a new one."""
        record = self._records.get(id(tensor))
        if (record is not None and record[0]() is tensor and record[1] == self._layout(tensor)
                and torch.equal(record[2], tensor)):
            self._records.move_to_end(id(tensor))
            return record[3]
        values: dict = {}
        self._records[id(tensor)] = (weakref.ref(tensor), self._layout(tensor),
                                     tensor.detach().clone(), values)
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)
        return values

    def get(self, tensor: torch.Tensor, key: tuple, compute):
        if tensor.is_inference() or torch.compiler.is_compiling():
            return compute()
        with self._lock:
            values = self._record(tensor)
            if key in values:
                return values[key]
        value = compute()
        with self._lock:
            values[key] = value  # (a record replaced meanwhile keeps only its own values)
        return value

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


SHEET_CACHE = TensorCache()


def positions_on(positions: torch.Tensor, device) -> torch.Tensor:
    """`positions` on `device`, copied once per tensor and in-place version (SHEET_CACHE): the same
    tensor every step, so the per-sheet constants cached on it (lattice, Morton order, W row sums)
    are not rebuilt from a fresh copy each step, and no host-to-device copy runs per step."""
    device = torch.device(device)
    if positions.device == device:
        return positions
    return SHEET_CACHE.get(positions, ("on", device), lambda: positions.to(device))


def relative_positions(positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """positions moved to their smallest coordinates in float64, then rounded to `dtype`
    (contiguous, no gradient): the loss depends only on distances, and float32 coordinates near
    1e6 mm resolve only 0.0625 mm, so a sheet far from the origin lost its layout (issue 23)."""
    p = positions.detach().double()
    return (p - p.min(dim=0).values).to(dtype).contiguous()


def compute_dtype(features: torch.Tensor) -> torch.dtype:
    """float16/bfloat16 responses are accumulated in float32; float64 stays float64."""
    return torch.float64 if features.dtype == torch.float64 else torch.float32


def scaled_per_unit(x: torch.Tensor) -> torch.Tensor:
    """x [B, N] with each unit's column divided by the power of two at or above its largest |x|:
    exact (a power-of-two division only moves the exponent), every value in [-1, 1], so squares
    neither overflow (|x| > 1.8e19 in float32) nor underflow (|x| < 1e-19). Correlations, and the
    dead-unit rule below, do not change under a positive scale per unit: the loss is
    scale-invariant, as a correlation is. The scale carries no gradient (nothing depends on it)."""
    return x / power_of_two_scale(x)


def power_of_two_scale(x: torch.Tensor) -> torch.Tensor:
    """Per column of x [B, N]: a power of two at or above its largest |x|."""
    return power_of_two_above(x.detach().abs().amax(dim=0))


_CONSTANTS: dict = {}


def constant(value, dtype: torch.dtype) -> torch.Tensor:
    """A 0-d CPU tensor, made once: a Python number in a tensor op is wrapped into a new tensor
    on every call (several aten calls each), which at small N costs more than the op."""
    key = (value, dtype)
    tensor = _CONSTANTS.get(key)  # one lookup: another thread may clear the table meanwhile
    if tensor is None:
        if len(_CONSTANTS) > 256:  # eps and batch sizes vary little; bound it anyway
            _CONSTANTS.clear()
        tensor = _CONSTANTS[key] = torch.tensor(value, dtype=dtype)
    return tensor


# IEEE exponent field and its lowest bit, per float type and same-width integer type
_EXPONENT_BITS = {torch.float32: (torch.int32, 0x7F800000, 0x00800000),
                  torch.float64: (torch.int64, 0x7FF0000000000000, 0x0010000000000000)}


def power_of_two_above(largest: torch.Tensor) -> torch.Tensor:
    """2^(floor(log2 |largest|) + 1) per element of a float32/float64 tensor of finite values >= 0,
    from the exponent bits (frexp and ldexp would take a dozen aten calls): a power of two at or
    above each value; 0 and subnormals get the smallest normal power of two, which divides exactly
    too."""
    int_type, mask, low_bit = _EXPONENT_BITS[largest.dtype]
    bits = largest.view(int_type).bitwise_and(constant(mask, int_type))
    return bits.add_(constant(low_bit, int_type)).view(largest.dtype)


def live_units(centred_norm: torch.Tensor, scaled: torch.Tensor, eps: float) -> torch.Tensor:
    """The zero-variance rule (docs/SCIENCE.md section 3), relative and so scale-invariant: a unit
    is dead when its standard deviation over the batch is <= eps x its root mean square, i.e. its
    variation is within rounding of its own level (a constant unit, a dead ReLU, a constant plus
    float32 noise). Both norms are of the same column, so 1/sqrt(B) cancels. The scale compared
    against is the unit's own, not the layer's: a unit responding at 1e-8 of its neighbours'
    level is a live unit in float32 (TDANN correlates it too), and its correlations are exact."""
    return centred_norm > eps * scaled.norm(dim=0)


def unit_vectors(features: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """z [N, B]: each unit's responses centred and scaled to norm 1, so r_ij = z_i . z_j; zero for
    zero-variance units (see live_units). Returns (z, live mask [N])."""
    x = scaled_per_unit(features.to(compute_dtype(features)))
    centred = x - x.mean(dim=0)
    norm = centred.norm(dim=0)
    live = live_units(norm, x, eps)
    # Dead units get norm 1 in the division so their (zero) gradient is not 0/0.
    z = torch.where(live, centred / torch.where(live, norm, torch.ones_like(norm)), 0.0)
    return z.t().contiguous(), live


def pearson_from_sums(count, sum_a, sum_b, sum_aa, sum_bb, sum_ab, rel_tol: float):
    """Pearson correlation from sums; 0 when either side has no variance (a single pair, all
    units dead, all distances equal): the loss is then 1/2 with zero gradient. A variance below
    rel_tol x the mean square counts as none: sums of rounded terms leave that much noise."""
    mean_a, mean_b = sum_a / count, sum_b / count
    cov = sum_ab / count - mean_a * mean_b
    var_a = (sum_aa / count - mean_a ** 2).clamp_min(0)
    var_b = (sum_bb / count - mean_b ** 2).clamp_min(0)
    variance_product = var_a * var_b
    defined = (var_a > rel_tol * sum_aa / count) & (var_b > rel_tol * sum_bb / count)
    # sqrt only where defined: its infinite slope at 0 would turn the zero gradient into NaN
    denom = torch.sqrt(torch.where(defined, variance_product, torch.ones_like(variance_product)))
    return torch.where(defined, cov / denom, torch.zeros_like(cov))


def variance_rel_tol(dtype: torch.dtype) -> float:
    """Below this fraction of the mean square, the variance of r or w values computed in `dtype`
    is rounding noise: the set has no variance and its correlation is 0 (fused ops and reference)."""
    return 1e-10 if dtype == torch.float64 else 1e-5


def loss_from_sums(sums: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """The loss from the pair sums (float64 [7], see SUM_NAMES) of terms computed in `dtype`."""
    count, w, w2, r, r2, wr, abs_diff = sums.unbind()
    if kind == "absolute":
        return abs_diff / count
    return (1 - pearson_from_sums(count, r, w, r2, w2, wr, variance_rel_tol(dtype))) / 2


def has_pair_within(positions: torch.Tensor, radius: float) -> bool:
    """Whether any two units lie within `radius` of each other, in O(N log N): hash units into
    square cells of side radius / sqrt(2) (two units in one cell are within radius), then look for
    a partner in the 24 cells around each unit's cell."""
    p = positions.detach().to(torch.float64)
    cell = radius / math.sqrt(2)
    cells = torch.floor((p - p.min(dim=0).values) / cell).to(torch.int64)
    width = int(cells[:, 1].max()) + 5
    keys = (cells[:, 0] + 2) * width + (cells[:, 1] + 2)
    order = torch.argsort(keys)
    sorted_keys = keys[order]
    if bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
        return True
    for dx in range(-2, 3):
        for dy in range(-2, 3):
            if dx == 0 and dy == 0:
                continue
            target = keys + dx * width + dy
            index = torch.searchsorted(sorted_keys, target).clamp_max(len(keys) - 1)
            found = sorted_keys[index] == target
            partner = order[index]
            close = (p - p[partner]).norm(dim=1) <= radius
            if bool((found & close).any()):
                return True
    return False


def loss_and_grad_from_sums(sums: list[float], kind: str,
                            dtype: torch.dtype) -> tuple[float, tuple[float, float, float, float]]:
    """loss_from_sums on Python floats (the same float64 arithmetic, without a tensor op per
    scalar) and its gradient with respect to the sums (r, r^2, w r, |r - w|). For sums already on
    the host (the CPU path), where one small op per scalar would cost more than the kernels."""
    count, w, w2, r, r2, wr, abs_diff = sums
    if kind == "absolute":
        return abs_diff / count, (0.0, 0.0, 0.0, 1.0 / count)
    rel_tol = variance_rel_tol(dtype)
    mean_r, mean_w = r / count, w / count
    cov = wr / count - mean_r * mean_w
    var_r = max(r2 / count - mean_r ** 2, 0.0)
    var_w = max(w2 / count - mean_w ** 2, 0.0)
    if not (var_r > rel_tol * r2 / count and var_w > rel_tol * w2 / count):
        return 0.5, (0.0, 0.0, 0.0, 0.0)  # no variance on one side: correlation 0, as pearson_from_sums
    inv_denom = 1.0 / math.sqrt(var_r * var_w)
    rho = cov * inv_denom
    # loss = (1 - rho) / 2; rho = cov / sqrt(var_r var_w); d rho/d var_r = -rho / (2 var_r)
    d_cov, d_var_r = -0.5 * inv_denom, 0.25 * rho / var_r
    d_r = (d_cov * -mean_w + d_var_r * -2.0 * mean_r) / count
    return (1.0 - rho) / 2, (d_r, d_var_r / count, d_cov / count, 0.0)
