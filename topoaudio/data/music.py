"""Music from General MIDI instruments: notes, chords and short phrases rendered from the SoundFont
TimGM6mb.sf2 (GPL, by Tim Brechbill), which ships inside the PyPI wheel `pretty-midi`, by
`tinysoundfont` (MIT; installed without its playback-only dependency pyaudio). Nothing downloads.

Instrument labels: 0-119 are the melodic GM programs (the program number), 120 is percussion (a GM
drum kit on MIDI channel 10). The GM sound effects (programs 120-127: fret noise, breath, seashore,
bird, telephone, helicopter, applause, gunshot) are not music here: `sound_effect` renders them as
environmental sounds. Families: label // 8 (the 15 melodic GM families), percussion is family 15.

Rendering a 2 s clip takes well under a millisecond per note on one core (measured: 128 one-second
three-note chords in 35 ms), so clips are rendered on demand, not cached. tinysoundfont is not
thread-safe: one process-wide lock serialises it; the SoundFont loads once per process (12 ms).
"""
from __future__ import annotations

import os
import threading

import numpy as np

from .speech import INSTALL_HINT

N_MELODIC = 120  # GM programs 0-119; 120-127 are sound effects
PERCUSSION = N_MELODIC  # the instrument label of drum kits
N_INSTRUMENTS = N_MELODIC + 1
N_FAMILIES = N_MELODIC // 8 + 1  # 15 melodic families and percussion
SOUND_EFFECTS = tuple(range(120, 128))
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40, 48)  # TimGM6mb's kits in bank 128 (Standard ... Orchestra)

# Playable MIDI key range of each melodic GM family, roughly the real instruments' ranges so that no
# note falls outside the samples a SoundFont maps for it.
_FAMILY_KEYS = {0: (36, 84), 1: (60, 96), 2: (36, 84), 3: (40, 76), 4: (28, 55), 5: (43, 84),
                6: (43, 84), 7: (45, 77), 8: (48, 79), 9: (60, 96), 10: (48, 84), 11: (40, 76),
                12: (40, 76), 13: (48, 79), 14: (48, 79), 15: (48, 72)}
_SCALES = ((0, 2, 4, 5, 7, 9, 11), (0, 2, 3, 5, 7, 8, 10), (0, 2, 4, 7, 9))  # major, minor, pentatonic
_CHORDS = ((0, 4, 7), (0, 3, 7), (0, 4, 7, 10), (0, 4, 7, 11), (0, 5, 7))
# GM percussion keys grouped by role, for patterns that sound like drumming rather than random hits.
_KICKS, _SNARES, _HATS = (35, 36), (38, 40, 37), (42, 44, 46, 51, 53)
_OTHER_DRUMS = (39, 41, 43, 45, 47, 48, 49, 50, 52, 54, 55, 56, 57, 60, 61, 62, 63, 64, 75, 76, 77)

_LOCK = threading.Lock()
_state: dict = {}


def family(label: int) -> int:
    """The family of an instrument label (GM program // 8; percussion is N_FAMILIES - 1)."""
    if not 0 <= label < N_INSTRUMENTS:
        raise ValueError(f"instrument label must be in [0, {N_INSTRUMENTS}), got {label}")
    return N_FAMILIES - 1 if label == PERCUSSION else label // 8


def soundfont_path() -> str:
    """Where pretty-midi's TimGM6mb.sf2 is (the package is located, not imported)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("pretty_midi")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"music needs the SoundFont inside the pretty-midi package: {INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "TimGM6mb.sf2")
    if not os.path.isfile(path):
        raise RuntimeError(f"pretty-midi is installed but {path} is missing; reinstall pretty-midi")
    return path


def check_installation() -> None:
    """Raise ImportError naming what to install if tinysoundfont or the SoundFont is missing."""
    import importlib

    soundfont_path()
    try:  # the package first: `import a.b` would not notice a package blocked in sys.modules
        importlib.import_module("tinysoundfont")
        importlib.import_module("tinysoundfont._tinysoundfont")
    except ImportError as error:
        raise ImportError(f"music needs the tinysoundfont package: {INSTALL_HINT}") from error


def _soundfont(sr: int):
    """The process's SoundFont, set to render mono float32 at `sr` (call with _LOCK held)."""
    if "soundfont" not in _state:
        check_installation()
        from tinysoundfont import _tinysoundfont

        _state["module"] = _tinysoundfont
        _state["soundfont"] = _tinysoundfont.SoundFont(soundfont_path())
        _state["sr"] = None
    soundfont = _state["soundfont"]
    if _state["sr"] != sr:
        soundfont.set_output(_state["module"].OutputMode.Mono, int(sr), 0.0)
        _state["sr"] = sr
    return soundfont


def instrument_name(label: int) -> str:
    """The SoundFont's name for an instrument label ("Piano 1", ..., "percussion")."""
    if family(label) == N_FAMILIES - 1:
        return "percussion"
    with _LOCK:
        return _soundfont(20000).get_preset_name(0, int(label))


