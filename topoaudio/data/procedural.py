"""The embedded default training set: sounds synthesised on the fly from (seed, index), no files needed.

Fifteen classes in three families, each made acoustically distinct by what a cochleagram sees (formant
patterns and consonant noise for the words, harmonic spectra and onsets for the music, spectral slope and
modulation for the environmental sounds), while nuisance parameters vary a lot within a class: pitch,
timing, speaking rate, speaker formant scaling, note count, loudness, microphone tilt, and a background
noise of random colour at 6-30 dB SNR. Synthesis is vectorised NumPy plus a few IIR filters; Python loops
only run over a handful of segments or notes, so a 2 s clip takes a few milliseconds on one core.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.signal import lfilter, sosfilt

TARGET_RMS = 0.1
_TABLE_SIZE = 4096  # wavetable length, a power of two so that phase wrapping is a bit mask


# --- signal primitives -------------------------------------------------------------------------------

def _resonators(freqs, bandwidths, sr: int) -> np.ndarray:
    """Second-order sections [len(freqs), 6] of a cascade of two-pole resonators, each with unit gain at
    DC (Klatt's cascade formant synthesiser), so relative formant levels follow from their frequencies.
    Frequencies are kept below Nyquist so that any `sr` gives a stable, sensible filter."""
    freqs = np.minimum(np.atleast_1d(np.asarray(freqs, float)), 0.45 * sr)
    radius = np.exp(-np.pi * np.broadcast_to(np.asarray(bandwidths, float), freqs.shape) / sr)
    a1 = -2 * radius * np.cos(2 * np.pi * freqs / sr)
    a2 = radius ** 2
    sos = np.zeros((len(freqs), 6))
    sos[:, 0], sos[:, 3], sos[:, 4], sos[:, 5] = 1 + a1 + a2, 1.0, a1, a2
    return sos


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def _coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Gaussian noise [n] with power spectrum ~ 1 / f**exponent (0 white, 1 pink, 2 brown), unit RMS.
    Drawn directly in the frequency domain: one inverse FFT, no filtering."""
    bins = n // 2 + 1
    slope = np.arange(bins, dtype=float)
    slope[0] = 1.0
    spectrum = (rng.standard_normal(bins) + 1j * rng.standard_normal(bins)) * slope ** (-exponent / 2)
    spectrum[0] = 0.0  # no DC
    return _unit_rms(np.fft.irfft(spectrum, n))


def _fade(x: np.ndarray, samples: int) -> np.ndarray:
    """Raised-cosine fade-in and fade-out over `samples` at each end, so segments start and stop
    without clicks (a click is broadband and would blur the class's spectrum)."""
    samples = min(samples, len(x) // 2)
    if samples > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(samples) / samples)
        x[:samples] *= ramp
        x[-samples:] *= ramp[::-1]
    return x


def _place(out: np.ndarray, sound: np.ndarray, start: int) -> None:
    """Add `sound` into `out` at sample `start`, cutting whatever falls off either end."""
    start = int(start)
    lo, hi = max(start, 0), min(start + len(sound), len(out))
    if hi > lo:
        out[lo:hi] += sound[lo - start:hi - start]


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


# --- harmonic tones (wavetables) ---------------------------------------------------------------------

def _wavetable(amplitudes: np.ndarray) -> np.ndarray:
    """One period [_TABLE_SIZE] with harmonic h (1-based) at amplitudes[h-1], sine phase."""
    spectrum = np.zeros(_TABLE_SIZE // 2 + 1, complex)
    spectrum[1:len(amplitudes) + 1] = -0.5j * _TABLE_SIZE * np.asarray(amplitudes)
    return np.fft.irfft(spectrum, _TABLE_SIZE)


def _harmonic_numbers(f0: float, sr: int, most: int) -> np.ndarray:
    """1..H with H <= `most` and every harmonic below 0.45 sr (no aliasing)."""
    return np.arange(1, max(1, min(most, int(0.45 * sr / f0))) + 1, dtype=float)


def _tone(rng, sr: int, samples: int, f0, bright: np.ndarray, dull: np.ndarray | None = None,
          dulling_rate: float = 0.0) -> np.ndarray:
    """A harmonic tone [samples] read from wavetables at pitch f0 (Hz, scalar or [samples]). With `dull`,
    the spectrum fades from `bright` to `dull` at `dulling_rate` per second, as in plucked strings."""
    cycles = rng.random() + np.cumsum(np.broadcast_to(f0, (samples,))) / sr
    index = (cycles * _TABLE_SIZE).astype(np.int64) & (_TABLE_SIZE - 1)
    tone = bright[index]
    if dull is not None:
        brightness = np.exp(-dulling_rate * np.arange(samples) / sr)
        tone = dull[index] + brightness * (tone - dull[index])
    return tone


def _envelope(sr: int, samples: int, attack: float, decay_rate: float) -> np.ndarray:
    """Linear attack over `attack` s, then exponential decay at `decay_rate` per second; [samples]."""
    t = np.arange(samples) / sr
    return np.minimum(t / max(attack, 1e-4), 1.0) * np.exp(-decay_rate * t)


def _flute_note(rng, sr: int, samples: int, f0: float) -> np.ndarray:
    """Few harmonics falling steeply, vibrato, slow attack, breath noise around the second harmonic."""
    h = _harmonic_numbers(f0 * 1.02, sr, 8)
    table = _wavetable(np.exp(-rng.uniform(0.9, 1.6) * (h - 1)))
    t = np.arange(samples) / sr
    vibrato = 1 + rng.uniform(0.003, 0.012) * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * t)
    breath = _unit_rms(sosfilt(_resonators([2 * f0], [400], sr), rng.standard_normal(samples)))
    note = _unit_rms(_tone(rng, sr, samples, f0 * vibrato, table)) + rng.uniform(0.05, 0.2) * breath
    return _fade(note * _envelope(sr, samples, rng.uniform(0.05, 0.12), rng.uniform(0.0, 0.6)),
                 int(0.03 * sr))


def _clarinet_note(rng, sr: int, samples: int, f0: float) -> np.ndarray:
    """Odd harmonics strong, even ones weak (a closed pipe), many harmonics, sustained."""
    h = _harmonic_numbers(f0, sr, 20)
    amplitudes = np.where(h % 2 == 1, 1.0, rng.uniform(0.03, 0.12)) / h ** rng.uniform(0.8, 1.3)
    note = _unit_rms(_tone(rng, sr, samples, f0, _wavetable(amplitudes)))
    return _fade(note * _envelope(sr, samples, rng.uniform(0.02, 0.05), rng.uniform(0.0, 0.5)),
                 int(0.02 * sr))


def _plucked_note(rng, sr: int, samples: int, f0: float) -> np.ndarray:
    """All harmonics with a pluck-position comb, bright onset dulling fast, exponential decay."""
    h = _harmonic_numbers(f0, sr, 30)
    comb = np.abs(np.sin(np.pi * h * rng.uniform(0.08, 0.3))) + 0.02
    bright, dull = _wavetable(comb / h), _wavetable(h ** -3.0)
    note = _tone(rng, sr, samples, f0, bright, dull, rng.uniform(4, 10))
    return _fade(note * _envelope(sr, samples, 0.002, rng.uniform(2, 6)), int(0.01 * sr))


def _piano_note(rng, sr: int, samples: int, f0: float) -> np.ndarray:
    """Hammered string: harmonics ~ 1/h**1.2 dulling towards 1/h**3, decaying."""
    h = _harmonic_numbers(f0, sr, 25)
    bright, dull = _wavetable(h ** -rng.uniform(1.0, 1.4)), _wavetable(h ** -3.0)
    note = _tone(rng, sr, samples, f0, bright, dull, rng.uniform(3, 6))
    return _fade(note * _envelope(sr, samples, 0.004, rng.uniform(1.5, 4)), int(0.01 * sr))


# --- speech-like words (source-filter synthesis) -----------------------------------------------------

# Formant frequencies (F1, F2, F3) in Hz of an adult speaker, scaled per speaker by vocal-tract length.
_VOWELS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (270, 2290, 3010),
           "o": (570, 840, 2410), "u": (300, 870, 2240)}
