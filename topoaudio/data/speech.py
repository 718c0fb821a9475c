"""Spoken English words from espeak-ng, the formant synthesiser that ships (library and voice data, GPL-3)
inside the PyPI wheel `espeakng-loader`; driven through ctypes, nothing downloads.

A *voice* is an accent (an English espeak-ng language: en, en-us, en-gb-x-rp, ...), a voice variant
(a file in espeak-ng-data/voices/!v: m1..m8, f1..f5, klatt..klatt6, whisper, ...), a base pitch, a
pitch range and a speaking rate. The variants are split once, by name, into training and held-out
variants, so a held-out voice never shares a variant with a training voice.

Determinism. espeak-ng keeps synthesis state in C statics that its API never resets (the pitch
flutter index, the automatic gain, the echo buffer, the glottal phase), so the same word in the same
voice comes out different after other words. `speak` therefore unloads the library (dlclose) and
loads it afresh before every word, seeds espeak-ng's noise generator, and seeds the C library's
rand(), which its Klatt synthesiser draws its noise from (the variants with a `klatt` line: caleb,
Reed, klatt..klatt6, ...; before this seed, their words changed with every rendering): each rendering
is then a pure function of its arguments (unless another package in the process holds libespeak-ng
open too: then dlclose cannot unload it). A reload plus synthesis costs ~3.5 ms per word on one
core (measured), so no cache is needed. espeak-ng is not thread-safe: one process-wide lock
serialises it; DataLoader workers are separate processes, each with its own copy of the library.
"""
from __future__ import annotations

import ctypes
import functools
import os
import threading
from dataclasses import dataclass

import numpy as np
from scipy.signal import firwin, resample_poly

ESPEAK_SR = 22050  # espeak-ng's fixed output rate
INSTALL_HINT = ("pip install espeakng-loader pretty-midi && pip install --no-deps tinysoundfont "
                "(or the project's requirements.txt plus tinysoundfont without its dependencies)")

# 220 common English words, one or two syllables. The first 50 are the default word task: chosen to
# spread over vowels and consonants so that no two are near-homophones.
WORDS: tuple[str, ...] = (
    "water", "house", "people", "morning", "yellow", "chicken", "garden", "bottle", "window", "money",
    "river", "table", "music", "paper", "doctor", "winter", "butter", "pocket", "forest", "island",
    "sugar", "basket", "camera", "dragon", "finger", "jacket", "lemon", "monkey", "orange", "pencil",
    "rabbit", "silver", "tiger", "violin", "zebra", "candle", "engine", "feather", "hammer", "kitchen",
    "ladder", "mountain", "number", "pillow", "rocket", "shadow", "thunder", "village", "wagon", "baby",
    "apple", "bread", "chair", "dog", "egg", "fish", "goat", "hand", "ice", "juice",
    "king", "lamp", "milk", "nose", "ocean", "pig", "queen", "rain", "ship", "train",
    "uncle", "voice", "wheel", "yard", "zoo", "bird", "cake", "door", "eye", "fire",
    "girl", "hat", "ink", "key", "leaf", "moon", "nest", "owl", "pen", "road",
    "sun", "tree", "van", "wind", "box", "cloud", "desk", "farm", "gold", "hill",
    "jump", "kite", "lake", "mouse", "night", "open", "park", "quiet", "rice", "salt",
    "teeth", "under", "visit", "walk", "young", "bell", "coat", "duck", "earth", "flower",
    "green", "horse", "iron", "jelly", "kettle", "lion", "market", "needle", "oven", "party",
    "rose", "snake", "tomato", "umbrella", "vase", "whistle", "zipper", "answer", "button", "circle",
    "danger", "eagle", "family", "glass", "happy", "idea", "journey", "letter", "metal", "nothing",
    "office", "planet", "question", "record", "season", "ticket", "useful", "valley", "wonder", "yesterday",
    "blue", "cold", "dark", "early", "fast", "good", "heavy", "little", "many", "new",
    "old", "purple", "red", "slow", "tall", "warm", "white", "black", "brown", "round",
    "sing", "dance", "read", "write", "swim", "sleep", "eat", "drink", "listen", "speak",
    "think", "laugh", "cry", "run", "fly", "push", "pull", "carry", "throw", "catch",
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "hello", "thank", "please", "sorry", "yes", "no", "maybe", "always", "never", "today",
)