def _render(program: int, drums: bool, events: list[tuple[int, int, float]], sr: int, n: int) -> np.ndarray:
    """Play `events` (sample, key, velocity 0-1; velocity 0 releases the key) on one channel and return
    float64 [n]. Each clip starts from silence, independent of earlier clips: tinysoundfont's reset only
    starts a fast release of the sounding voices, so 0.2 s are rendered and discarded after it."""
    out = np.zeros(n, np.float32)
    channel = 9 if drums else 0
    with _LOCK:
        soundfont = _soundfont(sr)
        soundfont.reset()
        soundfont.render(memoryview(np.zeros(int(0.2 * sr), np.float32)).cast("B"), False)
        soundfont.channel_set_preset_number(channel, int(program), drums)
        position = 0
        for at, key, velocity in sorted(events, key=lambda e: (e[0], e[2])):  # releases first
            at = int(min(max(at, position), n))
            if at > position:
                soundfont.render(memoryview(out[position:at]).cast("B"), False)
                position = at
            if velocity > 0:
                soundfont.channel_note_on(channel, int(key), float(velocity))
            else:
                soundfont.channel_note_off(channel, int(key))
        if position < n:
            soundfont.render(memoryview(out[position:]).cast("B"), False)
    return out.astype(np.float64)


def _note(events, start: float, seconds: float, key: int, velocity: float, sr: int) -> None:
    events.append((int(start * sr), key, velocity))
    events.append((int((start + seconds) * sr), key, 0.0))


def _melodic_events(program: int, rng: np.random.Generator, sr: int, seconds: float) -> list:
    """A few notes, a chord or two, or a short phrase of `program`, starting in the first 30 %."""
    low, high = _FAMILY_KEYS[program // 8]
    events: list = []
    start = rng.uniform(0, 0.3) * seconds
    form = rng.integers(3)
    if form == 0:  # one or two long notes
        for _ in range(rng.integers(1, 3)):
            length = rng.uniform(0.4, 1.2)
            _note(events, start, length, int(rng.integers(low, high + 1)), rng.uniform(0.5, 1.0), sr)
            start += length + rng.uniform(0.0, 0.15)
    elif form == 1:  # one or two chords
        for _ in range(rng.integers(1, 3)):
            root, length = int(rng.integers(low, max(low + 1, high - 11))), rng.uniform(0.5, 1.0)
            for interval in _CHORDS[rng.integers(len(_CHORDS))]:
                stagger = rng.uniform(0, 0.02)  # fingers never land together
                _note(events, start + stagger, length, root + interval, rng.uniform(0.5, 0.9), sr)
            start += length
    else:  # a phrase stepping through a scale
        scale = np.array(_SCALES[rng.integers(len(_SCALES))])
        keys = np.concatenate([scale + 12 * octave for octave in range(4)])
        root = int(rng.integers(low, max(low + 1, high - 12)))
        degree = int(rng.integers(len(_SCALES[0])))
        step = rng.uniform(0.12, 0.3)
        while start < seconds:
            length = step * rng.choice([1, 1, 2])
            key = root + int(keys[degree])
            _note(events, start, length * rng.uniform(0.7, 1.0), key, rng.uniform(0.5, 1.0), sr)
            start += length
            degree = int(np.clip(degree + rng.choice([-2, -1, 1, 2]), 0, len(keys) - 1))
    return events


def _drum_events(rng: np.random.Generator, sr: int, seconds: float) -> list:
    """Kick, snare and hi-hat on an eighth-note grid at 80-170 beats per minute, plus other drums."""
    events: list = []
    eighth = 30 / rng.uniform(80, 170)
    extra = rng.choice(_OTHER_DRUMS, 2)
    kick, snare, hat = rng.choice(_KICKS), rng.choice(_SNARES), rng.choice(_HATS)
    start = rng.uniform(0, 0.2) * seconds
    for step in range(int((seconds - start) / eighth) + 1):
        at = start + step * eighth
        hits = [hat] if rng.random() < 0.8 else []
        if step % 4 == 0 or rng.random() < 0.1:
            hits.append(kick)
        if step % 4 == 2:
            hits.append(snare)
        if rng.random() < 0.15:
            hits.append(rng.choice(extra))
        for key in hits:
            _note(events, at, 0.1, int(key), rng.uniform(0.5, 1.0), sr)
    return events


def play(label: int, rng: np.random.Generator, sr: int = 20000, n: int = 40000) -> np.ndarray:
    """Music of instrument `label` (0-119 a GM program, 120 percussion): float64 [n], raw SoundFont level
    (scale it yourself). A pure function of (label, rng state, sr, n)."""
    family(label)  # checks the range
    seconds = n / sr
    if label == PERCUSSION:
        return _render(int(rng.choice(DRUM_KITS)), True, _drum_events(rng, sr, seconds), sr, n)
    return _render(label, False, _melodic_events(label, rng, sr, seconds), sr, n)


def sound_effect(rng: np.random.Generator, sr: int = 20000, n: int = 40000) -> tuple[np.ndarray, int]:
    """An environmental sound from a GM sound-effect program (120-127): 1-4 events of random pitch and
    length. Returns (float64 [n], program)."""
    program = int(rng.choice(SOUND_EFFECTS))
    low, high = _FAMILY_KEYS[15]
    events: list = []
    seconds = n / sr
    for _ in range(rng.integers(1, 5)):
        _note(events, rng.uniform(0, 0.8) * seconds, rng.uniform(0.3, 1.5), int(rng.integers(low, high + 1)),
              rng.uniform(0.5, 1.0), sr)
    return _render(program, False, events, sr, n), program