_NASALS = {"m": (250, 1100, 2300), "n": (250, 1700, 2600)}
# Noise consonants: (centre Hz, bandwidth Hz, RMS level relative to a vowel, duration s at normal rate).
_FRICATIVES = {"s": (5500, 2500, 0.35, 0.12), "sh": (2800, 1200, 0.45, 0.13), "f": (6000, 6000, 0.15, 0.10)}
# Stops: burst (centre Hz, bandwidth Hz), voiced?
_STOPS = {"p": (900, 1200, False), "t": (4000, 2500, False), "k": (2000, 900, False),
          "b": (900, 1200, True), "d": (3500, 2000, True)}


def _glottal_source(rng, sr: int, samples: int) -> np.ndarray:
    """Voiced excitation [samples]: a pulse train at a randomly gliding pitch, low-passed like glottal
    flow (-12 dB/octave) and differentiated like lip radiation (+6 dB/octave), with a little breath."""
    f0 = _log_uniform(rng, 85, 240)
    x = np.linspace(0, 1, samples)
    contour = f0 * (1 + rng.uniform(-0.3, 0.3) * x - rng.uniform(0.0, 0.2) * x ** 2)
    pulses = np.diff(np.floor(rng.random() + np.cumsum(contour) / sr), prepend=0.0)
    pole = np.exp(-2 * np.pi * 150 / sr)
    source = lfilter([1.0, -1.0], [1.0, -2 * pole, pole ** 2], pulses)
    return _unit_rms(source) + rng.uniform(0.0, 0.1) * rng.standard_normal(samples)


