"""Probe sounds for topography measurements (docs/SCIENCE.md section 6).

Every stimulus is a float32 waveform [n_stimuli, T] at ``sr`` Hz, T = round(sr * seconds), with
raised-cosine onset and offset ramps (10 ms by default, so a model does not see a click), demeaned
and scaled to RMS 0.1 exactly as the model front end expects (section 2). Computation is float64
and the result float32. Noise stimuli draw from ``torch.Generator().manual_seed(seed)``, one
independent noise token per stimulus: same seed, same sounds.
"""
from __future__ import annotations

import math

import torch

SAMPLE_RATE = 20000
SECONDS = 2.0
TARGET_RMS = 0.1
RAMP_SECONDS = 0.01
DEFAULT_N_TONES = 40          # 50 Hz - 8 kHz is 7.3 octaves: about 5.5 tones per octave
DEFAULT_N_RATES = 8           # 2 - 256 Hz in octave steps


def log_spaced(lo: float, hi: float, n: int) -> torch.Tensor:
    """n values from lo to hi (both included) equally spaced in log frequency; float32 [n]."""
    if not (lo > 0 and hi >= lo):
        raise ValueError(f"need 0 < lo <= hi, got lo={lo!r}, hi={hi!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    return torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64).to(torch.float32)


def pure_tones(freqs=None, sr: int = SAMPLE_RATE, seconds: float = SECONDS,
               ramp_seconds: float = RAMP_SECONDS) -> torch.Tensor:
    """Sine tones [n, T], one per frequency in ``freqs`` (Hz; default 40 log-spaced, 50 Hz - 8 kHz)."""
    freqs = _frequencies(freqs, DEFAULT_N_TONES, sr, "freqs")
    time = _time_axis(sr, seconds)
    tones = torch.sin(2 * math.pi * freqs[:, None] * time[None, :])
    return _finish(tones, sr, ramp_seconds)


def narrowband_noise(centre_freqs=None, bandwidth_octaves: float = 1 / 3, seed: int = 0,
                     sr: int = SAMPLE_RATE, seconds: float = SECONDS,
                     ramp_seconds: float = RAMP_SECONDS) -> torch.Tensor:
    """Gaussian noise bands [n, T] centred (geometrically) on ``centre_freqs`` (Hz; default as tones).

    Each band keeps the FFT bins of white noise in [fc 2^(-bw/2), fc 2^(bw/2)] (a brick-wall band
    bw octaves wide) and zeroes the rest, so the spectrum is flat inside the band.
    """
    if not bandwidth_octaves > 0:
        raise ValueError(f"bandwidth_octaves must be > 0, got {bandwidth_octaves!r}")
    centre_freqs = _frequencies(centre_freqs, DEFAULT_N_TONES, sr, "centre_freqs")
    n_samples = _time_axis(sr, seconds).numel()
    noise = _white_noise(centre_freqs.numel(), n_samples, seed)
    spectrum = torch.fft.rfft(noise, dim=1)
    bin_freqs = torch.fft.rfftfreq(n_samples, d=1 / sr, dtype=torch.float64)
    half_width = 2 ** (bandwidth_octaves / 2)
    in_band = ((bin_freqs[None, :] >= centre_freqs[:, None] / half_width)
               & (bin_freqs[None, :] <= centre_freqs[:, None] * half_width))
    if not bool(in_band.any(dim=1).all()):
        raise ValueError("a band holds no FFT bin: make the stimuli longer or the bands wider")
    bands = torch.fft.irfft(spectrum * in_band, n=n_samples, dim=1)
    return _finish(bands, sr, ramp_seconds)


def am_noise(rates=None, depth: float = 1.0, seed: int = 0, sr: int = SAMPLE_RATE,
             seconds: float = SECONDS, ramp_seconds: float = RAMP_SECONDS) -> torch.Tensor:
    """Broadband (white Gaussian) noise [n, T] times (1 + depth sin(2 pi rate t)), one per rate (Hz).

    Default rates: 8 log-spaced from 2 to 256 Hz (octave steps). depth in [0, 1]; 1 is full
    modulation (the envelope touches zero once per cycle).
    """
    if not 0 <= depth <= 1:
        raise ValueError(f"depth must be in [0, 1], got {depth!r}")
    if rates is None:
        rates = log_spaced(2.0, 256.0, DEFAULT_N_RATES)
    rates = _frequencies(rates, DEFAULT_N_RATES, sr, "rates")
    time = _time_axis(sr, seconds)
    carrier = _white_noise(rates.numel(), time.numel(), seed)
    envelope = 1 + depth * torch.sin(2 * math.pi * rates[:, None] * time[None, :])
    return _finish(carrier * envelope, sr, ramp_seconds)


def _frequencies(freqs, default_n: int, sr: int, name: str) -> torch.Tensor:
    if freqs is None:
        freqs = log_spaced(50.0, 8000.0, default_n)
    freqs = torch.as_tensor(freqs, dtype=torch.float64).reshape(-1).cpu()
    if freqs.numel() == 0 or not bool(((freqs > 0) & (freqs < sr / 2)).all()):
        raise ValueError(f"{name} must be a non-empty list of frequencies in (0, sr/2 = {sr / 2}) Hz")
    return freqs


def _time_axis(sr: int, seconds: float) -> torch.Tensor:
    n_samples = round(sr * seconds)
    if n_samples < 2:
        raise ValueError(f"sr * seconds must give at least 2 samples, got sr={sr!r}, seconds={seconds!r}")
    return torch.arange(n_samples, dtype=torch.float64) / sr


def _white_noise(n_stimuli: int, n_samples: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_stimuli, n_samples, generator=generator, dtype=torch.float64)


def _finish(waveforms: torch.Tensor, sr: int, ramp_seconds: float) -> torch.Tensor:
    """Ramp, demean, scale each row to RMS 0.1; float32."""
    n_samples = waveforms.shape[1]
    ramp_samples = min(round(sr * ramp_seconds), n_samples // 2)
    if ramp_samples > 0:
        # Raised cosine 0 -> 1 over the ramp: no spectral splatter from a hard onset.
        rise = 0.5 * (1 - torch.cos(math.pi * torch.arange(ramp_samples, dtype=torch.float64) / ramp_samples))
        gain = torch.ones(n_samples, dtype=torch.float64)
        gain[:ramp_samples] = rise
        gain[n_samples - ramp_samples:] = rise.flip(0)
        waveforms = waveforms * gain
    waveforms = waveforms - waveforms.mean(dim=1, keepdim=True)
    rms = waveforms.pow(2).mean(dim=1, keepdim=True).sqrt()
    return (waveforms * (TARGET_RMS / rms)).to(torch.float32)
