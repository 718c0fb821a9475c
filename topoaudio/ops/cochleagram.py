"""The fused, differentiable cochleagram op: ``topoaudio.ops.cochleagram`` and ``Cochleagram``.

Algorithm (same numbers as topoaudio.ops.reference.cochleagram, never its memory):
stage A, per chunk of (clip, channel) rows: the one-sided subband spectrum is written only on the
filter's band of bins, then torch.fft.ifft gives the analytic subband; stage B, a fused kernel
(C++, CUDA or Triton) takes its magnitude, downsamples with the windowed sinc and compresses, so the
full-rate envelope of the whole batch never exists. The backward recomputes stage A chunk by chunk
and accumulates the gradient of the spectrum, so memory stays O(chunk + B T).
The cpp backend runs stages A and B together in C++ (one parallel region per call, blocks of
(clip, 8 channels) taken dynamically by the threads), so a thread slowed by another process does
not hold back a statically split FFT (issue 10); the other backends loop over chunks here.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from . import cochleagram_fast, cochleagram_torch, dispatch
from . import reference as _reference
from .cochlear_filters import (
    CochleagramConfig,
    channel_frequencies,
    check_samples,
    erb_cosine_filters,
    filters_on,
    frame_times,
    power_compression_grad,
)
from .settings import (
    backend_name,
    cochleagram_mode,
    cochleagram_rate,
    pad_factor_setting,
    positive_integer,
)
from .transforms import refuse_double_backward, refuse_functorch

OP_NAME = "cochleagram"
FAST_OP_NAME = "cochleagram_fast"  # the fast mode's backends (dispatch._OP_BACKENDS)
# Rows (clip x channel) per chunk: bounds working memory at ~2 x rows x T complex values.
_CHUNK_ROWS = {"cpu": 32, "cuda": 2048}


# ---------------------------------------------------------------------------------------------
# Stage B of the chunked backends (cuda, triton, torch; cpp runs the whole op in C++); each maps
# analytic [rows, T, 2] to (out, envelope) and back (contract: topoaudio/ops/cochleagram_torch.py).

FUSED_BACKENDS = ("cuda", "triton", "cpp", "torch")


def _stage_b(backend: str):
    """Stage B of the chunked path. The cpp backend has none: it runs the whole op in C++."""
    if backend == "torch":
        return (cochleagram_torch.envelope_downsample_forward,
                cochleagram_torch.envelope_downsample_backward)
    if backend == "cuda":
        ext = dispatch.extension()
        return ext.envelope_downsample_forward_cuda, ext.envelope_downsample_backward_cuda
    if backend == "triton":
        from topoaudio.kernels import cochleagram as triton_kernels
        return triton_kernels.envelope_downsample_forward, triton_kernels.envelope_downsample_backward
    raise ValueError(f"no fused cochleagram stage for backend {backend!r}")


# ---------------------------------------------------------------------------------------------
# Stage A: chunking and the spectra.

def _chunks(n_rows: int, n_channels: int, bands: list[int], device: torch.device):
    """Yield (row slice, channel slice, lo, hi): [lo, hi) covers every nonzero bin of the chunk."""
    budget = _CHUNK_ROWS.get(device.type, 64)
    rows_per = min(n_rows, budget)
    channels_per = max(1, min(n_channels, budget // rows_per))
    for c0 in range(0, n_channels, channels_per):
        c1 = min(n_channels, c0 + channels_per)
        lo = min(bands[2 * c] for c in range(c0, c1))
        hi = max(bands[2 * c + 1] for c in range(c0, c1))
        for r0 in range(0, n_rows, rows_per):
            yield slice(r0, min(n_rows, r0 + rows_per)), slice(c0, c1), lo, hi


def _analytic_subbands(spectrum, filters, lo, hi, length):
    """Complex analytic subbands [r, c, T]: the one-sided band, zero elsewhere, inverse FFT."""
    padded = spectrum.new_zeros(spectrum.shape[0], filters.shape[0], length)
    if hi > lo:
        padded[:, :, lo:hi] = spectrum[:, None, lo:hi] * filters[None, :, lo:hi]
    return torch.fft.ifft(padded)


def _rfft_adjoint(grad_spectrum: torch.Tensor, length: int) -> torch.Tensor:
    """Gradient w.r.t. x of a real loss through X = rfft(x), given its gradient w.r.t. X.
    grad x[t] = Re sum_m G[m] e^{2 pi i m t / T}; irfft doubles interior bins, so halve them."""
    interior_end = grad_spectrum.shape[-1] - (1 if length % 2 == 0 else 0)
    scaled = grad_spectrum.clone()
    scaled[..., 1:interior_end] *= 0.5
    return torch.fft.irfft(scaled, n=length, norm="forward")


def _band_extents(filters: np.ndarray) -> list[int]:
    extents = []
    for row in filters:
        nonzero = np.flatnonzero(row)
        extents += [int(nonzero[0]), int(nonzero[-1]) + 1] if nonzero.size else [0, 0]
    return extents


# ---------------------------------------------------------------------------------------------
# The registered ops.

# The op's scalar arguments are the configuration itself and the backend the caller resolved
# (a plain string in the graph, saved for the backward): its implementation fetches the cached
# filters at run time, which keeps torch.compile graphs free of NumPy.
def _config_of(sr, n, low_lim, high_lim, sample_factor, env_sr, window_size, compress, power,
               offset, clip_value) -> CochleagramConfig:
    return CochleagramConfig(sr, n, low_lim, high_lim, sample_factor, env_sr, window_size,
                             "power" if compress else None, power, offset, clip_value)


def _prepare(waveform, config, backend):
    """(filters, taps, bands) for a call that runs on `backend`: a name the caller resolved once
    (cochleagram() does, and the backward reuses it), never "auto", so forward and backward run on
    the same backend whatever use_backend / TOPOAUDIO_BACKEND / the thread say at backward time."""
    if backend not in FUSED_BACKENDS:
        raise ValueError(f"topoaudio::cochleagram runs one of the fused backends {FUSED_BACKENDS}, "
                         f"got {backend!r}; call topoaudio.ops.cochleagram to choose automatically "
                         "or to run the reference")
    dispatch.choose(OP_NAME, waveform.device, backend)  # can it run here? and say that it ran
    length = waveform.shape[-1]
    filters, taps = filters_on(config, length, waveform.device, waveform.dtype)
    return filters, taps, _bands(config, length)


@torch.library.custom_op("topoaudio::cochleagram", mutates_args=())
def _cochleagram_op(waveform: torch.Tensor, sr: int, n: int, low_lim: float, high_lim: float,
                    sample_factor: int, env_sr: int, window_size: int, compress: bool, power: float,
                    offset: float, clip_value: float, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """waveform [rows, T] -> (cochleagram [rows, C, frames], downsampled envelope [rows, C, frames]).
    `backend` is a resolved fused backend (see _prepare); the backward runs on the same one."""
    check_samples(waveform)
    config = _config_of(sr, n, low_lim, high_lim, sample_factor, env_sr, window_size, compress,
                        power, offset, clip_value)
    filters, taps, bands = _prepare(waveform, config, backend)
    n_rows, length = waveform.shape
    n_channels, n_frames, stride = filters.shape[0], config.n_frames(length), config.stride
    spectrum = torch.fft.rfft(waveform)
    if backend == "cpp":
        out, envelope = dispatch.extension().cochleagram_forward_cpu(
            spectrum, filters, _band_tensor(config, length), taps, length, stride, n_frames,
            power, offset, compress)
        return out, envelope
    forward, _ = _stage_b(backend)
    out = waveform.new_empty(n_rows, n_channels, n_frames)
    envelope = waveform.new_empty(n_rows, n_channels, n_frames)
    for rows, channels, lo, hi in _chunks(n_rows, n_channels, bands, waveform.device):
        analytic = _analytic_subbands(spectrum[rows], filters[channels], lo, hi, length)
        shape = analytic.shape
        chunk_out, chunk_env = forward(torch.view_as_real(analytic).reshape(-1, length, 2), taps,
                                       stride, n_frames, power, offset, compress)
        out[rows, channels] = chunk_out.view(shape[0], shape[1], n_frames)
        envelope[rows, channels] = chunk_env.view(shape[0], shape[1], n_frames)
    return out, envelope


@_cochleagram_op.register_fake
def _(waveform, sr, n, low_lim, high_lim, sample_factor, env_sr, window_size, compress, power,
      offset, clip_value, backend):
    config = _config_of(sr, n, low_lim, high_lim, sample_factor, env_sr, window_size, compress,
                        power, offset, clip_value)
    shape = (waveform.shape[0], config.n_channels, config.n_frames(waveform.shape[1]))
    return waveform.new_empty(shape), waveform.new_empty(shape)


@torch.library.custom_op("topoaudio::cochleagram_backward", mutates_args=())
def _cochleagram_backward_op(grad_envelope: torch.Tensor, waveform: torch.Tensor, sr: int, n: int,
                             low_lim: float, high_lim: float, sample_factor: int, env_sr: int,
                             window_size: int, backend: str) -> torch.Tensor:
    """Gradient w.r.t. waveform [rows, T] given the gradient w.r.t. the downsampled envelope."""
    config = _config_of(sr, n, low_lim, high_lim, sample_factor, env_sr, window_size, False, 0.3,
                        1e-8, 5.0)
    filters, taps, bands = _prepare(waveform, config, backend)
    n_rows, length = waveform.shape
    spectrum = torch.fft.rfft(waveform)
    if backend == "cpp":
        grad_spectrum = dispatch.extension().cochleagram_backward_cpu(
            grad_envelope, spectrum, filters, _band_tensor(config, length), taps, length,
            config.stride)
        return _rfft_adjoint(grad_spectrum, length)
    _, backward = _stage_b(backend)
    grad_spectrum = torch.zeros_like(spectrum)
    for rows, channels, lo, hi in _chunks(n_rows, filters.shape[0], bands, waveform.device):
        analytic = _analytic_subbands(spectrum[rows], filters[channels], lo, hi, length)
        shape = analytic.shape
        grad_env = grad_envelope[rows, channels].reshape(-1, grad_envelope.shape[-1]).contiguous()
        grad_analytic = backward(torch.view_as_real(analytic).reshape(-1, length, 2), taps,
                                 grad_env, config.stride)
        grad_analytic = torch.view_as_complex(grad_analytic).view(shape)
        # adjoint of ifft (norm="backward") is fft / T; only the filter's band reaches the spectrum
        grad_band = torch.fft.fft(grad_analytic, norm="forward")[..., lo:hi]
        grad_spectrum[rows, lo:hi] += (grad_band * filters[None, channels, lo:hi]).sum(1)
    return _rfft_adjoint(grad_spectrum, length)


@_cochleagram_backward_op.register_fake
def _(grad_envelope, waveform, sr, n, low_lim, high_lim, sample_factor, env_sr, window_size, backend):
    return torch.empty_like(waveform)


def _setup_context(ctx, inputs, output):
    waveform, *params = inputs
    ctx.save_for_backward(waveform, output[1])
    ctx.params = params


def _grad_of_envelope(envelope, grad_out, grad_envelope, config_params) -> torch.Tensor:
    """The gradient w.r.t. the downsampled, uncompressed envelope from those w.r.t. the op's two
    outputs (the compressed cochleagram and the envelope): both modes' backwards start here."""
    sr, n, low_lim, high_lim, sample_factor, env_sr, window_size, compress, power, offset, \
        clip_value = config_params
    grad = torch.zeros_like(envelope)
    if grad_out is not None:
        if compress:
            config = _config_of(sr, n, low_lim, high_lim, sample_factor, env_sr, window_size,
                                compress, power, offset, clip_value)
            grad = grad + grad_out * power_compression_grad(envelope, config)
        else:
            grad = grad + grad_out
    if grad_envelope is not None:
        grad = grad + grad_envelope
    return grad.contiguous()