def _speak(rng, sr: int, n: int, phonemes: tuple[str, ...]) -> np.ndarray:
    """One spoken word [n] at a random onset. Each phoneme is synthesised on its own stretch (plus a
    10 ms overlap, tapered, so neighbouring phonemes cross-fade) and overlap-added."""
    rate = rng.uniform(0.75, 1.3)  # speaking rate: durations divide by it
    tract = rng.uniform(0.85, 1.2)  # formant scaling: short vocal tract -> high formants
    overlap = int(0.01 * sr)
    plan = []  # (phoneme, samples)
    for k, phoneme in enumerate(phonemes):
        if phoneme in _VOWELS:
            seconds = 0.22 if k == len(phonemes) - 1 else 0.15  # final vowels are lengthened
        elif phoneme in _NASALS:
            seconds = 0.07
        elif phoneme in _FRICATIVES:
            seconds = _FRICATIVES[phoneme][3]
        else:
            seconds = 0.08  # closure and burst of a stop
        plan.append((phoneme, int(seconds / rate * sr)))
    word_samples = sum(samples for _, samples in plan) + 2 * overlap
    source = _glottal_source(rng, sr, word_samples)
    word = np.zeros(word_samples)
    position = 0
    for phoneme, samples in plan:
        span = samples + 2 * overlap
        level = 10 ** (rng.uniform(-3, 3) / 20)
        if phoneme in _VOWELS or phoneme in _NASALS:
            formants = np.array((_VOWELS | _NASALS)[phoneme]) * tract
            widths = rng.uniform(50, 110, 3)
            sound = _unit_rms(sosfilt(_resonators(formants, widths, sr), source[position:position + span]))
            level *= 1.0 if phoneme in _VOWELS else 0.4
        elif phoneme in _FRICATIVES:
            centre, width, relative, _ = _FRICATIVES[phoneme]
            noise = rng.standard_normal(span)
            sound = _unit_rms(sosfilt(_resonators([centre * tract ** 0.5], [width], sr), noise))
            level *= relative
        else:
            centre, width, voiced = _STOPS[phoneme]
            closure = int(0.6 * samples)  # silence (a faint voice bar if voiced), then the burst
            sound = np.zeros(span)
            burst = rng.standard_normal(span - closure) * np.exp(-np.arange(span - closure) / (0.012 * sr))
            sound[closure:] = _unit_rms(sosfilt(_resonators([centre * tract ** 0.5], [width], sr), burst))
            if voiced:
                sound[:closure] = 0.1 * _unit_rms(sosfilt(_resonators([200], [100], sr),
                                                          source[position:position + closure]))
            level *= 0.5 if voiced else 0.7
        word[position:position + span] += _fade(sound * level, overlap)
        position += samples
    out = np.zeros(n)
    _place(out, word, rng.integers(0, max(1, n - word_samples)))
    return out


# --- the classes -------------------------------------------------------------------------------------

def _word(*phonemes: str):
    return lambda rng, sr, n: _speak(rng, sr, n, phonemes)


def _single_notes(instrument, low_hz: float, high_hz: float):
    """One or two notes of one instrument, each 0.5-1.0 s (1-1.6 s when alone), random pitch and onset."""
    def synthesise(rng, sr: int, n: int) -> np.ndarray:
        out = np.zeros(n)
        count = rng.integers(1, 3)
        start = rng.uniform(0, 0.3) * n
        for _ in range(count):
            samples = int(rng.uniform(*((1.0, 1.6) if count == 1 else (0.5, 0.9))) * sr)
            velocity = rng.uniform(0.5, 1.0)
            _place(out, velocity * instrument(rng, sr, samples, _log_uniform(rng, low_hz, high_hz)), start)
            start += samples + rng.uniform(0.0, 0.1) * sr
        return out
    return synthesise


