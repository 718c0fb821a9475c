"""Triton kernels of the fast cochleagram (topoaudio/ops/cochleagram_fast.py has the algorithm).

The transforms stay with cuFFT (torch.fft): Triton has no FFT. What the torch backend does per
group of channels (a gather, a multiply, |z|, a weighting, a fold: about eight launches for each of
~22 groups) is here three launches over all channels at once, forward, and three backward:

    forward:   _gather_bands  ->  ifft per group  ->  _magnitude  ->  rfft per group  ->  _weight_fold
    backward:  _unfold_weight ->  ifft per group  ->  _magnitude_backward  ->  fft per group  ->
               _gather_band_gradients

Layout. The per-channel buffers (subbands z, envelopes, their spectra) are packed group by group,
each group [rows, n_channels, M] contiguous, so one cuFFT call transforms a whole group in place of
a view. A channel's row-0 start in a buffer of `rows` rows is rows * group_offset + local_offset,
and a row adds rows_stride = n_channels * M. Complex numbers are float pairs (re, im).

The channel table is int64 [C, 10]: lo, width, M, then (group_offset, row_stride, local_offset)
for the subband buffer and again for the half-spectrum buffer (M // 2 + 1 bins), then n_bins (the
envelope bins used). The kernels know nothing of topoaudio: tensors and sizes in, tensors out.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

TABLE_COLUMNS = 10  # the kernels write the 10 as a literal: a jitted kernel reads constexpr globals only
# |z| floored at 1e-8, as the exact op's sqrt(max(|z|^2, 1e-16))
MIN_POWER = tl.constexpr(1e-16)
# The CPU interpreter pays per program, not per element: give it big tiles.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
BLOCK = 4096 if _INTERPRETED else 256         # subband slots (or half-spectrum bins) per program
BLOCK_P = 512 if _INTERPRETED else 128        # folded bins per program
BLOCK_FOLDS = 32 if _INTERPRETED else 2       # folds per step of the fold's loop
BLOCK_BINS = 4096 if _INTERPRETED else 256    # spectrum bins per program of the gradient gather


@triton.jit
def _gather_bands_kernel(spec_ptr, filt_ptr, scale_ptr, table_ptr, band_ptr, n_rows, n_bins_in,
                         BLOCK: tl.constexpr):
    """band[k, row, j] = spectrum[row, lo_k + j] * H_k[lo_k + j] * M_k / T for j < width_k, 0 up
    to M_k: the channel's subband at baseband, ready for a length-M_k inverse FFT."""
    k = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    t = table_ptr + k * 10
    lo = tl.load(t)
    width = tl.load(t + 1)
    size = tl.load(t + 2)
    start = n_rows * tl.load(t + 3) + row * tl.load(t + 4) + tl.load(t + 5)
    j = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    in_band = j < width
    b = lo + j
    s_re = tl.load(spec_ptr + (row * n_bins_in + b) * 2, mask=in_band, other=0.0)
    s_im = tl.load(spec_ptr + (row * n_bins_in + b) * 2 + 1, mask=in_band, other=0.0)
    f = tl.load(filt_ptr + k * n_bins_in + b, mask=in_band, other=0.0) * tl.load(scale_ptr + k)
    out = band_ptr + (start + j) * 2
    tl.store(out, s_re * f, mask=j < size)
    tl.store(out + 1, s_im * f, mask=j < size)


