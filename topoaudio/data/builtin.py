"""Built-in sounds, synthesised deterministically: nothing to download, nothing to ship."""
from __future__ import annotations

import numpy as np

# (F1, F2, F3) in Hz of a few vowels, roughly an adult speaker's.
_VOWEL_FORMANTS = {"a": (730, 1090, 2440), "i": (270, 2290, 3010), "u": (300, 870, 2240),
                   "e": (530, 1840, 2480)}


def _formant_filter(source: np.ndarray, formants, sr: int, bandwidth: float = 90.0) -> np.ndarray:
    """Cascade of two-pole resonators (a source-filter vowel)."""
    out = source
    for freq in formants:
        r = np.exp(-np.pi * bandwidth / sr)
        a1, a2 = -2 * r * np.cos(2 * np.pi * freq / sr), r * r
        y = np.zeros_like(out)
        for t in range(len(out)):  # short signals only; clarity over speed
            y[t] = out[t] - a1 * (y[t - 1] if t else 0.0) - a2 * (y[t - 2] if t > 1 else 0.0)
        out = y * (1 - r)
    return out


def demo_sound(sr: int = 20000, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """A 2 s scene with something for every part of the cochlea: a sung vowel sequence with a
    pitch glide, a three-note harmonic melody, and amplitude-modulated noise bursts.
    Returns float64 [sr * seconds], demeaned, RMS 0.1."""
    rng = np.random.default_rng(seed)
    n = int(round(sr * seconds))
    t = np.arange(n) / sr
    # voiced source: glottal pulse train whose pitch glides 120 -> 180 Hz
    f0 = 120 + 60 * t / seconds
    phase = np.cumsum(f0) / sr
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(float)
    voice = np.zeros(n)
    segment = n // 4
    for i, vowel in enumerate("aiue"):
        part = slice(i * segment, (i + 1) * segment if i < 3 else n)
        voice[part] = _formant_filter(pulses[part], _VOWEL_FORMANTS[vowel], sr)
    voice *= np.hanning(n) ** 0.25
    # melody: three notes of a harmonic tone (1/h amplitudes), in the second half
    melody = np.zeros(n)
    for start, freq in [(0.9, 440.0), (1.25, 554.4), (1.6, 659.3)]:
        note = (t >= start) & (t < start + 0.35)
        envelope = np.exp(-(t[note] - start) * 6.0)
        for h in range(1, 8):
            melody[note] += envelope * np.sin(2 * np.pi * h * freq * t[note]) / h
    # noise bursts, 8 Hz amplitude modulation, high-passed by differencing
    noise = np.diff(rng.standard_normal(n + 1))
    bursts = ((t % 0.5) < 0.15) * (0.5 + 0.5 * np.sin(2 * np.pi * 8 * t))
    scene = voice / (np.std(voice) + 1e-12) + 0.7 * melody / (np.std(melody) + 1e-12) \
        + 0.3 * bursts * noise / np.std(noise)
    scene -= scene.mean()
    return scene * (0.1 / np.sqrt(np.mean(scene ** 2)))