def _backward(ctx, grad_out, grad_envelope):
    refuse_double_backward(OP_NAME)
    waveform, envelope = ctx.saved_tensors
    # `backend` is the name the forward ran with: the backward never chooses again
    *config_params, backend = ctx.params
    grad = _grad_of_envelope(envelope, grad_out, grad_envelope, config_params)
    grad_waveform = _cochleagram_backward_op(grad, waveform, *config_params[:7], backend)
    return (grad_waveform,) + (None,) * len(ctx.params)


torch.library.register_autograd("topoaudio::cochleagram", _backward, setup_context=_setup_context)


# The fast mode's registered op (issue 20): the C++ kernels of csrc/cochleagram_fast_cpu.cpp (CPU)
# and the Triton kernels of kernels/cochleagram_fast.py around cuFFT (GPUs). Its torch backend (any
# device) is plain PyTorch (cochleagram_fast.cochleagram_fast) under autograd.

FAST_KERNEL_BACKENDS = ("cpp", "triton")  # the registered fast op's backends (torch: autograd)


def _check_fast_length(length: int, config, backend: str) -> None:
    if length % config.stride:
        raise ValueError(f"cochleagram mode='fast' on the {backend} backend needs the stride "
                         f"({config.stride} samples) to divide the clip length, got {length}; "
                         "backend='torch' takes any length")


