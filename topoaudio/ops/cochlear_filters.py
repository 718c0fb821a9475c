"""The cochleagram's configuration, its checks, and the fixed filters it is built from.

Everything here follows docs/SCIENCE.md section 2 (the McDermott-lab ``cochleagram_1`` contract).
Filters are designed once in float64 NumPy and cached per (configuration, signal length); the
reference and every fused backend read the same arrays, so they can only differ in how they compute.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from .settings import non_negative_number, positive_integer, positive_number

COMPRESSIONS = ("power", None)


@dataclass(frozen=True)
class CochleagramConfig:
    """Parameters of the cochleagram (defaults: ``cochleagram_1``, 211 channels x 390 frames for 2 s)."""

    sr: int = 20000
    n: int = 50
    low_lim: float = 50.0
    high_lim: float = 10000.0
    sample_factor: int = 4
    env_sr: int = 200
    window_size: int = 1001
    compression: str | None = "power"
    power: float = 0.3
    offset: float = 1e-8
    clip_value: float = 5.0

    def __post_init__(self) -> None:
        # Every number through the shared checker (topoaudio.ops.settings): NumPy scalars and 0-d
        # tensors become Python numbers, NaN / Inf are refused by name, and the registered op
        # (whose schema takes Python int / float) and the filter caches see one type.
        problems = []
        checks = {"sr": positive_integer, "n": positive_integer, "sample_factor": positive_integer,
                  "env_sr": positive_integer, "window_size": positive_integer,
                  "low_lim": positive_number, "high_lim": positive_number,
                  "power": positive_number, "offset": non_negative_number,
                  "clip_value": positive_number}
        for name, check in checks.items():
            try:
                object.__setattr__(self, name, check(name, getattr(self, name)))
            except ValueError as error:
                problems.append(str(error))
        if problems:  # the relations below need valid numbers
            raise ValueError("invalid cochleagram configuration: " + "; ".join(problems))
        if self.sr % self.env_sr != 0:
            problems.append(
                f"sr ({self.sr}) must be an integer multiple of env_sr ({self.env_sr}): "
                "the envelope is downsampled by an integer stride sr / env_sr (ops.cochleagram "
                "and ops.Cochleagram resample other rates to the largest multiple below)")
        if not self.low_lim < self.high_lim:
            problems.append(f"need 0 < low_lim < high_lim, got low_lim={self.low_lim}, "
                            f"high_lim={self.high_lim}")
        if self.high_lim > self.sr / 2:
            problems.append(f"high_lim ({self.high_lim} Hz) is above the Nyquist frequency "
                            f"sr/2 = {self.sr / 2} Hz")
        if self.compression not in COMPRESSIONS:
            problems.append(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        if problems:
            raise ValueError("invalid cochleagram configuration: " + "; ".join(problems))

    @property
    def stride(self) -> int:
        """Downsampling factor D = sr / env_sr (100 by default)."""
        return self.sr // self.env_sr

    @property
    def n_channels(self) -> int:
        return self.sample_factor * (self.n + 1) - 1 + 2 * self.sample_factor

    def n_frames(self, signal_length: int) -> int:
        return (signal_length - self.window_size) // self.stride + 1

    def check_waveform(self, waveform: torch.Tensor) -> None:
        """Raise ValueError naming the problem (type, dtype, shape, length) before any work."""
        if not isinstance(waveform, torch.Tensor):
            raise ValueError(f"cochleagram expects a torch.Tensor waveform [..., T], got "
                             f"{type(waveform).__name__}")
        if waveform.is_complex() or not waveform.is_floating_point():
            hint = ""
            if waveform.dtype == torch.int16:
                hint = " (int16 PCM: use waveform.float() / 32768 to scale to [-1, 1))"
            elif not waveform.is_complex():
                hint = " (convert with waveform.float() and scale to [-1, 1])"
            raise ValueError(f"cochleagram expects a real floating-point waveform, got "
                             f"{waveform.dtype}{hint}")
        if waveform.dim() == 0 or waveform.numel() == 0:
            raise ValueError(f"cochleagram got an empty waveform of shape {tuple(waveform.shape)}")
        length = waveform.shape[-1]
        if length < self.window_size:
            raise ValueError(
                f"waveform has {length} samples, fewer than the {self.window_size}-tap "
                f"downsampling window ({self.window_size / self.sr:.3f} s at sr={self.sr}); "
                "pad it or pass a shorter window_size")


def largest_safe_sample(dtype: torch.dtype, length: int) -> float:
    """The largest |sample| whose squared envelopes cannot overflow in `dtype`. By Parseval, each
    analytic subband (filters have gain <= 1) holds at most the clip's energy, so every squared
    magnitude is <= sum_t x_t^2 <= T max|x|^2; a factor 4 of headroom covers the one-sided spectrum
    and rounding. Far above any audio (float32, 2 s at 20 kHz: 4.6e16; float64: 3.4e151)."""
    return (torch.finfo(dtype).max / (4.0 * length)) ** 0.5


def check_samples(waveform: torch.Tensor) -> None:
    """Raise ValueError if any sample is NaN or Inf, or so large that squared envelopes would
    overflow (refused rather than rescaled: see docs/SPATIAL_LOSS.md, "Cochleagram inputs").
    Kept apart from the shape checks because it reads the data: fused ops run it inside their
    registered implementation, so it also holds under torch.compile (where a data-dependent branch
    cannot be traced). `waveform` is in the dtype the cochleagram computes in."""
    if not bool(torch.isfinite(waveform).all()):
        bad = int((~torch.isfinite(waveform)).sum())
        raise ValueError(f"waveform contains {bad} NaN or Inf samples")
    bound = largest_safe_sample(waveform.dtype, waveform.shape[-1])
    largest = float(waveform.detach().abs().max())
    if largest > bound:
        raise ValueError(f"waveform's largest |sample| is {largest:.3g}, above {bound:.3g}, the "
                         f"bound for {waveform.shape[-1]} samples in {waveform.dtype} (squared "
                         "envelopes would overflow); scale the waveform to [-1, 1]")


def freq_to_erb(freq):
    return 9.265 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / (24.7 * 9.265))


def erb_to_freq(erb):
    return 24.7 * 9.265 * (np.exp(np.asarray(erb, dtype=np.float64) / 9.265) - 1.0)


@functools.lru_cache(maxsize=32)
def erb_cosine_filters(config: CochleagramConfig, signal_length: int) -> np.ndarray:
    """Frequency responses [C, T // 2 + 1] (float64, read-only) on the rfft grid of the signal."""
    if signal_length % 2 == 0:
        n_bins, max_freq = signal_length // 2, config.sr / 2
    else:
        n_bins = (signal_length - 1) // 2
        max_freq = config.sr * (signal_length - 1) / 2 / signal_length
    filters = _filter_responses(config, np.linspace(0.0, max_freq, n_bins + 1))
    filters.setflags(write=False)
    return filters


def _erb_centres(config: CochleagramConfig) -> tuple[np.ndarray, float]:
    """(band-pass centres in ERB [sample_factor (n + 1) - 1], the ERB step between them)."""
    centres, step = np.linspace(freq_to_erb(config.low_lim), freq_to_erb(config.high_lim),
                                config.sample_factor * (config.n + 1) + 1, retstep=True)
    return centres[1:-1], float(step)


def _filter_responses(config: CochleagramConfig, freqs: np.ndarray) -> np.ndarray:
    """Every channel's response [C, len(freqs)] at the ascending frequencies `freqs` (Hz)."""
    sf = config.sample_factor
    freqs_erb = freq_to_erb(freqs)
    centres, step = _erb_centres(config)
    n_bandpass = len(centres)
    filters = np.zeros((n_bandpass + 2 * sf, len(freqs)))
    for i, centre in enumerate(centres):
        lo, hi = centre - sf * step, centre + sf * step
        inside = (freqs_erb > lo) & (freqs_erb < hi)  # strictly inside, as the original
        filters[i + sf, inside] = np.cos((freqs_erb[inside] - centre) / (hi - lo) * np.pi)
    # Low- and highpass filters complete the neighbouring half-cosines to a partition of unity
    # in power: each one rises (falls) where its partner bandpass falls (rises).
    for i in range(sf):
        below = np.flatnonzero(freqs < erb_to_freq(centres[i]))
        if below.size:
            top = below[-1] + 1
            filters[i, :top] = np.sqrt(1.0 - filters[i + sf, :top] ** 2)
        above = np.flatnonzero(freqs > erb_to_freq(centres[-1 - i]))
        if above.size:
            bottom = above[0]
            filters[-1 - i, bottom:] = np.sqrt(1.0 - filters[-1 - i - sf, bottom:] ** 2)
    filters /= np.sqrt(sf)
    return filters


def channel_center_freqs(config: CochleagramConfig) -> np.ndarray:
    """Design frequency (Hz) of each of the C channels, lowpass ones first: each band-pass
    filter's centre (its peak), and for the ``sample_factor`` low-pass (high-pass) channels the
    ERB point ``sample_factor`` steps below (above) their partner band-pass centre, where the
    low-pass starts to fall (the high-pass reaches full gain). The edge points lie below low_lim
    and above high_lim; with high_lim at Nyquist (the default) the top three lie above sr / 2
    (10182, 10368, 10556 Hz at 20 kHz), where those channels have no bins. ``channel_frequencies``
    gives every channel a frequency inside [0, sr / 2] instead."""
    sf = config.sample_factor
    centres, step = _erb_centres(config)
    return erb_to_freq(np.concatenate([centres[:sf] - sf * step, centres, centres[-sf:] + sf * step]))


# Grid points per ERB step for channel_frequencies: aligned with the band-pass centres, so a
# symmetric half-cosine's centroid falls exactly on its centre.
_CENTROID_POINTS_PER_STEP = 64


@functools.lru_cache(maxsize=32)
def channel_frequencies(config: CochleagramConfig) -> np.ndarray:
    """Frequency (Hz) of each of the C channels, ascending (docs/SCIENCE.md section 2, "Axes"):
    the centroid on the ERB scale of the channel's power response |H_k|^2 over [0, sr / 2].
    For every band-pass filter that lies inside (0, sr / 2) this is its centre, exactly (the
    half-cosine is symmetric in ERB); band-pass filters cut by Nyquist, and the low- and high-pass
    edge channels, get the centre of what they actually pass, so every value is inside
    [0, sr / 2] and the values rise strictly with the channel index. Independent of clip length
    (a dense ERB grid, not the rfft grid). float64, read-only."""
    centres, step = _erb_centres(config)
    spacing = step / _CENTROID_POINTS_PER_STEP
    top = float(freq_to_erb(config.sr / 2))
    first = int(np.ceil(-centres[0] / spacing))
    last = int(np.floor((top - centres[0]) / spacing))
    grid_erb = centres[0] + spacing * np.arange(first, last + 1)
    # each point stands for its cell of the ERB axis, the two end cells clipped to [0, top]
    low = np.maximum(grid_erb - spacing / 2, 0.0)
    high = np.minimum(grid_erb + spacing / 2, top)
    power = _filter_responses(config, erb_to_freq(grid_erb)) ** 2 * (high - low)
    frequencies = erb_to_freq(power @ ((low + high) / 2) / power.sum(axis=1))
    frequencies.setflags(write=False)
    return frequencies


def frame_times(config: CochleagramConfig, n_samples: int) -> np.ndarray:
    """Time (s) of each output frame of a clip of `n_samples` samples at config.sr: frame f is the
    window over samples [f D, f D + W) (D = config.stride, W = window_size), and its time is the
    windowed sinc's peak, (f D + W / 2) / sr (sample t at t / sr). 2 s at the defaults: 390 frames
    at 0.02503, 0.03003, ..., 1.97003 s. float64 [n_frames]."""
    n_frames = config.n_frames(int(n_samples))
    return (np.arange(max(n_frames, 0)) * config.stride + config.window_size / 2) / config.sr


@functools.lru_cache(maxsize=32)
def sinc_kaiser_taps(config: CochleagramConfig) -> np.ndarray:
    """The windowed-sinc lowpass [window_size] used to downsample envelopes to env_sr."""
    stride = config.stride
    offsets = np.arange(config.window_size, dtype=np.float64) - config.window_size / 2
    taps = np.sinc(offsets / stride) / stride * np.kaiser(config.window_size, 5.0)
    taps.setflags(write=False)
    return taps


_DEVICE_CACHE: dict = {}


def filters_on(config: CochleagramConfig, signal_length: int, device, dtype):
    """(filters [C, F], taps [W]) as tensors on a device, built once per key and reused."""
    key = (config, signal_length, torch.device(device), dtype)
    cached = _DEVICE_CACHE.get(key)
    if cached is None:
        filters = torch.tensor(erb_cosine_filters(config, signal_length), dtype=dtype, device=device)
        taps = torch.tensor(sinc_kaiser_taps(config), dtype=dtype, device=device)
        if len(_DEVICE_CACHE) > 64:
            _DEVICE_CACHE.clear()
        cached = _DEVICE_CACHE[key] = (filters, taps)
    return cached


def power_compression_grad(envelope: torch.Tensor, config: CochleagramConfig) -> torch.Tensor:
    """d/de of (max(e, 0) + offset) ** power, with max passing gradients straight through and
    the derivative clipped to [-clip_value, clip_value] (the original's guard near zero)."""
    base = envelope.clamp_min(0) + config.offset
    slope = config.power * base.pow(config.power - 1)
    return slope.clamp(-config.clip_value, config.clip_value)
