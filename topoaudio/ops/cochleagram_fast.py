"""A fast, approximate cochleagram beside the exact one (issue 20): ``cochleagram_fast``.

Same configuration (CochleagramConfig), same output [..., C, frames], differentiable by autograd,
float32 and float64; plain, vectorised PyTorch (no loop over channels, one over a handful of
transform sizes). The exact op (docs/SCIENCE.md section 2) takes, per channel k, a full-length
(T-point) inverse FFT of the one-sided band S_k = X H_k, the magnitude and a 1001-tap windowed-sinc
correlation at stride D. Here:

1. **Baseband subbands.** S_k is nonzero only on its L_k bins [lo_k, lo_k + L_k), so
   z_k(t) = e^{2 pi i lo_k t / T} (1/T) sum_j S_k[lo_k + j] e^{2 pi i j t / T}, and
   |z_k| does not see the shift: M_k >= L_k samples of |z_k| at t = n T / M_k come from one
   length-M_k inverse FFT of the band (zero-padded), exactly.
2. **The envelope's spectrum.** |z_k| is not band-limited (a square root), so M_k is
   `oversample` x L_k rounded up to a fast FFT size; the rfft of the M_k samples, times T / M_k,
   approximates the envelope's DFT E_k[m] for m < M_k / 2 (aliasing is the only error).
3. **Downsampling as a spectral product.** The exact op's envelope is periodic (a length-T
   circular ifft) and its correlation windows all lie inside [0, T) (no padding), so exactly
   frame[f] = (1/T) sum_m E[m] Hw[m] e^{2 pi i m D f / T},  Hw[m] = sum_j h[j] e^{2 pi i m j / T}:
   no edge treatment is needed. With P = T / D an integer (the default: 400), e^{2 pi i m f / P}
   only depends on m mod P, so the bins (weights c_m Hw[m] / M_k, c_m = 2 except 1 at m = 0 and
   at an even M_k's Nyquist bin: the envelope is real) are folded into P bins and one length-P
   inverse FFT per row gives all frames. When D
   does not divide T, a dense [bins, frames] matrix shared by the group's channels does it.
4. Compression as the exact op (clipped slope in the backward).

Channels are grouped by M_k (sizes on a ladder 2^a x {1, 5/4, 3/2, 15/8}); each group is one
gather, one batched ifft, one rfft and one fold. The plan (indices, scaled filters, weights) is
built once per (config, length, oversample, max_env_hz, device, dtype) and cached.
Errors (bench/cochleagram_fast_error.py, NH2015 sounds) are largest where an envelope nearly
vanishes (the square root's kink spreads energy to high envelope frequencies that alias).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .cochlear_filters import CochleagramConfig, check_samples, erb_cosine_filters, sinc_kaiser_taps
from .reference import _ClippedPowerCompression
from .settings import positive_number

# Transform sizes: 2^a times one of these (ratio <= 1.25 between neighbours, 5-smooth).
_LADDER = (1.0, 1.25, 1.5, 1.875)
_MIN_MAGNITUDE = 1e-8  # the exact op's sqrt(max(re^2 + im^2, 1e-16))


def _ladder_size(n: int) -> int:
    """Smallest size >= n of the form 2^a x {1, 5/4, 3/2, 15/8} (an integer, 5-smooth)."""
    best = None
    for factor in _LADDER:
        a = max(0, math.ceil(math.log2(n / factor) - 1e-12))
        while True:
            size = factor * 2 ** a
            if size >= n and size == int(size):
                break
            a += 1
        best = int(size) if best is None else min(best, int(size))
    return best


@dataclass(frozen=True)
class _Group:
    channels: torch.Tensor  # int64 [n]: which channels
    bins: torch.Tensor      # int64 [n * M]: spectrum bin read by each baseband slot, row-major
    filters: torch.Tensor   # real [n, M]: H_k x M / T on the band, 0 on the padding
    size: int               # M
    n_bins: int             # envelope bins used: m = 0 .. n_bins - 1 (<= M // 2 + 1)
    weights: torch.Tensor   # complex [n_bins] (folded path) or [n_bins, frames] (dense path)
    fold: torch.Tensor | None  # int64 [n_bins]: m mod P (folded path), None when the fold is a no-op


@dataclass(frozen=True)
class FastPlan:
    """Everything the fast cochleagram needs for one (config, length, settings, device, dtype)."""
    config: CochleagramConfig
    length: int
    oversample: float
    groups: tuple[_Group, ...]
    order: torch.Tensor    # int64 [C]: position of each channel in the groups' concatenation
    period: int            # P = T / D when D divides T (folded path), else 0 (dense path)
    n_frames: int
    band_bins: int         # sum_k L_k
    sampled_points: int    # sum_k M_k

    @property
    def effective_oversample(self) -> float:
        return self.sampled_points / self.band_bins


def _band_lo_width(filters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each filter's first nonzero bin and the width of its nonzero band (0, 0 when it has none)."""
    lo = np.zeros(len(filters), dtype=np.int64)
    width = np.zeros(len(filters), dtype=np.int64)
    for k, row in enumerate(filters):
        nonzero = np.flatnonzero(row)
        if nonzero.size:
            lo[k], width[k] = nonzero[0], nonzero[-1] + 1 - nonzero[0]
    return lo, width