def _fast_inputs(waveform, config, oversample):
    """(spectrum, filters, bands, sizes, response, period, max_bin) for the C++ fast kernels."""
    length = waveform.shape[-1]
    _check_fast_length(length, config, "cpp")
    filters = filters_on(config, length, waveform.device, waveform.dtype)[0]
    bands, sizes, response, max_bin = cochleagram_fast.cpp_tables(config, length, oversample,
                                                                   waveform.dtype)
    return (torch.fft.rfft(waveform), filters, bands, sizes, response, length // config.stride,
            max_bin)


def _triton_fast_inputs(waveform, config, oversample):
    """(spectrum, filters, tables) for the Triton fast kernels (kernels/cochleagram_fast.py)."""
    length = waveform.shape[-1]
    _check_fast_length(length, config, "triton")
    filters = filters_on(config, length, waveform.device, waveform.dtype)[0]
    tables = cochleagram_fast.triton_tables(config, length, oversample, waveform.device,
                                            waveform.dtype)
    return torch.fft.rfft(waveform), filters, tables


def _triton_fast_forward(waveform, config, oversample) -> torch.Tensor:
    from topoaudio.kernels import cochleagram_fast as kernels
    spectrum, filters, t = _triton_fast_inputs(waveform, config, oversample)
    return kernels.fast_forward(spectrum, filters, t.scale, t.inv_size, t.response, t.table,
                                t.groups, t.total_band, t.total_spec, t.max_size, t.max_folds,
                                waveform.shape[-1] // config.stride,
                                config.n_frames(waveform.shape[-1]))