# English accents of espeak-ng 1.52 (en-Shaw is left out: it reads the Shavian alphabet, not Latin).
ACCENTS: tuple[str, ...] = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc",
                            "en-gb-x-gbclan", "en-gb-x-gbcwmd")

# The voice variants of espeak-ng 1.52 (voices/!v) whose names have no space ("Mr serious" has one)
# and that are not test settings ("fast"). Listed here, not read from the data directory, so that the
# voices and so the speaker classes do not depend on what is installed; `check_installation` verifies.
VARIANTS: tuple[str, ...] = (
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Demonic", "Denis", "Diogo", "Gene",
    "Gene2", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Reed",
    "RicishayMax", "RicishayMax2", "RicishayMax3", "Storm", "Tweaky", "UniRobot", "adam", "anika",
    "anikaRobot", "announcer", "antonio", "aunty", "belinda", "benjamin", "boris", "caleb", "croak",
    "david", "ed", "edward", "edward2", "f1", "f2", "f3", "f4", "f5", "grandma", "grandpa", "gustave",
    "ian", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta", "klatt", "klatt2", "klatt3", "klatt4",
    "klatt5", "klatt6", "linda", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "marcelo", "max",
    "michel", "miguel", "mike2", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert",
    "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7",
    "robosoft8", "sandro", "shelby", "steph", "steph2", "steph3", "travis", "victor", "whisper",
    "whisperf", "zac",
)
# Every fifth variant (in the order above) is held out: 20 of 102.
HELD_OUT_VARIANTS: tuple[str, ...] = VARIANTS[4::5]
ACCENTS_PER_VARIANT = 2  # each variant speaks with two different accents: two voices
_VOICE_SEED = 20261129  # fixes the voices' accents, pitches and rates for good


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker. pitch and pitch_range are espeak-ng's 0-99 settings (50 = the variant's
    own), rate is in words per minute."""
    accent: str
    variant: str
    pitch: int
    pitch_range: int
    rate: int

    @property
    def name(self) -> str:
        return f"{self.accent}+{self.variant}"


def _build_voices(variants: tuple[str, ...], rng: np.random.Generator) -> tuple[Voice, ...]:
    voices = []
    for variant in variants:
        for accent in rng.choice(ACCENTS, ACCENTS_PER_VARIANT, replace=False):
            voices.append(Voice(str(accent), variant, int(rng.integers(25, 76)), int(rng.integers(20, 81)),
                                int(rng.integers(135, 231))))
    return tuple(voices)


def _all_voices() -> tuple[tuple[Voice, ...], tuple[Voice, ...]]:
    rng = np.random.default_rng(_VOICE_SEED)
    train = _build_voices(tuple(v for v in VARIANTS if v not in HELD_OUT_VARIANTS), rng)
    return train, _build_voices(HELD_OUT_VARIANTS, rng)


TRAIN_VOICES, HELD_OUT_VOICES = _all_voices()  # 164 and 40 voices


# --- the library ---------------------------------------------------------------------------------------

_LOCK = threading.Lock()
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER
_CALLBACK_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_chunks: list[np.ndarray] = []
_library: ctypes.CDLL | None = None
_C_LIBRARY = ctypes.CDLL(None)  # the process's C library, whose rand() espeak-ng's Klatt voices use
_C_LIBRARY.srand.argtypes = [ctypes.c_uint]


def _collect(wav, count, events) -> int:
    if count > 0 and wav:
        _chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
    return 0  # 0: go on synthesising


_callback = _CALLBACK_TYPE(_collect)  # kept alive here: the library holds a raw pointer to it


def _paths() -> tuple[str, str]:
    try:
        import espeakng_loader
    except ImportError as error:
        raise ImportError(f"spoken words need the espeakng-loader package: {INSTALL_HINT}") from error
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def check_installation() -> None:
    """Raise ImportError naming what to install if espeak-ng cannot be found, and RuntimeError if its
    data lacks a voice variant this module relies on."""
    _, data = _paths()
    missing = [v for v in VARIANTS if not os.path.isfile(os.path.join(data, "voices", "!v", v))]
    if missing:
        raise RuntimeError(f"espeak-ng data at {data} lacks voice variants {missing[:5]}; "
                           f"install espeakng-loader as pinned in requirements.txt")


def _fresh_library() -> ctypes.CDLL:
    """The espeak-ng library with all its C state as at load time (see the module docstring)."""
    global _library
    import _ctypes

    library_path, data_path = _paths()
    if _library is not None:
        _library.espeak_Terminate()
        _ctypes.dlclose(_library._handle)
        _library = None
    library = ctypes.CDLL(library_path)
    library.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    library.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    library.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    library.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    library.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    # The path argument is the directory that holds espeak-ng-data.
    rate = library.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                     os.path.dirname(data_path).encode(), 0)
    if rate != ESPEAK_SR:
        raise RuntimeError(f"espeak-ng failed to initialise from {data_path} (returned {rate})")
    library.espeak_SetSynthCallback(_callback)
    _library = library
    return library


def speak(word: str, voice: Voice, sr: int = 20000, pitch_shift: int = 0,
          rate_scale: float = 1.0) -> np.ndarray:
    """`word` spoken by `voice`: float64 [samples] at `sr` Hz, full scale +-1, with espeak-ng's own
    leading and trailing silence. pitch_shift (added to voice.pitch, clipped to 0-99) and rate_scale
    vary one rendering of a voice. A pure function of its arguments.

    >>> speak("water", TRAIN_VOICES[0]).shape  # doctest: +SKIP
    (9000,)
    """
    if not word or not all(c.isalpha() or c in " '-" for c in word):
        raise ValueError(f"word must be letters (spaces, hyphens, apostrophes allowed), got {word!r}")
    if voice.variant not in VARIANTS or voice.accent not in ACCENTS:
        raise ValueError(f"unknown voice {voice!r}: accent must be one of ACCENTS, variant one of VARIANTS")
    text = word.encode()
    with _LOCK:
        library = _fresh_library()
        library.espeak_ng_SetRandSeed(0)
        _C_LIBRARY.srand(0)  # the Klatt voices' noise (klatt.c) comes from rand()
        library.espeak_SetVoiceByName(voice.name.encode())
        library.espeak_SetParameter(_RATE, int(round(np.clip(voice.rate * rate_scale, 80, 450))), 0)
        library.espeak_SetParameter(_PITCH, int(np.clip(voice.pitch + pitch_shift, 0, 99)), 0)
        library.espeak_SetParameter(_RANGE, voice.pitch_range, 0)
        _chunks.clear()
        error = library.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        samples = np.concatenate(_chunks) if _chunks else np.zeros(0, np.int16)
        _chunks.clear()
    if error != 0 or samples.size == 0:
        raise RuntimeError(f"espeak-ng produced no audio for {word!r} in voice {voice.name} (error {error})")
    wave = samples.astype(np.float64) / 32768.0
    if sr != ESPEAK_SR:
        common = int(np.gcd(int(sr), ESPEAK_SR))
        up, down = int(sr) // common, ESPEAK_SR // common
        wave = resample_poly(wave, up, down, window=_resampling_filter(up, down))
    return wave


@functools.lru_cache(maxsize=4)
def _resampling_filter(up: int, down: int) -> np.ndarray:
    """resample_poly's own default low-pass (Kaiser, beta 5), designed once instead of per word."""
    rate = max(up, down)
    return firwin(2 * 10 * rate + 1, 1.0 / rate, window=("kaiser", 5.0))