@triton.jit
def _magnitude_kernel(z_ptr, env_ptr, n, BLOCK: tl.constexpr):
    """env = max(|z|, 1e-8) over a whole packed buffer."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = i < n
    re = tl.load(z_ptr + 2 * i, mask=inside, other=1.0)
    im = tl.load(z_ptr + 2 * i + 1, mask=inside, other=0.0)
    power = tl.maximum(re * re + im * im, MIN_POWER)
    tl.store(env_ptr + i, tl.sqrt(power), mask=inside)


@triton.jit
def _envelope_spectrum_channel(table_ptr, inv_size_ptr, n_rows):
    """This program's channel k and row, and from the table: M_k, where the row's half spectrum
    starts in its packed buffer, n_bins_k and 1 / M_k (both spectrum kernels start here)."""
    k = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    t = table_ptr + k * 10
    start = n_rows * tl.load(t + 6) + row * tl.load(t + 7) + tl.load(t + 8)
    return k, row, tl.load(t + 2), start, tl.load(t + 9), tl.load(inv_size_ptr + k)


@triton.jit
def _window_weight(response_ptr, m, size, inv_size, mask):
    """c_m Hw[m] / M as (re, im): the weight of envelope bin m (c_m = 2, but 1 at m = 0 and at an
    even M's Nyquist bin: the envelope is real)."""
    h_re = tl.load(response_ptr + 2 * m, mask=mask, other=0.0)
    h_im = tl.load(response_ptr + 2 * m + 1, mask=mask, other=0.0)
    c = tl.where((m == 0) | (2 * m == size), 1.0, 2.0) * inv_size
    return c * h_re, c * h_im


@triton.jit
def _weight_fold_kernel(spec_ptr, response_ptr, inv_size_ptr, table_ptr, fold_ptr, n_rows,
                        n_channels, period, max_folds, BLOCK_P: tl.constexpr,
                        BLOCK_FOLDS: tl.constexpr):
    """folded[row, k, p] = sum over m = p, p + P, ... < n_bins_k of E_k[m] c_m Hw[m] / M_k: the
    envelope's spectrum times the window's response (_window_weight), folded onto the P frame
    bins. A step takes BLOCK_FOLDS folds
    [BLOCK_FOLDS, BLOCK_P] at once and sums them."""
    k, row, size, start, n_bins, inv_size = _envelope_spectrum_channel(table_ptr, inv_size_ptr,
                                                                        n_rows)
    p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    acc_re = tl.zeros([BLOCK_P], dtype=inv_size_ptr.dtype.element_ty)
    acc_im = tl.zeros([BLOCK_P], dtype=inv_size_ptr.dtype.element_ty)
    for first in range(0, max_folds, BLOCK_FOLDS):
        m = p[None, :] + (first + tl.arange(0, BLOCK_FOLDS))[:, None] * period
        ok = (p[None, :] < period) & (m < n_bins)
        s_re = tl.load(spec_ptr + (start + m) * 2, mask=ok, other=0.0)
        s_im = tl.load(spec_ptr + (start + m) * 2 + 1, mask=ok, other=0.0)
        w_re, w_im = _window_weight(response_ptr, m, size, inv_size, ok)
        acc_re += tl.sum(s_re * w_re - s_im * w_im, axis=0)
        acc_im += tl.sum(s_re * w_im + s_im * w_re, axis=0)
    out = fold_ptr + ((row * n_channels + k) * period + p) * 2
    tl.store(out, acc_re, mask=p < period)
    tl.store(out + 1, acc_im, mask=p < period)


@triton.jit
def _unfold_weight_kernel(grad_fold_ptr, response_ptr, inv_size_ptr, table_ptr, grad_spec_ptr,
                          n_rows, n_channels, period, BLOCK: tl.constexpr):
    """The adjoint of _weight_fold: grad E_k[m] = grad folded[m mod P] conj(c_m Hw[m] / M_k) for
    m < n_bins_k, 0 for the rest of the half spectrum."""
    k, row, size, start, n_bins, inv_size = _envelope_spectrum_channel(table_ptr, inv_size_ptr,
                                                                        n_rows)
    m = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    used = m < n_bins
    src = grad_fold_ptr + ((row * n_channels + k) * period + m % period) * 2
    g_re = tl.load(src, mask=used, other=0.0)
    g_im = tl.load(src + 1, mask=used, other=0.0)
    w_re, w_im = _window_weight(response_ptr, m, size, inv_size, used)
    out = grad_spec_ptr + (start + m) * 2
    half = m < size // 2 + 1
    tl.store(out, g_re * w_re + g_im * w_im, mask=half)
    tl.store(out + 1, g_im * w_re - g_re * w_im, mask=half)


@triton.jit
def _magnitude_backward_kernel(z_ptr, grad_env_ptr, grad_z_ptr, n, BLOCK: tl.constexpr):
    """grad z = Re(grad env) z / |z| where |z| > 1e-8 (the floor passes nothing back); grad env
    arrives complex (the inverse FFT that is the rfft's adjoint), only its real part counts."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = i < n
    re = tl.load(z_ptr + 2 * i, mask=inside, other=0.0)
    im = tl.load(z_ptr + 2 * i + 1, mask=inside, other=0.0)
    g = tl.load(grad_env_ptr + 2 * i, mask=inside, other=0.0)
    power = re * re + im * im
    scale = tl.where(power > MIN_POWER, g / tl.sqrt(tl.maximum(power, MIN_POWER)), 0.0)
    tl.store(grad_z_ptr + 2 * i, scale * re, mask=inside)
    tl.store(grad_z_ptr + 2 * i + 1, scale * im, mask=inside)


@triton.jit
def _gather_band_gradients_kernel(grad_band_ptr, filt_ptr, scale_ptr, table_ptr, cover_ptr,
                                  grad_spec_ptr, n_rows, n_bins_in, MAX_COVER: tl.constexpr,
                                  BLOCK_BINS: tl.constexpr):
    """grad spectrum[row, b] = sum over the channels k whose band holds b of H_k[b] M_k / T times
    grad band_k[b - lo_k]: the adjoint of _gather_bands, as a gather (cover[b] lists the channels,
    -1 padded), so every bin is written once and the sum has a fixed order (deterministic)."""
    row = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1) * BLOCK_BINS + tl.arange(0, BLOCK_BINS)
    inside = b < n_bins_in
    acc_re = tl.zeros([BLOCK_BINS], dtype=scale_ptr.dtype.element_ty)
    acc_im = tl.zeros([BLOCK_BINS], dtype=scale_ptr.dtype.element_ty)
    for c in range(0, MAX_COVER):
        k = tl.load(cover_ptr + b * MAX_COVER + c, mask=inside, other=-1)
        ok = k >= 0
        ks = tl.where(ok, k, 0)
        t = table_ptr + ks * 10
        lo = tl.load(t, mask=ok, other=0)
        start = (n_rows * tl.load(t + 3, mask=ok, other=0) + row * tl.load(t + 4, mask=ok, other=0)
                 + tl.load(t + 5, mask=ok, other=0))
        f = tl.load(filt_ptr + ks * n_bins_in + b, mask=ok, other=0.0) * tl.load(scale_ptr + ks,
                                                                               mask=ok, other=0.0)
        src = grad_band_ptr + (start + b - lo) * 2
        acc_re += f * tl.load(src, mask=ok, other=0.0)
        acc_im += f * tl.load(src + 1, mask=ok, other=0.0)
    out = grad_spec_ptr + (row * n_bins_in + b) * 2
    tl.store(out, acc_re, mask=inside)
    tl.store(out + 1, acc_im, mask=inside)


def _per_group(buffer: torch.Tensor, rows: int, groups, spectrum: bool):
    """Views [rows, n, M] (or [rows, n, M // 2 + 1]) of a packed complex buffer, one per group."""
    views = []
    for n, size, band_offset, spec_offset in groups:
        length = size // 2 + 1 if spectrum else size
        start = rows * (spec_offset if spectrum else band_offset)
        views.append(buffer[start:start + rows * n * length].view(rows, n, length))
    return views


def subbands(spectrum: torch.Tensor, filters: torch.Tensor, scale: torch.Tensor,
             table: torch.Tensor, groups, total_band: int, max_size: int) -> torch.Tensor:
    """spectrum complex [rows, bins] -> the packed baseband subbands z (complex [rows * sum M])."""
    rows, n_bins_in = spectrum.shape
    band = torch.empty(rows * total_band, dtype=spectrum.dtype, device=spectrum.device)
    grid = (table.shape[0], rows, triton.cdiv(max_size, BLOCK))
    _gather_bands_kernel[grid](torch.view_as_real(spectrum), filters, scale, table,
                               torch.view_as_real(band), rows, n_bins_in, BLOCK=BLOCK)
    z = torch.empty_like(band)
    for source, target in zip(_per_group(band, rows, groups, False),
                              _per_group(z, rows, groups, False), strict=True):
        torch.fft.ifft(source, out=target)
    return z


def fast_forward(spectrum: torch.Tensor, filters: torch.Tensor, scale: torch.Tensor,
                 inv_size: torch.Tensor, response: torch.Tensor, table: torch.Tensor, groups,
                 total_band: int, total_spec: int, max_size: int, max_folds: int, period: int,
                 n_frames: int) -> torch.Tensor:
    """spectrum complex [rows, bins] (rfft of the rows) -> downsampled envelopes [rows, C, frames]."""
    rows = spectrum.shape[0]
    n_channels = table.shape[0]
    z = subbands(spectrum, filters, scale, table, groups, total_band, max_size)
    envelope = torch.empty(rows * total_band, dtype=filters.dtype, device=filters.device)
    _magnitude_kernel[(triton.cdiv(z.numel(), BLOCK),)](torch.view_as_real(z), envelope,
                                                         z.numel(), BLOCK=BLOCK)
    env_spec = torch.empty(rows * total_spec, dtype=spectrum.dtype, device=spectrum.device)
    for source, target in zip(_per_group(envelope, rows, groups, False),
                              _per_group(env_spec, rows, groups, True), strict=True):
        torch.fft.rfft(source, out=target)
    folded = torch.empty(rows, n_channels, period, dtype=spectrum.dtype, device=spectrum.device)
    grid = (n_channels, rows, triton.cdiv(period, BLOCK_P))
    _weight_fold_kernel[grid](torch.view_as_real(env_spec), torch.view_as_real(response), inv_size,
                              table, torch.view_as_real(folded), rows, n_channels, period,
                              max_folds, BLOCK_P=BLOCK_P, BLOCK_FOLDS=BLOCK_FOLDS)
    return torch.real(torch.fft.ifft(folded, norm="forward"))[..., :n_frames].contiguous()


def fast_backward(grad_envelope: torch.Tensor, spectrum: torch.Tensor, filters: torch.Tensor,
                  scale: torch.Tensor, inv_size: torch.Tensor, response: torch.Tensor,
                  table: torch.Tensor, cover: torch.Tensor, groups, total_band: int,
                  total_spec: int, max_size: int, period: int) -> torch.Tensor:
    """grad envelopes [rows, C, frames] -> grad spectrum complex [rows, bins] (of a real loss)."""
    rows, n_bins_in = spectrum.shape
    n_channels, n_frames = table.shape[0], grad_envelope.shape[-1]
    # Re(ifft(., norm="forward")) [:frames]: its adjoint is an unnormalised FFT of the padded grad
    padded = torch.nn.functional.pad(grad_envelope.to(filters.dtype), (0, period - n_frames))
    grad_fold = torch.fft.fft(padded).contiguous()
    grad_spec = torch.empty(rows * total_spec, dtype=spectrum.dtype, device=spectrum.device)
    grid = (n_channels, rows, triton.cdiv(max_size // 2 + 1, BLOCK))
    _unfold_weight_kernel[grid](torch.view_as_real(grad_fold), torch.view_as_real(response),
                                inv_size, table, torch.view_as_real(grad_spec), rows, n_channels,
                                period, BLOCK=BLOCK)
    # rfft's adjoint: grad env[t] = Re sum_m G[m] e^{2 pi i m t / M}
    grad_env = torch.empty(rows * total_band, dtype=spectrum.dtype, device=spectrum.device)
    for source, target, (_, size, _, _) in zip(_per_group(grad_spec, rows, groups, True),
                                               _per_group(grad_env, rows, groups, False), groups,
                                               strict=True):
        torch.fft.ifft(source, n=size, norm="forward", out=target)
    z = subbands(spectrum, filters, scale, table, groups, total_band, max_size)  # recomputed
    grad_z = torch.empty_like(z)
    _magnitude_backward_kernel[(triton.cdiv(z.numel(), BLOCK),)](
        torch.view_as_real(z), torch.view_as_real(grad_env), torch.view_as_real(grad_z), z.numel(),
        BLOCK=BLOCK)
    # ifft's adjoint (1/M sum e^{+}): fft / M
    grad_band = grad_env  # reused: grad_env is spent
    for source, target in zip(_per_group(grad_z, rows, groups, False),
                              _per_group(grad_band, rows, groups, False), strict=True):
        torch.fft.fft(source, norm="forward", out=target)
    grad_spectrum = torch.empty_like(spectrum)
    grid = (rows, triton.cdiv(n_bins_in, BLOCK_BINS))
    _gather_band_gradients_kernel[grid](torch.view_as_real(grad_band), filters, scale, table,
                                        cover, torch.view_as_real(grad_spectrum), rows, n_bins_in,
                                        MAX_COVER=cover.shape[1], BLOCK_BINS=BLOCK_BINS)
    return grad_spectrum