def _triton_fast_backward(grad_envelope, waveform, config, oversample) -> torch.Tensor:
    from topoaudio.kernels import cochleagram_fast as kernels
    spectrum, filters, t = _triton_fast_inputs(waveform, config, oversample)
    grad_spectrum = kernels.fast_backward(grad_envelope, spectrum, filters, t.scale, t.inv_size,
                                          t.response, t.table, t.cover, t.groups, t.total_band,
                                          t.total_spec, t.max_size,
                                          waveform.shape[-1] // config.stride)
    return _rfft_adjoint(grad_spectrum, waveform.shape[-1])


@torch.library.custom_op("topoaudio::cochleagram_fast", mutates_args=())
def _cochleagram_fast_op(waveform: torch.Tensor, sr: int, n: int, low_lim: float, high_lim: float,
                         sample_factor: int, env_sr: int, window_size: int, compress: bool,
                         power: float, offset: float, clip_value: float, oversample: float,
                         backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """waveform [rows, T] -> (approximate cochleagram, downsampled envelope), each [rows, C, frames]."""
    check_samples(waveform)
    if backend not in FAST_KERNEL_BACKENDS:
        raise ValueError(f"topoaudio::cochleagram_fast runs one of {FAST_KERNEL_BACKENDS}, got "
                         f"{backend!r}")
    dispatch.choose(FAST_OP_NAME, waveform.device, backend)
    config = _config_of(sr, n, low_lim, high_lim, sample_factor, env_sr, window_size, compress,
                        power, offset, clip_value)
    if backend == "triton":
        envelope = _triton_fast_forward(waveform, config, oversample)
        out = (envelope.clamp_min(0) + offset).pow(power) if compress else envelope.clone()
        return out, envelope
    spectrum, filters, bands, sizes, response, period, max_bin = _fast_inputs(waveform, config,
                                                                               oversample)
    out, envelope = dispatch.extension().cochleagram_fast_forward_cpu(
        spectrum, filters, bands, sizes, response, waveform.shape[-1], period,
        config.n_frames(waveform.shape[-1]), max_bin, power, offset, compress)
    return out, envelope


@_cochleagram_fast_op.register_fake
def _(waveform, sr, n, low_lim, high_lim, sample_factor, env_sr, window_size, compress, power,
      offset, clip_value, oversample, backend):
    config = _config_of(sr, n, low_lim, high_lim, sample_factor, env_sr, window_size, compress,
                        power, offset, clip_value)
    shape = (waveform.shape[0], config.n_channels, config.n_frames(waveform.shape[1]))
    return waveform.new_empty(shape), waveform.new_empty(shape)


@torch.library.custom_op("topoaudio::cochleagram_fast_backward", mutates_args=())
def _cochleagram_fast_backward_op(grad_envelope: torch.Tensor, waveform: torch.Tensor, sr: int,
                                  n: int, low_lim: float, high_lim: float, sample_factor: int,
                                  env_sr: int, window_size: int, oversample: float,
                                  backend: str) -> torch.Tensor:
    config = _config_of(sr, n, low_lim, high_lim, sample_factor, env_sr, window_size, False, 0.3,
                        1e-8, 5.0)
    if backend == "triton":
        return _triton_fast_backward(grad_envelope, waveform, config, oversample)
    spectrum, filters, bands, sizes, response, period, max_bin = _fast_inputs(waveform, config,
                                                                               oversample)
    grad_spectrum = dispatch.extension().cochleagram_fast_backward_cpu(
        grad_envelope, spectrum, filters, bands, sizes, response, waveform.shape[-1], period,
        max_bin)
    return _rfft_adjoint(grad_spectrum, waveform.shape[-1])


@_cochleagram_fast_backward_op.register_fake
def _(grad_envelope, waveform, sr, n, low_lim, high_lim, sample_factor, env_sr, window_size,
      oversample, backend):
    return torch.empty_like(waveform)


def _fast_backward(ctx, grad_out, grad_envelope):
    refuse_double_backward(OP_NAME)
    waveform, envelope = ctx.saved_tensors
    *config_params, oversample, backend = ctx.params
    grad = _grad_of_envelope(envelope, grad_out, grad_envelope, config_params)
    grad_waveform = _cochleagram_fast_backward_op(grad, waveform, *config_params[:7], oversample,
                                                  backend)
    return (grad_waveform,) + (None,) * len(ctx.params)


torch.library.register_autograd("topoaudio::cochleagram_fast", _fast_backward,
                                setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Public API.

def cochleagram(waveform: torch.Tensor, *, sr: int = 20000, n: int = 50, low_lim: float = 50.0,
                high_lim: float = 10000.0, sample_factor: int = 4, env_sr: int = 200,
                window_size: int = 1001, compression: str | None = "power", power: float = 0.3,
                offset: float = 1e-8, clip_value: float = 5.0,
                backend: str | None = "auto", mode: str = "exact",
                oversample: float | None = None, pad_factor: float | None = None) -> torch.Tensor:
    """Cochleagram of `waveform` [..., T] -> [..., C, frames] (docs/SCIENCE.md section 2).

    Defaults are the McDermott-lab ``cochleagram_1``: a 2 s clip at 20 kHz gives [..., 211, 390].
    ``compression=None`` returns the downsampled envelopes. Differentiable w.r.t. the waveform.
    float16/bfloat16 inputs are computed (and returned) in float32; float64 stays float64.
    ``backend`` forces one of topoaudio.ops.dispatch.BACKENDS (None or "auto": chosen once per call,
    and the backward runs on the same one); ``last_backend()`` says which ran. Settings may be
    Python or NumPy numbers; NaN / Inf settings are refused by name. Samples must be finite and
    below ``cochlear_filters.largest_safe_sample`` (about 4.6e16 for 2 s of float32 at 20 kHz),
    where squared envelopes would overflow: such input is refused, not rescaled.
    ``mode="fast"`` (issue 20) samples each channel's subband at baseband, ``oversample`` (>= 1,
    default 4) times its filter's width, and downsamples the envelope as a spectral product:
    ~10x faster on the CPU, relative RMS error 1.6e-3 after compression at oversample 4 over the
    165 NH2015 sounds (docs/SCIENCE.md section 2); backends cpp (CPU) and torch (any device).

    Axes (section 2, "Axes"): channel k's frequency is ``cochleagram_axes(T, ...)[0][k]``, frame
    f's time ``cochleagram_axes(T, ...)[1][f]`` (or ``Cochleagram(...).frequencies`` / ``.times``).
    ``sr`` is the waveform's rate: one that env_sr does not divide (44100 Hz) is resampled to the
    largest multiple of env_sr below it (44000 Hz) first (settings.cochleagram_rate). ``pad_factor`` (None,
    or >= 1) zero-pads each clip to ceil(pad_factor x T) samples before filtering and keeps the
    frames of the clip itself, so its edge frames see silence after the clip instead of its own
    start wrapped around (the filters are circular over the clip's length): on a 2 s sweep the
    largest change from the clip in long silence falls from 0.14 to 8e-3 at pad_factor 2
    (section 2). ``window_size`` counts samples at the computing rate (1001: 50 ms at 20 kHz).
    Clips of different lengths: pad them with zeros at the end and keep ``valid_frames(lengths)``
    frames of each.

    Example::

        >>> import torch, topoaudio.ops as ops
        >>> ops.cochleagram(torch.randn(2, 40000) * 0.1).shape
        torch.Size([2, 211, 390])
    """
    framing = _Framing.of(sr, n, low_lim, high_lim, sample_factor, env_sr, window_size,
                          compression, power, offset, clip_value, pad_factor)
    mode, oversample = cochleagram_mode(mode, oversample)
    return framing.run(waveform, backend, mode, oversample)


class _Framing:
    """What the public op does around the registered one: the caller's sample rate (resampled to
    config.sr when it differs) and pad_factor (zero-pad, then crop the frames). With a rate env_sr
    divides and no pad_factor it hands the waveform to _run unchanged: the op as before, bit for
    bit."""

    def __init__(self, sr: int, config: CochleagramConfig, pad_factor: float | None):
        self.sr, self.config, self.pad_factor = sr, config, pad_factor

    @classmethod
    def of(cls, sr, n, low_lim, high_lim, sample_factor, env_sr, window_size, compression, power,
           offset, clip_value, pad_factor) -> _Framing:
        try:
            sr, rate = cochleagram_rate(sr, env_sr, high_lim)
            pad_factor = pad_factor_setting(pad_factor)
        except ValueError as error:
            raise ValueError(f"invalid cochleagram configuration: {error}") from None
        config = CochleagramConfig(rate, n, low_lim, high_lim, sample_factor, env_sr, window_size,
                                   compression, power, offset, clip_value)
        return cls(sr, config, pad_factor)

    def samples(self, n_samples: int) -> int:
        """The length at config.sr of a clip of n_samples at the caller's rate (torchaudio's)."""
        if self.sr == self.config.sr:
            return n_samples
        return -(-n_samples * self.config.sr // self.sr)

    def n_frames(self, n_samples: int) -> int:
        return self.config.n_frames(self.samples(n_samples))

    def run(self, waveform, backend, mode, oversample) -> torch.Tensor:
        if self.sr != self.config.sr:
            self.config.check_waveform(waveform)  # before resampling: the caller's shapes
            import torchaudio.functional  # only for rates env_sr does not divide

            waveform = torchaudio.functional.resample(
                waveform.float() if waveform.dtype in (torch.float16, torch.bfloat16) else waveform,
                self.sr, self.config.sr)
        if self.pad_factor is None:
            return _run(waveform, self.config, backend, mode, oversample)
        self.config.check_waveform(waveform)
        length = waveform.shape[-1]
        padded = torch.nn.functional.pad(waveform, (0, math.ceil(self.pad_factor * length) - length))
        return _run(padded, self.config, backend, mode, oversample)[..., :self.config.n_frames(length)]

    def settings(self) -> dict:
        settings = _config_kwargs(self.config)
        settings["sr"] = self.sr
        if self.sr != self.config.sr:
            settings["resampled_to"] = self.config.sr
        if self.pad_factor is not None:
            settings["pad_factor"] = self.pad_factor
        return settings


def cochleagram_axes(n_samples: int, *, sr: int = 20000, n: int = 50, low_lim: float = 50.0,
                     high_lim: float = 10000.0, sample_factor: int = 4, env_sr: int = 200,
                     window_size: int = 1001) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequencies [C] in Hz, times [frames] in s) of the cochleagram of a clip of `n_samples`
    samples at `sr` with these settings (docs/SCIENCE.md section 2, "Axes"); float64 tensors.

    frequencies: each channel's centroid on the ERB scale of its power response within [0, sr/2]
    (= the band-pass centre for every band-pass filter inside the band; the 2 x sample_factor
    low/high-pass edge channels and the band-pass ones cut by Nyquist get the centre of what they
    pass; ascending). times: frame f at (f D + window_size / 2) / rate, D = rate / env_sr, the
    windowed sinc's peak, in the caller's time (after any resampling).

    Example::

        >>> import topoaudio.ops as ops
        >>> freqs, times = ops.cochleagram_axes(40000)
        >>> freqs.shape, times.shape
        (torch.Size([211]), torch.Size([390]))
        >>> times[:2]                                   # (f x 100 + 500.5) / 20000 s
        tensor([0.0250, 0.0300], dtype=torch.float64)
    """
    module = Cochleagram(sr=sr, n=n, low_lim=low_lim, high_lim=high_lim,
                         sample_factor=sample_factor, env_sr=env_sr, window_size=window_size)
    return module.frequencies, module.times(n_samples)


def valid_frames(lengths, *, sr: int = 20000, env_sr: int = 200,
                 window_size: int = 1001) -> torch.Tensor:
    """Frames [B] (int64) of each clip of a zero-padded batch that lie wholly inside the clip:
    (L' - window_size) // D + 1 for a clip of L samples (L' = its length at the computing rate,
    section 2), 0 when shorter than the window. The padding rule for clips of different lengths:
    pad each at its end with zeros to the longest, run the batch, keep each clip's first
    valid_frames; later frames mix in the padding. Those kept differ from the clip's own
    cochleagram near its end only through the filters' wrap-around (``pad_factor`` bounds it).

    Example::

        >>> import torch, topoaudio.ops as ops
        >>> ops.valid_frames(torch.tensor([40000, 30000, 20000]))
        tensor([390, 290, 190])
    """
    try:
        sr, rate = cochleagram_rate(sr, env_sr)
    except ValueError as error:
        raise ValueError(f"invalid cochleagram configuration: {error}") from None
    window_size = positive_integer("window_size", window_size)
    stride = rate // env_sr
    lengths = _checked_lengths(lengths)
    if rate != sr:
        lengths = -(-lengths * rate // sr)
    frames = torch.div(lengths - window_size, stride, rounding_mode="floor") + 1
    return frames.clamp_min(0)


def _checked_lengths(lengths) -> torch.Tensor:
    """lengths as an int64 CPU tensor [B] of non-negative integers, or one ValueError naming it."""
    try:
        values = torch.as_tensor(lengths)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"lengths must be integers (a list or a tensor [B]), got {lengths!r}") from None
    if values.dim() > 1 or values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise ValueError(f"lengths must be integers (a list or a tensor [B]), got dtype {values.dtype} "
                         f"and shape {tuple(values.shape)}")
    values = values.to(torch.int64).cpu().reshape(-1)
    if bool((values < 0).any()):
        raise ValueError(f"lengths must be >= 0 samples, got {values.tolist()}")
    return values


def _run(waveform: torch.Tensor, config: CochleagramConfig, backend: str | None,
         mode: str = "exact", oversample: float | None = None) -> torch.Tensor:
    if isinstance(waveform, torch.Tensor):
        refuse_functorch(OP_NAME if mode == "exact" else FAST_OP_NAME, waveform.device, backend)
    config.check_waveform(waveform)
    if mode == "fast":
        return _run_fast(waveform, config, backend, oversample)
    name = dispatch.choose(OP_NAME, waveform.device, backend)  # once per call
    if name == "reference":  # the definition itself (plain torch, autograd), as last_backend says
        return _reference.cochleagram(waveform, **_config_kwargs(config))
    if waveform.dtype in (torch.float16, torch.bfloat16):
        waveform = waveform.float()
    batch_shape, length = waveform.shape[:-1], waveform.shape[-1]
    # the one place the waveform gets the layout every kernel assumes: [rows, T], contiguous
    rows = waveform.reshape(-1, length).contiguous()
    out, _ = _cochleagram_op(rows, config.sr, config.n, config.low_lim, config.high_lim,
                             config.sample_factor, config.env_sr, config.window_size,
                             config.compression is not None, config.power, config.offset,
                             config.clip_value, name)
    return out.reshape(*batch_shape, *out.shape[1:])


def _run_fast(waveform: torch.Tensor, config: CochleagramConfig, backend: str | None,
              oversample: float) -> torch.Tensor:
    name = dispatch.choose(FAST_OP_NAME, waveform.device, backend)  # cpp or torch, once per call
    length = waveform.shape[-1]
    if name in FAST_KERNEL_BACKENDS and length % config.stride and backend_name(backend) == "auto":
        # the C++ and Triton kernels fold the envelope's bins into T / stride frames; other
        # lengths take the torch backend's dense frame matrix (last_backend says so)
        name = "torch"
    dispatch.record(OP_NAME, f"{name}+fast")
    if name == "torch":
        return cochleagram_fast._run(waveform, config, oversample, None)
    if waveform.dtype in (torch.float16, torch.bfloat16):
        waveform = waveform.float()
    rows = waveform.reshape(-1, length).contiguous()
    out, _ = _cochleagram_fast_op(rows, config.sr, config.n, config.low_lim, config.high_lim,
                                  config.sample_factor, config.env_sr, config.window_size,
                                  config.compression is not None, config.power, config.offset,
                                  config.clip_value, oversample, name)
    return out.reshape(*waveform.shape[:-1], *out.shape[1:])


_BANDS: dict = {}


def _bands(config: CochleagramConfig, length: int) -> list[int]:
    key = (config, length)
    if key not in _BANDS:
        _BANDS[key] = _band_extents(erb_cosine_filters(config, length))
    return _BANDS[key]


_BAND_TENSORS: dict = {}


def _band_tensor(config: CochleagramConfig, length: int) -> torch.Tensor:
    """The bands as the C++ op takes them: int64 [channels, 2] of [lo, hi), built once."""
    key = (config, length)
    if key not in _BAND_TENSORS:
        _BAND_TENSORS[key] = torch.tensor(_bands(config, length), dtype=torch.long).view(-1, 2)
    return _BAND_TENSORS[key]


def _config_kwargs(config: CochleagramConfig) -> dict:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def last_backend() -> str | None:
    """The backend that computed the most recent cochleagram in this process."""
    return dispatch.last_backend(OP_NAME)


class Cochleagram(nn.Module):
    """nn.Module form of `cochleagram`: the configuration is checked once at construction; filters
    are built once per (signal length, device, dtype) and cached.

    Axes (docs/SCIENCE.md section 2, "Axes"): ``frequencies`` [C] (Hz, ascending, every one in
    [0, sr / 2]), ``times(T)`` [frames] (s, each frame's centre), ``n_frames(T)``, and
    ``valid_frames(lengths)`` for a zero-padded batch of clips of different lengths. ``sr`` is the
    input's rate (one that env_sr does not divide is resampled to ``config.sr``, the largest
    multiple below it); ``pad_factor`` as in `cochleagram`.

    Example::

        >>> import torch, topoaudio.ops as ops
        >>> frontend = ops.Cochleagram(sr=44100, window_size=2201)  # 44000 Hz inside; 50 ms
        >>> frontend(torch.randn(3, 88200) * 0.1).shape              # 2 s at 44.1 kHz
        torch.Size([3, 211, 390])
        >>> frontend.frequencies.shape, frontend.times(88200)[:2]
        (torch.Size([211]), tensor([0.0250, 0.0300], dtype=torch.float64))
    """

    def __init__(self, *, sr: int = 20000, n: int = 50, low_lim: float = 50.0,
                 high_lim: float = 10000.0, sample_factor: int = 4, env_sr: int = 200,
                 window_size: int = 1001, compression: str | None = "power", power: float = 0.3,
                 offset: float = 1e-8, clip_value: float = 5.0, backend: str | None = "auto",
                 mode: str = "exact", oversample: float | None = None,
                 pad_factor: float | None = None):
        super().__init__()
        self._framing = _Framing.of(sr, n, low_lim, high_lim, sample_factor, env_sr, window_size,
                                    compression, power, offset, clip_value, pad_factor)
        self.config = self._framing.config  # at the computing rate
        self.sr, self.pad_factor = self._framing.sr, self._framing.pad_factor
        self.backend = backend_name(backend)
        self.mode, self.oversample = cochleagram_mode(mode, oversample)

    @property
    def n_channels(self) -> int:
        return self.config.n_channels

    @property
    def frequencies(self) -> torch.Tensor:
        """Each channel's frequency [C] in Hz (float64, ascending; ``cochleagram_axes``)."""
        return torch.from_numpy(channel_frequencies(self.config).copy())

    def times(self, signal_length: int) -> torch.Tensor:
        """Time in seconds [frames] (float64) of each frame's centre for a clip of signal_length
        samples at ``sr``: (f D + window_size / 2) / config.sr."""
        return torch.from_numpy(frame_times(self.config, self._framing.samples(int(signal_length))))

    def n_frames(self, signal_length: int) -> int:
        return self._framing.n_frames(signal_length)

    def valid_frames(self, lengths) -> torch.Tensor:
        """Frames [B] (int64) of each clip of a zero-padded batch that lie wholly inside it
        (``topoaudio.ops.valid_frames``)."""
        return valid_frames(lengths, sr=self.sr, env_sr=self.config.env_sr,
                            window_size=self.config.window_size)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self._framing.run(waveform, self.backend, self.mode, self.oversample)

    def extra_repr(self) -> str:
        settings = {**self._framing.settings(), "mode": self.mode}
        if self.oversample is not None:
            settings["oversample"] = self.oversample
        if self.backend != "auto":
            settings["backend"] = self.backend
        return ", ".join(f"{k}={v!r}" for k, v in settings.items())
