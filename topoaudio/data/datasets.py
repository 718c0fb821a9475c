"""Loaders for published audio datasets, read from a directory you name (nothing is ever downloaded).

Every item is ``(waveform, label)``: waveform float32 [round(sr * seconds)], mono at ``sr`` (20 kHz by
default), read with soundfile, resampled with torchaudio when the file's rate differs, fitted to
``seconds`` (centre crop of a longer clip, centre zero-padding of a shorter one), demeaned and scaled to
RMS 0.1 (a silent clip stays all zeros).

Unreadable files are found lazily, when an item is loaded, so that construction stays as fast as listing
a directory: a file that fails to decode, holds NaN or infinite samples, or whose channels cancel in the
mono mix (``read_audio``; ``load_clip`` raises ``AudioFileError`` naming the file and why) is logged
(warning naming it), listed in ``skipped``, never tried again, and replaced by the next readable item
(index + 1, + 2, ..., wrapping around), so an epoch never dies on one bad file and the substitute is
deterministic. The record of unreadable files is one
flag per item in shared memory, so what DataLoader workers find is seen by the main process too (the
training loop logs the count); ``find_unreadable()`` decodes every file up front for the full list.

File names read from a dataset's metadata (ESC-50's CSV, NSynth's examples.json) must stay inside the
dataset's folder: an absolute path or one climbing out with ``..`` is refused, naming the entry.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional

TARGET_RMS = 0.1
log = logging.getLogger(__name__)

# What a decoder raises for a corrupt, truncated or vanished file (soundfile's errors are RuntimeErrors).
_DECODE_ERRORS = (RuntimeError, OSError, ValueError)


# --- one clip ----------------------------------------------------------------------------------------

# A mono mix this far (60 dB) below its loudest channel is the channels cancelling (e.g. L = x,
# R = -x), not a sound: normalising it would scale up whatever residue is left.
CANCELLED_MIX = 1e-3


class AudioFileError(ValueError):
    """An audio file that cannot stand for its sound: not decodable as audio, samples that are not
    finite, or channels that cancel in the mono mix. The message names the file; `reason` is the
    same without it."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason

    def __reduce__(self):  # pickled across DataLoader workers with both arguments
        return type(self), (self.path, self.reason)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def audio_problem(audio: np.ndarray) -> str | None:
    """What makes decoded samples [frames, channels] unusable as one mono sound (samples that are
    not finite; channels that cancel when averaged to mono), or None."""
    bad = int(np.count_nonzero(~np.isfinite(audio)))
    if bad:
        return f"{bad} of its {audio.size} samples {'is' if bad == 1 else 'are'} NaN or infinite"
    if audio.shape[1] > 1 and audio.shape[0] > 0:
        centred = audio.astype(np.float64) - audio.mean(axis=0, dtype=np.float64)
        loudest = float(np.sqrt((centred ** 2).mean(axis=0)).max())
        mixed = float(np.sqrt((centred.mean(axis=1) ** 2).mean()))
        if loudest > 0 and mixed < CANCELLED_MIX * loudest:
            level = (f"{-20 * np.log10(mixed / loudest):.0f} dB below its loudest channel"
                     if mixed > 0 else "silent")
            return (f"its {audio.shape[1]} channels cancel when mixed to mono (the mix is {level}; "
                    "a channel in antiphase?)")
    return None


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """(samples float32 [frames, channels], sample rate) of an audio file. AudioFileError naming the
    file when it is not readable audio or the samples are unusable (audio_problem)."""
    try:
        audio, file_sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    except _DECODE_ERRORS as error:
        raise AudioFileError(path, f"not readable audio ({_one_line(error)})") from None
    problem = audio_problem(audio)
    if problem:
        raise AudioFileError(path, problem)
    return audio, int(file_sr)


def normalise(waveform: torch.Tensor) -> torch.Tensor:
    """Demean and scale to RMS 0.1; an all-zero (or constant) clip comes back as zeros, never NaN."""
    waveform = waveform - waveform.mean()
    rms = waveform.pow(2).mean().sqrt()
    return waveform * (TARGET_RMS / rms) if rms > 0 else torch.zeros_like(waveform)


def fit_length(waveform: torch.Tensor, samples: int, position: float = 0.5) -> torch.Tensor:
    """Crop or zero-pad [n] to [samples]. `position` in [0, 1] says where: 0 keeps (or puts) the clip at
    the start, 1 at the end, 0.5 in the centre."""
    slack = waveform.shape[0] - samples
    offset = int(round(position * abs(slack)))
    if slack >= 0:
        return waveform[offset:offset + samples]
    return torch.nn.functional.pad(waveform, (offset, -slack - offset))