def _chord(rng, sr: int, n: int) -> np.ndarray:
    """One or two strikes of a 3-4 note piano chord (major, minor, dominant or major seventh)."""
    shapes = [(0, 4, 7), (0, 3, 7), (0, 4, 7, 10), (0, 4, 7, 11)]
    out = np.zeros(n)
    start = rng.uniform(0, 0.3) * n
    for _ in range(rng.integers(1, 3)):
        root = _log_uniform(rng, 110, 330)
        samples = int(rng.uniform(0.7, 1.2) * sr)
        for semitones in shapes[rng.integers(len(shapes))]:
            stagger = rng.uniform(0, 0.02) * sr  # fingers never land together
            note = _piano_note(rng, sr, samples, root * 2 ** (semitones / 12))
            _place(out, rng.uniform(0.6, 1.0) * note, start + stagger)
        start += samples
    return out


def _melody(rng, sr: int, n: int) -> np.ndarray:
    """5-9 short notes of one instrument stepping through a major pentatonic scale."""
    instrument = (_flute_note, _clarinet_note, _plucked_note)[rng.integers(3)]
    scale = np.array([0, 2, 4, 7, 9, 12, 14, 16, 19, 21])
    root = _log_uniform(rng, 200, 400)
    degree = rng.integers(len(scale))
    out = np.zeros(n)
    start = rng.uniform(0, 0.15) * n
    for _ in range(rng.integers(5, 10)):
        samples = int(rng.uniform(0.12, 0.28) * sr)
        note = instrument(rng, sr, samples, root * 2 ** (scale[degree] / 12))
        _place(out, rng.uniform(0.6, 1.0) * note, start)
        start += samples
        degree = int(np.clip(degree + rng.choice([-2, -1, 1, 2]), 0, len(scale) - 1))
    return out


def _drums(rng, sr: int, n: int) -> np.ndarray:
    """A bar or so of kick (falling sine), snare (noise and a tone) and hi-hat (high noise) on an eighth-note
    grid at 90-170 beats per minute."""
    t = np.arange(int(0.3 * sr)) / sr
    sweep = 45 + rng.uniform(70, 140) * np.exp(-t * rng.uniform(20, 40))
    kick = np.sin(2 * np.pi * np.cumsum(sweep) / sr) * np.exp(-t * rng.uniform(8, 15))
    snare_noise = sosfilt(_resonators([rng.uniform(1500, 3000)], [2500], sr), rng.standard_normal(len(t)))
    snare = (_unit_rms(snare_noise) + 0.5 * np.sin(2 * np.pi * rng.uniform(180, 230) * t)) \
        * np.exp(-t * rng.uniform(18, 30))
    hat = np.diff(rng.standard_normal(len(t) + 2), 2) * np.exp(-t * rng.uniform(60, 100)) * 0.3
    eighth = 30 / rng.uniform(90, 170) * sr
    out = np.zeros(n)
    offset = rng.uniform(0, 0.25) * n
    for step in range(int((n - offset) / eighth) + 1):
        velocity = rng.uniform(0.6, 1.0)
        at = offset + step * eighth
        if step % 4 == 0 or rng.random() < 0.15:
            _place(out, velocity * kick, at)
        if step % 4 == 2:
            _place(out, velocity * snare, at)
        if rng.random() < 0.8:
            _place(out, velocity * hat, at)
    return out


def _hiss(rng, sr: int, n: int) -> np.ndarray:
    """Stationary white-ish noise (spectral exponent -0.6..0.4) with a gentle level drift."""
    drift = 1 + rng.uniform(0, 0.2) * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * np.arange(n) / sr)
    return _coloured_noise(rng, n, rng.uniform(-0.6, 0.4)) * drift


def _rumble(rng, sr: int, n: int) -> np.ndarray:
    """Brown noise (exponent 1.6-2.4) swelling slowly like wind."""
    t = np.arange(n) / sr
    swell = 1 + rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t + rng.uniform(0, 6.3))
    return _coloured_noise(rng, n, rng.uniform(1.6, 2.4)) * swell


