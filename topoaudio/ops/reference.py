"""Plain-PyTorch references, written step by step from docs/SCIENCE.md.

They are slow and memory hungry on purpose: every intermediate is a full tensor, so each line can
be read against the definition. Tests and benchmarks compare the fused ops against these, and the
dispatcher falls back to them when nothing faster can run.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .cochlear_filters import CochleagramConfig, check_samples, filters_on, power_compression_grad
from .spatial_common import (
    check_spatial_args,
    compute_dtype,
    live_units,
    relative_positions,
    scaled_per_unit,
    variance_rel_tol,
)


class _ClippedPowerCompression(torch.autograd.Function):
    """y = (max(e, 0) + offset) ** power; backward uses the clipped derivative."""

    @staticmethod
    def forward(ctx, envelope, config):
        ctx.save_for_backward(envelope)
        ctx.config = config
        return (envelope.clamp_min(0) + config.offset).pow(config.power)

    @staticmethod
    def backward(ctx, grad_output):
        (envelope,) = ctx.saved_tensors
        return grad_output * power_compression_grad(envelope, ctx.config), None


def cochleagram(waveform: torch.Tensor, *, sr: int = 20000, n: int = 50, low_lim: float = 50.0,
                high_lim: float = 10000.0, sample_factor: int = 4, env_sr: int = 200,
                window_size: int = 1001, compression: str | None = "power", power: float = 0.3,
                offset: float = 1e-8, clip_value: float = 5.0) -> torch.Tensor:
    """Reference cochleagram: waveform [..., T] -> [..., C, frames] (C = 211, frames = 390 for 2 s)."""
    config = CochleagramConfig(sr, n, low_lim, high_lim, sample_factor, env_sr, window_size,
                               compression, power, offset, clip_value)
    config.check_waveform(waveform)
    if waveform.dtype in (torch.float16, torch.bfloat16):
        waveform = waveform.float()
    check_samples(waveform)
    length = waveform.shape[-1]
    filters, taps = filters_on(config, length, waveform.device, waveform.dtype)

    # 1-2. subbands in the frequency domain
    spectrum = torch.fft.rfft(waveform)
    subbands = spectrum.unsqueeze(-2) * filters
    # 3. one-sided spectrum padded with zeros to length T (not doubled), complex ifft, magnitude
    padding = subbands.new_zeros(*subbands.shape[:-1], length - subbands.shape[-1])
    analytic = torch.fft.ifft(torch.cat([subbands, padding], dim=-1))
    envelope = torch.sqrt(torch.clamp(analytic.real ** 2 + analytic.imag ** 2, min=1e-16))
    # 4. windowed-sinc lowpass, stride sr / env_sr, no padding
    batch_shape = envelope.shape[:-1]
    downsampled = F.conv1d(envelope.reshape(-1, 1, length), taps.view(1, 1, -1), stride=config.stride)
    downsampled = downsampled.reshape(*batch_shape, -1)
    if compression is None:
        return downsampled
    # 5. compression with the clipped gradient
    return _ClippedPowerCompression.apply(downsampled, config)


def _pearson(a: torch.Tensor, b: torch.Tensor, rel_tol: float) -> torch.Tensor:
    """Pearson correlation of two vectors; 0 when either has no variance (see spatial_common).
    A variance below rel_tol x the mean square is rounding noise of values that are all equal
    (with two samples per unit every r is +-1): it counts as none, as in the fused ops."""
    mean_square_a, mean_square_b = (a * a).mean(), (b * b).mean()
    a, b = a - a.mean(), b - b.mean()
    variance_a, variance_b = (a * a).mean(), (b * b).mean()
    variance_product = variance_a * variance_b
    defined = (variance_a > rel_tol * mean_square_a) & (variance_b > rel_tol * mean_square_b)
    # sqrt only where defined: its infinite slope at 0 would turn the zero gradient into NaN
    denom = torch.sqrt(torch.where(defined, variance_product, torch.ones_like(variance_product)))
    return torch.where(defined, (a * b).mean() / denom, torch.zeros_like(denom))


def spatial_loss(features: torch.Tensor, positions: torch.Tensor, *, kind: str = "relative",
                 radius: float | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Reference spatial-correlation loss over all unit pairs i < j (or those within `radius` mm).

    features [B, N] (responses of N units over a batch), positions [N, 2] (mm) -> scalar.
    kind="relative": (1 - corr_P(r, w)) / 2 (TDANN); kind="absolute": mean_P |r - w|; with
    r_ij the Pearson correlation over the batch and w_ij = 1 / (1 + d_ij). Builds N x N matrices.
    """
    kind, radius, eps = check_spatial_args(features, positions, kind, radius, eps)
    # each unit scaled exactly into [-1, 1] first, so squares cannot overflow or underflow
    x = scaled_per_unit(features.to(compute_dtype(features)))
    batch, n_units = x.shape
    # correlations over the batch; zero-variance units (the shared rule) correlate 0 with everything
    mean = x.mean(dim=0)
    centred = x - mean
    norm = centred.norm(dim=0)
    live = live_units(norm, x, eps)
    z = torch.where(live, centred / torch.where(live, norm, torch.ones_like(norm)), 0.0)
    r = (z.t() @ z).clamp(-1.0, 1.0)
    # distances and the target similarity
    p = relative_positions(positions, x.dtype)  # distances do not depend on where the sheet sits
    d = torch.cdist(p, p, compute_mode="donot_use_mm_for_euclid_dist")
    w = 1.0 / (1.0 + d)
    pairs = torch.triu(torch.ones(n_units, n_units, dtype=torch.bool, device=x.device), diagonal=1)
    if radius is not None:
        pairs &= d <= radius
        if not bool(pairs.any()):
            raise ValueError(f"no pair of units lies within radius {radius} mm")
    r_pairs, w_pairs = r[pairs].double(), w[pairs].double()
    if kind == "absolute":
        return (r_pairs - w_pairs).abs().mean().to(x.dtype)
    # r and w were computed in x.dtype: the fused ops' rule for "no variance" applies
    return ((1 - _pearson(r_pairs, w_pairs, variance_rel_tol(x.dtype))) / 2).to(x.dtype)


def batch_norm_relu_pool(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         running_mean: torch.Tensor | None = None,
                         running_var: torch.Tensor | None = None, *, training: bool = True,
                         momentum: float = 0.1, eps: float = 1e-5, pool: bool = False) -> torch.Tensor:
    """relu(batch_norm(x)), then a 2x2 max-pool of stride 2 when `pool` (the fused op's contract)."""
    out = F.relu(F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps))
    return F.max_pool2d(out, 2) if pool else out