def load_clip(path: str | Path, sr: int = 20000, seconds: float = 2.0, position: float = 0.5) -> torch.Tensor:
    """Read an audio file as float32 [round(sr * seconds)]: mono, resampled to `sr`, fitted by
    `fit_length(..., position)`, normalised. AudioFileError (a ValueError naming the file) for a file
    that is not readable audio, holds non-finite samples or whose channels cancel (read_audio)."""
    audio, file_sr = read_audio(path)
    waveform = torch.from_numpy(audio.mean(axis=1))
    if file_sr != sr and waveform.numel() > 0:
        waveform = torchaudio.functional.resample(waveform, int(file_sr), int(sr))
    return normalise(fit_length(waveform, int(round(sr * seconds)), position))


def _check_format(sr, seconds) -> tuple[int, float]:
    if int(sr) != sr or sr <= 0:
        raise ValueError(f"sr must be a positive integer sample rate in Hz, got {sr!r}")
    if not seconds > 0 or round(sr * seconds) < 1:
        raise ValueError(f"seconds must be > 0 (and give at least one sample), got {seconds!r}")
    return int(sr), float(seconds)


def _require(path: Path, layout: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; expected {layout}")


def inside(folder: Path, name: str, source: Path) -> Path:
    """folder / name, for a file `name` listed in the metadata file `source`; ValueError if the name
    is absolute or climbs out of `folder` (metadata must never make a loader read other files)."""
    relative = os.path.normpath(str(name).replace("\\", "/"))
    if os.path.isabs(relative) or relative == ".." or relative.startswith("../") or relative == ".":
        raise ValueError(f"{source} names {name!r}, which is not a file inside {folder}; refusing "
                         "to read outside the dataset")
    return folder / relative


# --- shared dataset machinery ------------------------------------------------------------------------

class AudioFileDataset(torch.utils.data.Dataset):
    """A list of (path, label) read as normalised fixed-length clips, skipping unreadable files (see the
    module docstring). Items: (waveform float32 [round(sr * seconds)], label int)."""

    def __init__(self, items: Sequence[tuple[Path, int]], classes: Sequence[str], sr: int = 20000,
                 seconds: float = 2.0, description: str = "audio files"):
        self.sr, self.seconds = _check_format(sr, seconds)
        self.items = [(Path(path), int(label)) for path, label in items]
        if not self.items:
            raise FileNotFoundError(f"no {description} found")
        self.classes = tuple(classes)
        # one flag per item, shared with DataLoader workers (see the module docstring)
        self._unreadable = torch.zeros(len(self.items), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        """The label of every file, without decoding anything."""
        return [label for _, label in self.items]

    @property
    def skipped(self) -> list[Path]:
        """The files found unreadable so far (by this process or its DataLoader workers)."""
        return [self.items[index][0] for index in self._unreadable.nonzero().flatten().tolist()]

    def unreadable_mask(self) -> torch.Tensor:
        """bool [len(self)]: which items were found unreadable so far."""
        return self._unreadable.clone()

    def _mark_unreadable(self, index: int, error: Exception) -> None:
        self._unreadable[index] = True
        log.warning("skipping unreadable audio file %s (%s)", self.items[index][0],
                    getattr(error, "reason", error))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        waveform, used = self.load(index)
        return waveform, self.items[used][1]

    def load(self, index: int, position: float = 0.5) -> tuple[torch.Tensor, int]:
        """Waveform [round(sr * seconds)] of item `index`, or of the next readable item if that file
        fails to decode; also returns the index actually used."""
        if not 0 <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} items")
        for step in range(len(self.items)):
            candidate = (int(index) + step) % len(self.items)
            if self._unreadable[candidate]:
                continue
            try:
                return load_clip(self.items[candidate][0], self.sr, self.seconds, position), candidate
            except _DECODE_ERRORS as error:
                self._mark_unreadable(candidate, error)
        raise RuntimeError(f"none of the {len(self.items)} audio files could be read (first: "
                           f"{self.items[0][0]})")

    def find_unreadable(self) -> list[Path]:
        """Decode every file once (slow: a full pass) and return those that fail; they join `skipped`."""
        for index in range(len(self.items)):
            if not self._unreadable[index]:
                try:
                    read_audio(self.items[index][0])
                except _DECODE_ERRORS as error:
                    self._mark_unreadable(index, error)
        return self.skipped


# --- Speech Commands ---------------------------------------------------------------------------------

SPEECH_COMMANDS_LAYOUT = ("root/<word>/<speaker>_nohash_<k>.wav with root/validation_list.txt and "
                          "root/testing_list.txt listing word/file.wav paths (Speech Commands v2 layout)")


def _read_list(path: Path) -> set[str]:
    with open(path) as handle:
        return {line.strip().replace("\\", "/") for line in handle if line.strip()}


class SpeechCommands(AudioFileDataset):
    """Speech Commands v2: label = index of the word in sorted word directories (`classes`).
    `subset`: "validation" and "testing" are the clips listed in root/validation_list.txt and
    root/testing_list.txt; "training" is every other clip. `_background_noise_` is not a class."""

    SUBSETS = ("training", "validation", "testing")

    def __init__(self, root: str | Path, subset: str = "training", sr: int = 20000, seconds: float = 2.0):
        root = Path(root)
        if subset not in self.SUBSETS:
            raise ValueError(f"subset must be one of {self.SUBSETS}, got {subset!r}")
        _require(root, SPEECH_COMMANDS_LAYOUT)
        listed = {}
        for name in ("validation", "testing"):
            _require(root / f"{name}_list.txt", SPEECH_COMMANDS_LAYOUT)
            listed[name] = _read_list(root / f"{name}_list.txt")
        # "_background_noise_" (and hidden folders) are not words
        words = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name[0] not in "_.")
        items = []
        for label, word in enumerate(words):
            for path in sorted((root / word).glob("*.wav")):
                relative = f"{word}/{path.name}"
                which = ("validation" if relative in listed["validation"]
                         else "testing" if relative in listed["testing"] else "training")
                if which == subset:
                    items.append((path, label))
        self.root, self.subset = root, subset
        super().__init__(items, words, sr, seconds, f"{subset} clips under {root}; expected "
                                                    f"{SPEECH_COMMANDS_LAYOUT}")

    def speaker(self, index: int) -> str:
        """Speaker id of file `index`: the part of "<speaker>_nohash_<k>.wav" before "_nohash_"."""
        return self.items[index][0].name.split("_nohash_")[0]