def _impacts(rng, sr: int, n: int) -> np.ndarray:
    """2-6 knocks at random times: a short noise burst ringing two or three narrow resonances."""
    out = np.zeros(n)
    samples = int(0.3 * sr)
    for _ in range(rng.integers(2, 7)):
        burst = np.zeros(samples)
        click = int(0.004 * sr)
        burst[:click] = rng.standard_normal(click)
        modes = rng.integers(2, 4)
        frequencies = [_log_uniform(rng, 200, 4000) for _ in range(modes)]
        sections = _resonators(frequencies, rng.uniform(5, 60, modes), sr)
        ring = sum(sosfilt(section[None], burst) for section in sections)  # modes ring in parallel
        _place(out, rng.uniform(0.3, 1.0) * _fade(_unit_rms(ring), int(0.002 * sr)), rng.integers(0, n))
    return out


def _modulated_noise(rng, sr: int, n: int) -> np.ndarray:
    """Pink-ish noise pulsing at 4-16 Hz (an engine, a helicopter), deep modulation."""
    t = np.arange(n) / sr
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(4, 16) * t + rng.uniform(0, 6.3))
    depth = rng.uniform(0.6, 1.0)
    modulation = 1 - depth + depth * wave ** rng.uniform(1, 3)
    return _coloured_noise(rng, n, rng.uniform(0.5, 1.5)) * modulation


_SYNTHESISERS = {
    "speech_kiti": _word("k", "i", "t", "i"),
    "speech_sofa": _word("s", "o", "f", "a"),
    "speech_menu": _word("m", "e", "n", "u"),
    "speech_ushu": _word("u", "sh", "u"),
    "speech_bade": _word("b", "a", "d", "e"),
    "music_flute": _single_notes(_flute_note, 260, 1000),
    "music_clarinet": _single_notes(_clarinet_note, 140, 600),
    "music_plucked_string": _single_notes(_plucked_note, 80, 500),
    "music_piano_chord": _chord,
    "music_melody": _melody,
    "music_drums": _drums,
    "env_hiss": _hiss,
    "env_rumble": _rumble,
    "env_impacts": _impacts,
    "env_modulated_noise": _modulated_noise,
}

CLASSES: tuple[str, ...] = tuple(_SYNTHESISERS)


def synthesise(class_index: int, rng: np.random.Generator, sr: int = 20000, n: int = 40000) -> np.ndarray:
    """One clip [n] of class CLASSES[class_index], coloured by a random microphone tilt (first-order
    filter, up to +-15 dB from DC to Nyquist) and mixed with background noise of random colour (exponent
    0-2) at 6-30 dB SNR, so that neither overall spectral slope nor a clean background gives the class
    away. float64, demeaned, RMS 0.1."""
    sound = _SYNTHESISERS[CLASSES[class_index]](rng, sr, n)
    sound = lfilter([1.0, -rng.uniform(-0.7, 0.7)], [1.0], sound)
    power = np.mean(sound ** 2)
    snr_db = rng.uniform(6, 30)
    sound = sound + _coloured_noise(rng, n, rng.uniform(0, 2)) * np.sqrt(power * 10 ** (-snr_db / 10))
    return demeaned_at_target_rms(sound)


def demeaned_at_target_rms(x: np.ndarray) -> np.ndarray:
    """x with its mean removed, scaled to RMS TARGET_RMS: how every synthesised clip ends."""
    x = x - x.mean()
    return x * (TARGET_RMS / (np.sqrt(np.mean(x ** 2)) + 1e-12))


class ProceduralSounds(torch.utils.data.Dataset):
    """`size` procedurally synthesised clips, labels balanced: item i has label i % len(CLASSES).

    Item i is a pure function of (seed, i): it draws from `numpy.random.default_rng([seed, i])`, so it
    does not depend on access order, DataLoader workers or earlier calls.
    Items: (waveform float32 [round(sr * seconds)], demeaned, RMS 0.1; label int).
    """

    def __init__(self, size: int, seed: int = 0, sr: int = 20000, seconds: float = 2.0):
        if int(size) != size or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if int(sr) != sr or sr <= 0:
            raise ValueError(f"sr must be a positive integer sample rate in Hz, got {sr!r}")
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        self.size, self.seed, self.sr, self.seconds = int(size), int(seed), int(sr), float(seconds)
        self.samples = int(round(self.sr * self.seconds))
        if self.samples < 1:
            raise ValueError(f"sr * seconds = {sr * seconds} rounds to no samples")
        self.classes = CLASSES

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        label = int(index) % len(CLASSES)
        rng = np.random.default_rng([self.seed, int(index)])
        waveform = synthesise(label, rng, self.sr, self.samples)
        return torch.from_numpy(waveform.astype(np.float32)), label