@functools.lru_cache(maxsize=32)
def _plan_arrays(config: CochleagramConfig, length: int, oversample: float, max_env_hz):
    """The plan in float64 NumPy (device- and dtype-free)."""
    filters = erb_cosine_filters(config, length)
    taps = sinc_kaiser_taps(config)
    n_frames, stride = config.n_frames(length), config.stride
    # Hw[m] = sum_j h[j] e^{+2 pi i m j / T} (the correlation's response on the DFT grid)
    response = np.conj(np.fft.rfft(taps, n=length))
    period = length // stride if length % stride == 0 else 0
    max_bin = length // 2 if max_env_hz is None else int(math.floor(max_env_hz * length / config.sr))
    lo, width = _band_lo_width(filters)
    sizes = np.array([_ladder_size(max(2, math.ceil(oversample * max(int(w), 1)))) for w in width])
    groups = []
    for size in sorted(set(sizes.tolist())):
        channels = np.flatnonzero(sizes == size)
        slots = np.arange(size)
        bins = np.minimum(lo[channels, None] + slots[None, :], filters.shape[1] - 1)
        inside = slots[None, :] < width[channels, None]
        scaled = np.where(inside, filters[channels[:, None], bins], 0.0) * (size / length)
        # envelope bins m = 0 .. n_bins - 1 of the size-M rfft; the envelope is real, so the
        # two-sided sum counts 0 < m < M / 2 twice, m = 0 and an even M's Nyquist bin once
        n_bins = min(max_bin, size // 2) + 1
        m = np.arange(n_bins)
        once = (m == 0) | (2 * m == size)
        weights = np.where(once, 1.0, 2.0) * response[:n_bins] / size
        if period:
            fold = None if n_bins <= period else m % period
        else:
            fold = None
            weights = weights[:, None] * np.exp(2j * np.pi * np.outer(m, np.arange(n_frames))
                                                * stride / length)
        groups.append((channels, bins.reshape(-1), scaled, int(size), int(n_bins), weights, fold))
    order = np.argsort(np.concatenate([g[0] for g in groups]), kind="stable")
    return groups, order, period, n_frames, int(width.sum()), int(sizes.sum())


_PLANS: dict = {}


def fast_plan(config: CochleagramConfig, length: int, oversample: float = 4.0,
              max_env_hz: float | None = None, device="cpu", dtype=torch.float32) -> FastPlan:
    """The cached plan for one configuration, signal length, oversample, device and dtype.
    `max_env_hz`: highest envelope frequency used (None: all below each channel's sampling Nyquist)."""
    oversample = positive_number("oversample", oversample)
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1 (M_k >= L_k samples per band), got {oversample}")
    if max_env_hz is not None:
        max_env_hz = positive_number("max_env_hz", max_env_hz)
    key = (config, length, oversample, max_env_hz, torch.device(device), dtype)
    plan = _PLANS.get(key)
    if plan is None:
        groups, order, period, n_frames, band_bins, points = _plan_arrays(config, length,
                                                                          oversample, max_env_hz)
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        built = tuple(
            _Group(torch.as_tensor(channels, device=device), torch.as_tensor(bins, device=device),
                   torch.as_tensor(scaled, dtype=dtype, device=device), size, n_bins,
                   torch.as_tensor(weights, dtype=complex_dtype, device=device),
                   None if fold is None else torch.as_tensor(fold, device=device))
            for channels, bins, scaled, size, n_bins, weights, fold in groups)
        if len(_PLANS) > 64:
            _PLANS.clear()
        plan = _PLANS[key] = FastPlan(config, length, oversample, built,
                                      torch.as_tensor(order, device=device), period, n_frames,
                                      band_bins, points)
    return plan


def downsampled_envelopes(rows: torch.Tensor, plan: FastPlan) -> torch.Tensor:
    """rows [R, T] (real) -> approximate downsampled (uncompressed) envelopes [R, C, frames]."""
    spectrum = torch.fft.rfft(rows)
    n_rows, parts = rows.shape[0], []
    for group in plan.groups:
        n, size = group.filters.shape
        band = spectrum.index_select(-1, group.bins).view(n_rows, n, size) * group.filters
        # z at t = j T / M; |z| floored at 1e-8 is the exact op's sqrt(max(|z|^2, 1e-16))
        envelope = torch.fft.ifft(band).abs().clamp_min(_MIN_MAGNITUDE)
        spec = torch.fft.rfft(envelope)
        if group.n_bins < spec.shape[-1]:
            spec = spec[..., :group.n_bins]
        if not plan.period:  # dense path: [bins] x [bins, frames]
            parts.append(torch.real(spec @ group.weights))
            continue
        weighted = spec * group.weights
        if group.fold is not None:  # bins m >= P: e^{2 pi i m f / P} depends on m mod P only
            weighted = weighted.new_zeros(n_rows, n, plan.period).index_add(-1, group.fold,
                                                                             weighted)
        elif group.n_bins < plan.period:
            weighted = torch.nn.functional.pad(weighted, (0, plan.period - group.n_bins))
        parts.append(weighted)
    folded = torch.cat(parts, dim=1).index_select(1, plan.order)
    if plan.period:
        return torch.real(torch.fft.ifft(folded, norm="forward"))[..., :plan.n_frames]
    return folded


def cpp_tables(config: CochleagramConfig, length: int, oversample: float, dtype: torch.dtype):
    """What the C++ fast op takes beside the spectrum and filters, from the same plan, once per
    (config, length, oversample, dtype): (bands int64 [C, 2] (lo, width), sizes int64 [C] (M_k),
    response complex [bins] (the window's Hw[m]), max_bin)."""
    key = (config, length, oversample, dtype)
    if key not in _CPP_TABLES:
        groups, *_ = _plan_arrays(config, length, oversample, None)
        bands = np.stack(_band_lo_width(erb_cosine_filters(config, length)), axis=1)
        sizes = np.zeros(len(bands), dtype=np.int64)
        for channels, _, _, size, _, _, _ in groups:
            sizes[channels] = size
        max_bin = length // 2
        response = np.conj(np.fft.rfft(sinc_kaiser_taps(config), n=length))
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        _CPP_TABLES[key] = (torch.from_numpy(bands), torch.from_numpy(sizes),
                            torch.tensor(response[:min(max_bin, int(sizes.max()) // 2) + 1],
                                         dtype=complex_dtype), max_bin)
    return _CPP_TABLES[key]


_CPP_TABLES: dict = {}


@dataclass(frozen=True)
class TritonTables:
    """What the Triton fast kernels (kernels/cochleagram_fast.py) take beside the spectrum and the
    filters, from the same plan: the channel table (its columns are described there), the packed
    buffers' groups and sizes, per-channel scales, the window's response and, per spectrum bin,
    the channels whose band holds it (for the deterministic gradient gather)."""
    table: torch.Tensor      # int64 [C, 10]
    scale: torch.Tensor      # real [C]: M_k / T (the baseband filter scale)
    inv_size: torch.Tensor   # real [C]: 1 / M_k
    response: torch.Tensor   # complex [max n_bins]: Hw[m]
    cover: torch.Tensor      # int64 [bins, max cover]: channels holding each bin, -1 padded
    groups: tuple            # (n channels, M, subband offset, half-spectrum offset) per group
    total_band: int          # sum_k M_k
    total_spec: int          # sum_k (M_k // 2 + 1)
    max_size: int
    max_folds: int           # ceil(max n_bins / P)


def triton_tables(config: CochleagramConfig, length: int, oversample: float, device,
                  dtype: torch.dtype) -> TritonTables:
    """The cached TritonTables for one (config, length, oversample, device, dtype); the length
    must be a multiple of the stride (the fold onto P = T / D frame bins)."""
    key = (config, length, oversample, torch.device(device), dtype)
    if key not in _TRITON_TABLES:
        groups, _, period, *_ = _plan_arrays(config, length, oversample, None)
        if not period:
            raise ValueError(f"the fast Triton kernels need the stride ({config.stride} samples) "
                             f"to divide the clip length, got {length}")
        filters = erb_cosine_filters(config, length)
        lo, width = _band_lo_width(filters)
        table = np.zeros((len(lo), 10), dtype=np.int64)
        packed, band_offset, spec_offset = [], 0, 0
        for channels, _, _, size, n_bins, _, _ in groups:
            n = len(channels)
            local = np.arange(n)
            table[channels] = np.stack([
                lo[channels], width[channels], np.full(n, size),
                np.full(n, band_offset), np.full(n, n * size), local * size,
                np.full(n, spec_offset), np.full(n, n * (size // 2 + 1)), local * (size // 2 + 1),
                np.full(n, n_bins)], axis=1)
            packed.append((n, int(size), band_offset, spec_offset))
            band_offset += n * size
            spec_offset += n * (size // 2 + 1)
        holders = [np.flatnonzero((lo <= b) & (b < lo + width)) for b in range(filters.shape[1])]
        cover = np.full((filters.shape[1], max(len(h) for h in holders)), -1, dtype=np.int64)
        for b, h in enumerate(holders):
            cover[b, :len(h)] = h
        max_bins = int(table[:, 9].max())
        response = np.conj(np.fft.rfft(sinc_kaiser_taps(config), n=length))[:max_bins]
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        sizes = table[:, 2].astype(np.float64)
        if len(_TRITON_TABLES) > 32:
            _TRITON_TABLES.clear()
        _TRITON_TABLES[key] = TritonTables(
            torch.as_tensor(table, device=device), torch.as_tensor(sizes / length, dtype=dtype,
                                                                    device=device),
            torch.as_tensor(1.0 / sizes, dtype=dtype, device=device),
            torch.as_tensor(response, dtype=complex_dtype, device=device),
            torch.as_tensor(cover, device=device), tuple(packed), band_offset, spec_offset,
            int(table[:, 2].max()), -(-max_bins // period))
    return _TRITON_TABLES[key]


_TRITON_TABLES: dict = {}


def cochleagram_fast(waveform: torch.Tensor, *, oversample: float = 4.0,
                     max_env_hz: float | None = None, sr: int = 20000, n: int = 50,
                     low_lim: float = 50.0, high_lim: float = 10000.0, sample_factor: int = 4,
                     env_sr: int = 200, window_size: int = 1001, compression: str | None = "power",
                     power: float = 0.3, offset: float = 1e-8,
                     clip_value: float = 5.0) -> torch.Tensor:
    """Approximate cochleagram of `waveform` [..., T] -> [..., C, frames] (the exact op's shape and
    settings; see the module docstring) in plain PyTorch, differentiable by autograd: the torch
    backend of ``topoaudio.ops.cochleagram(..., mode="fast")``, which users call instead.
    ``oversample`` (>= 1) trades speed for accuracy."""
    config = CochleagramConfig(sr, n, low_lim, high_lim, sample_factor, env_sr, window_size,
                               compression, power, offset, clip_value)
    return _run(waveform, config, oversample, max_env_hz)


def _run(waveform, config, oversample, max_env_hz):
    config.check_waveform(waveform)
    if waveform.dtype in (torch.float16, torch.bfloat16):
        waveform = waveform.float()
    check_samples(waveform)
    batch_shape, length = waveform.shape[:-1], waveform.shape[-1]
    plan = fast_plan(config, length, oversample, max_env_hz, waveform.device, waveform.dtype)
    envelopes = downsampled_envelopes(waveform.reshape(-1, length), plan)
    out = envelopes if config.compression is None else _ClippedPowerCompression.apply(envelopes,
                                                                                        config)
    return out.reshape(*batch_shape, *out.shape[1:])