# --- ESC-50 ------------------------------------------------------------------------------------------

ESC50_LAYOUT = ("root/audio/*.wav and root/meta/esc50.csv with header "
                "filename,fold,target,category,esc10,src_file,take (ESC-50 layout)")


class ESC50(AudioFileDataset):
    """ESC-50 environmental sounds: label = `target` (0..49), `classes[target]` = its `category`.
    `folds`: which of the five cross-validation folds to include."""

    def __init__(self, root: str | Path, folds: Sequence[int] = (1, 2, 3, 4, 5), sr: int = 20000,
                 seconds: float = 2.0):
        root = Path(root)
        folds = {int(fold) for fold in folds}
        if not folds or not folds <= {1, 2, 3, 4, 5}:
            raise ValueError(f"folds must be a non-empty subset of 1..5, got {sorted(folds)}")
        for path in (root, root / "meta" / "esc50.csv", root / "audio"):
            _require(path, ESC50_LAYOUT)
        with open(root / "meta" / "esc50.csv", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"filename", "fold", "target", "category"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{root / 'meta' / 'esc50.csv'} lacks columns {sorted(missing)}; "
                                 f"expected {ESC50_LAYOUT}")
            rows = list(reader)
        names = {int(row["target"]): row["category"] for row in rows}
        classes = [names.get(target, f"target_{target}") for target in range(max(names, default=-1) + 1)]
        items = [(inside(root / "audio", row["filename"], root / "meta" / "esc50.csv"), int(row["target"]))
                 for row in rows if int(row["fold"]) in folds]
        self.root, self.folds = root, tuple(sorted(folds))
        super().__init__(items, classes, sr, seconds, f"clips of folds {self.folds} in {root}")


# --- NSynth ------------------------------------------------------------------------------------------

NSYNTH_LAYOUT = ("root/nsynth-<split>/audio/<note_str>.wav and root/nsynth-<split>/examples.json "
                 "mapping note_str to its fields (NSynth layout)")


class NSynth(AudioFileDataset):
    """NSynth notes: label = the integer field `target` of each note in examples.json (e.g.
    "instrument_family", "instrument_source", "pitch"); `classes` come from the matching "<target>_str"
    field when there is one, else the numbers themselves. `split`: "train", "valid" or "test"."""

    SPLITS = ("train", "valid", "test")

    def __init__(self, root: str | Path, split: str = "train", target: str = "instrument_family",
                 sr: int = 20000, seconds: float = 2.0):
        root = Path(root)
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {self.SPLITS}, got {split!r}")
        folder = root / f"nsynth-{split}"
        for path in (root, folder / "examples.json", folder / "audio"):
            _require(path, NSYNTH_LAYOUT)
        with open(folder / "examples.json") as handle:
            examples = json.load(handle)
        if not examples:
            raise FileNotFoundError(f"{folder / 'examples.json'} lists no notes; expected {NSYNTH_LAYOUT}")
        fields = next(iter(examples.values()))
        if not isinstance(fields.get(target), int):
            usable = sorted(key for key, value in fields.items() if isinstance(value, int))
            raise ValueError(f"target {target!r} is not an integer field of NSynth examples; "
                             f"try one of {usable}")
        items = [(inside(folder / "audio", f"{note}.wav", folder / "examples.json"), int(entry[target]))
                 for note, entry in sorted(examples.items())]
        names = {int(entry[target]): str(entry.get(f"{target}_str", entry[target]))
                 for entry in examples.values()}
        classes = [names.get(value, str(value)) for value in range(max(names) + 1)]
        self.root, self.split, self.target = root, split, target
        super().__init__(items, classes, sr, seconds, f"notes in {folder}")


