"""SpeechMusicScenes: words spoken by many synthetic voices, General MIDI music and environmental
textures, each over a background at -5 to +15 dB SNR (the word / speaker / noise recipe of the
paper's CochResNet50, synthesised: docs/SCENES.md).

Item i is a pure function of (seed, split, i): every random choice comes from
`numpy.random.default_rng([seed, split code, i])` and the synthesisers are deterministic (speech.py,
music.py), so items do not depend on access order, DataLoader workers or earlier calls.

Speed: items are synthesised when asked for, in the DataLoader worker, with no cache. Measured with
one DataLoader worker on a shared 2-core machine: a batch of 16 in 0.05 s (quiet) to 0.25 s (load 6);
per clip ~5 ms for speech (a word ~3.5 ms with espeak-ng's reload), ~2 ms for music or a texture.
That is well under the ~1 s a cochcnn training step takes on 2 cores, so a cache would only cost
memory (and 50 words x 164 voices x per-clip pitch and rate would rarely hit it).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.signal import lfilter

from . import music, speech
from .procedural import _hiss, _impacts, _modulated_noise, _rumble, _unit_rms, demeaned_at_target_rms

CATEGORIES = ("speech", "music", "environment")
# "speaker_validation": new renderings of words by the training voices, so that the speaker task
# (whose classes are those voices) can be measured; "validation" speaks only with held-out voices.
SPLITS = ("train", "validation", "speaker_validation")
SNR_RANGE_DB = (-5.0, 15.0)
_TEXTURES = {"hiss": _hiss, "rumble": _rumble, "impacts": _impacts, "modulated_noise": _modulated_noise}
ENVIRONMENT_KINDS = tuple(_TEXTURES) + ("sound_effect",)
DEFAULT_WORDS = 50
_DISTRACTOR_PROBABILITY = 0.4  # of a speech (music) clip's background being music (a word), not a texture


def _tasks(words: int, voices: int, instrument: str) -> dict[str, int]:
    return {"word": words, "speaker": voices,
            "instrument": music.N_INSTRUMENTS if instrument == "program" else music.N_FAMILIES,
            "category": len(CATEGORIES)}


def check_packages() -> None:
    """Raise ImportError naming every missing package and how to install them (before any work)."""
    problems = []
    for check in (speech.check_installation, music.check_installation):
        try:
            check()
        except ImportError as error:
            problems.append(str(error).split(":")[0])
    if problems:
        raise ImportError(f"SpeechMusicScenes cannot synthesise sounds ({'; '.join(problems)}): "
                          f"{speech.INSTALL_HINT}")


class SpeechMusicScenes(torch.utils.data.Dataset):
    """`size` clips of 2 s at 20 kHz; item i is (waveform float32 [sr * seconds], demeaned, RMS 0.1;
    target dict task -> class, -1 where the task does not apply).

    Category i % 3: 0 speech (word and speaker labels), 1 music (instrument label), 2 environment
    (only the category label). Labels are balanced: within speech, word (i // 3) % words; within music,
    instrument (i // 3) % n_instruments. The speaker is drawn at random from the split's voices.

    Splits hold out voices and renderings, not words or instruments: "train" speaks with the first
    `voices` of speech.TRAIN_VOICES (all 164 by default) and its speaker label is that voice's index;
    "validation" speaks only with speech.HELD_OUT_VOICES (40 voices built from voice variants that no
    training voice uses), so its speaker label is -1 (a new voice has no training class); the word,
    instrument and category tasks apply in both. "speaker_validation" holds only speech clips, spoken
    by the training voices, and labels only the speaker (every other task -1): held-out clips of the
    training voices, the one split that can measure the speaker task. Different split codes in the
    seed give different pitches, rates, onsets, backgrounds and SNRs.

    words: the word task's classes, the first `words` of speech.WORDS (2-220, default 50).
    instrument: "program" (121 classes: GM programs 0-119 and percussion) or "family" (16: the 15
    melodic GM families and percussion).
    `TASKS` (class attribute) holds the default options' task sizes; an instance's `TASKS` / `tasks`
    hold its own.

    >>> ds = SpeechMusicScenes(30, words=40)  # doctest: +SKIP
    >>> waveform, target = ds[0]; ds.tasks["word"], ds.snr_db(0)  # doctest: +SKIP
    """

    TASKS = _tasks(DEFAULT_WORDS, len(speech.TRAIN_VOICES), "program")

    def __init__(self, size: int, *, seed: int = 0, split: str = "train", seconds: float = 2.0,
                 sr: int = 20000, words: int | None = DEFAULT_WORDS, voices: int | None = None,
                 instrument: str = "program"):
        if int(size) != size or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if int(sr) != sr or sr < 8000:
            raise ValueError(f"sr must be an integer sample rate >= 8000 Hz, got {sr!r}")
        if not 0.5 <= seconds <= 60:
            raise ValueError(f"seconds must be in [0.5, 60] (a word lasts up to ~0.9 s), got {seconds!r}")
        words = len(speech.WORDS) if words is None else words
        if int(words) != words or not 2 <= words <= len(speech.WORDS):
            raise ValueError(f"words must be an integer in [2, {len(speech.WORDS)}], got {words!r}")
        voices = len(speech.TRAIN_VOICES) if voices is None else voices
        if int(voices) != voices or not 2 <= voices <= len(speech.TRAIN_VOICES):
            raise ValueError(f"voices must be an integer in [2, {len(speech.TRAIN_VOICES)}], got {voices!r}")
        if instrument not in ("program", "family"):
            raise ValueError(f"instrument must be 'program' or 'family', got {instrument!r}")
        check_packages()
        self.size, self.seed, self.split = int(size), int(seed), split
        self.sr, self.seconds = int(sr), float(seconds)
        self.samples = int(round(self.sr * self.seconds))
        self.words, self.instrument = int(words), instrument
        self.voices = (speech.HELD_OUT_VOICES if split == "validation"
                       else speech.TRAIN_VOICES[:int(voices)])
        self.TASKS = _tasks(self.words, int(voices), instrument)

    @property
    def tasks(self) -> dict[str, int]:
        return dict(self.TASKS)

    def __len__(self) -> int:
        return self.size

    def info(self, index: int) -> dict:
        """Every random choice behind item `index` (no synthesis): category, word, voice, instrument
        label, environment kind, background, snr_db, microphone tilt and the synthesisers' seeds."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), int(index)])
        category, turn = ((0, int(index)) if self.split == "speaker_validation"
                          else (int(index) % 3, int(index) // 3))
        plan = {"index": int(index), "category": category, "category_name": CATEGORIES[category]}
        if category == 0:
            plan["foreground"] = self._speech_plan(rng, turn % self.words)
        elif category == 1:
            plan["foreground"] = self._music_plan(rng, turn)
        else:
            plan["foreground"] = {"kind": ENVIRONMENT_KINDS[turn % len(ENVIRONMENT_KINDS)]}
        if category < 2 and rng.random() < _DISTRACTOR_PROBABILITY:
            plan["background"] = (self._music_plan(rng, int(rng.integers(music.N_INSTRUMENTS)))
                                  if category == 0 else
                                  self._speech_plan(rng, int(rng.integers(len(speech.WORDS)))))
        else:  # a texture, never the foreground's own kind
            kinds = [k for k in ENVIRONMENT_KINDS if k != plan["foreground"].get("kind")]
            plan["background"] = {"kind": kinds[rng.integers(len(kinds))]}
        plan["snr_db"] = float(rng.uniform(*SNR_RANGE_DB))
        plan["tilt"] = float(rng.uniform(-0.7, 0.7))
        seeds = rng.integers(2 ** 62, size=2)
        plan["foreground"]["seed"], plan["background"]["seed"] = int(seeds[0]), int(seeds[1])
        return plan

    def _speech_plan(self, rng: np.random.Generator, word: int) -> dict:
        voice = int(rng.integers(len(self.voices)))
        return {"kind": "speech", "word": word, "word_text": speech.WORDS[word], "voice": voice,
                "voice_name": self.voices[voice].name, "pitch_shift": int(rng.integers(-4, 5)),
                "rate_scale": float(rng.uniform(0.9, 1.1)), "onset": float(rng.random())}

    def _music_plan(self, rng: np.random.Generator, turn: int) -> dict:
        if self.instrument == "program":
            label = turn % music.N_INSTRUMENTS
        else:  # a family label; the program within it is drawn
            family = turn % music.N_FAMILIES
            label = music.PERCUSSION if family == music.N_FAMILIES - 1 else 8 * family + int(rng.integers(8))
        return {"kind": "music", "instrument": label, "family": music.family(label)}

    def snr_db(self, index: int) -> float:
        """Foreground-to-background power ratio of item `index` in dB, over the whole clip."""
        return self.info(index)["snr_db"]

    def target(self, plan: dict) -> dict[str, int]:
        foreground = plan["foreground"]
        if self.split == "speaker_validation":
            return {"word": -1, "speaker": foreground["voice"], "instrument": -1, "category": -1}
        target = {"word": -1, "speaker": -1, "instrument": -1, "category": plan["category"]}
        if foreground["kind"] == "speech":
            target["word"] = foreground["word"]
            target["speaker"] = foreground["voice"] if self.split == "train" else -1
        elif foreground["kind"] == "music":
            target["instrument"] = foreground["instrument" if self.instrument == "program" else "family"]
        return target

    def _render(self, source: dict) -> np.ndarray:
        rng, n = np.random.default_rng(source["seed"]), self.samples
        if source["kind"] == "speech":
            word = speech.speak(source["word_text"], self.voices[source["voice"]], self.sr,
                                source["pitch_shift"], source["rate_scale"])[:n]
            out = np.zeros(n)
            start = int(source["onset"] * (n - len(word)))
            out[start:start + len(word)] = word
            return out
        if source["kind"] == "music":
            return music.play(source["instrument"], rng, self.sr, n)
        if source["kind"] == "sound_effect":
            return music.sound_effect(rng, self.sr, n)[0]
        return _TEXTURES[source["kind"]](rng, self.sr, n)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, int]]:
        plan = self.info(index)
        foreground, background = (_unit_rms(self._render(plan[p])) for p in ("foreground", "background"))
        mix = foreground + background * 10 ** (-plan["snr_db"] / 20)
        mix = lfilter([1.0, -plan["tilt"]], [1.0], mix)  # microphone tilt, up to +-15 dB DC to Nyquist
        mix = demeaned_at_target_rms(mix)
        return torch.from_numpy(mix.astype(np.float32)), self.target(plan)