# --- speech in noise ---------------------------------------------------------------------------------

class WordSpeakerNoise(torch.utils.data.Dataset):
    """`size` mixtures of a Speech Commands word (label = word) with a background clip from any .wav file
    under `noise_root` (searched recursively) at an SNR drawn uniformly from `snr_db`.

    Item i is a pure function of (seed, i): the speech clips are visited in an order shuffled by `seed`
    (item i uses clip order[i % clips], so every clip is used before any repeats); the noise file, the SNR,
    where the word sits in the clip and which stretch of the noise is used come from
    `numpy.random.default_rng([seed, i])`. SNR is the ratio of speech to noise power over the whole
    clip (silence around the word included). If the speech is silent the item is the noise alone.
    Items: (waveform float32 [round(sr * seconds)], RMS 0.1; label int). `item(i)` returns the parts too.
    """

    def __init__(self, speech_root: str | Path, noise_root: str | Path, size: int,
                 snr_db: tuple[float, float] = (-5, 15), seed: int = 0, subset: str = "training",
                 sr: int = 20000, seconds: float = 2.0):
        if int(size) != size or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        low, high = snr_db
        if not low <= high:
            raise ValueError(f"snr_db must be (low, high) with low <= high, got {snr_db!r}")
        self.speech = SpeechCommands(speech_root, subset, sr, seconds)
        noise_root = Path(noise_root)
        layout = "background .wav files anywhere under the noise root (searched recursively)"
        _require(noise_root, layout)
        noise_files = sorted(noise_root.rglob("*.wav"))
        self.noise = AudioFileDataset([(path, -1) for path in noise_files], (), sr, seconds,
                                      f".wav files under {noise_root}; expected {layout}")
        self.size, self.seed, self.snr_db = int(size), int(seed), (float(low), float(high))
        self.sr, self.seconds, self.classes = self.speech.sr, self.speech.seconds, self.speech.classes
        self._speech_order = np.random.default_rng([self.seed]).permutation(len(self.speech))

    def __len__(self) -> int:
        return self.size

    @property
    def skipped(self) -> list[Path]:
        return self.speech.skipped + self.noise.skipped

    def unreadable_mask(self) -> torch.Tensor:
        """bool [speech files + noise files]: which were found unreadable so far."""
        return torch.cat([self.speech.unreadable_mask(), self.noise.unreadable_mask()])

    def item(self, index: int) -> dict:
        """Item `index` with its parts: "waveform" = "speech" + "noise" (each float32 [samples], scaled
        together so the sum has RMS 0.1), "label", "speaker", "snr_db", "speech_path", "noise_path"."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        rng = np.random.default_rng([self.seed, int(index)])
        snr = rng.uniform(*self.snr_db)
        noise_choice = int(rng.integers(len(self.noise)))
        speech_position, noise_position = rng.uniform(size=2)
        speech, used = self.speech.load(int(self._speech_order[index % len(self.speech)]), speech_position)
        noise, noise_used = self.noise.load(noise_choice, noise_position)
        speech_power, noise_power = speech.pow(2).mean(), noise.pow(2).mean()
        if speech_power > 0 and noise_power > 0:
            noise = noise * torch.sqrt(speech_power / (noise_power * 10 ** (snr / 10)))
        mixture = speech + noise
        rms = mixture.pow(2).mean().sqrt()
        gain = TARGET_RMS / rms if rms > 0 else 0.0
        return {"waveform": mixture * gain, "speech": speech * gain, "noise": noise * gain,
                "label": self.speech.items[used][1], "speaker": self.speech.speaker(used), "snr_db": snr,
                "speech_path": self.speech.items[used][0], "noise_path": self.noise.items[noise_used][0]}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        parts = self.item(index)
        return parts["waveform"], parts["label"]

    def speaker(self, index: int) -> str:
        """Speaker id of item `index` (decodes the item, since an unreadable clip is replaced)."""
        return self.item(index)["speaker"]
