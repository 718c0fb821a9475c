"""The 165 natural sounds of NH2015 (Norman-Haignere et al. 2015), read from a directory the user
names (layout: README of the natsound165 set): wav/stimN_name.wav, category_labels.csv,
components.mat. Sounds are matched by name everywhere, never by file order.

Every file is checked before a single number is computed from the set: a truncated, empty,
resampled or unreadable wav would otherwise be padded with silence or resampled without a word and
change every map and every R² downstream, so each is an error naming the file and what was wrong."""
from __future__ import annotations

import csv
import pathlib
from dataclasses import dataclass

import soundfile
import torch
from tqdm import tqdm

from .datasets import AudioFileError, load_clip
from .nh2015_files import N_SOUNDS, load_components

# The published set: every sound is 2.0 s at 44.1 kHz (README of the natsound165 repository).
FILE_SR = 44100
FILE_SECONDS = 2.0
CATEGORIES = ("Music", "Song", "EngSpeech", "ForSpeech", "HumVoc", "AniVoc", "HumNonVoc", "AniNonVoc",
              "Nature", "Mechanical", "EnvSound")
MUSIC = ("Music", "Song")
SPEECH = ("EngSpeech", "ForSpeech")
LAYOUT = "expected DIR/wav/stimN_name.wav (165 files), DIR/category_labels.csv, DIR/components.mat"
# What soundfile raises for a file it cannot decode (its LibsndfileError is a RuntimeError).
_DECODE_ERRORS = (RuntimeError, OSError, ValueError)


@dataclass
class NatSound165:
    names: list[str]  # [165] stimulus names, e.g. "stim28_big_band_music"
    categories: list[str]  # [165] one of the 11 NH2015 categories
    waveforms: torch.Tensor  # [165, T] float32, 20 kHz, first 2 s, RMS 0.1
    component_names: list[str]  # [6] lowfreq, highfreq, envsounds, pitch, speech, music
    components: torch.Tensor  # [165, 6] float64 response profiles, rows in `names` order


def read_categories(path: pathlib.Path) -> dict[str, str]:
    """{name: category} from category_labels.csv (`name,category` rows, an optional header); a
    malformed row is an error naming the file, the line and what it holds."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {LAYOUT}")
    expected = f"expected 'name,category' with a category among {', '.join(CATEGORIES)}"
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = [(number, row) for number, row in enumerate(csv.reader(handle), start=1)
                    if any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path} is not a UTF-8 CSV file ({error}); {expected}") from None
    if rows and [cell.strip().lower() for cell in rows[0][1]] == ["name", "category"]:
        rows = rows[1:]
    categories: dict[str, str] = {}
    for number, row in rows:
        cells = [cell.strip() for cell in row]
        if len(cells) != 2 or not cells[0] or cells[1] not in CATEGORIES:
            raise ValueError(f"{path} line {number}: {expected}, found {','.join(row)!r}")
        if cells[0] in categories:
            raise ValueError(f"{path} line {number}: {cells[0]!r} is listed twice")
        categories[cells[0]] = cells[1]
    if not categories:
        raise ValueError(f"{path} lists no sounds; {expected}, one row per sound")
    return categories


def wav_problem(path: pathlib.Path) -> str | None:
    """What makes `path` not one of the published recordings (unreadable, empty, wrong rate or
    length), from its header alone; None when it looks right."""
    try:
        info = soundfile.info(str(path))
    except _DECODE_ERRORS as error:
        return f"unreadable ({str(error).strip() or type(error).__name__})"
    expected_frames = int(round(FILE_SR * FILE_SECONDS))
    if info.frames == 0:
        return f"empty (a header without samples), expected {expected_frames} samples"
    if info.samplerate != FILE_SR:
        return f"sample rate {info.samplerate} Hz, expected {FILE_SR} Hz"
    if info.frames != expected_frames:
        return (f"{info.frames} samples ({info.frames / FILE_SR:.3f} s), expected {expected_frames} "
                f"({FILE_SECONDS} s at {FILE_SR} Hz)")
    return None


def _raise_for(problems: list[tuple[pathlib.Path, str]]) -> None:
    if problems:
        shown = "; ".join(f"{path}: {problem}" for path, problem in problems[:3])
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ValueError(f"{len(problems)} natsound165 wav file(s) are not the published {FILE_SECONDS} s, "
                         f"{FILE_SR} Hz recordings: {shown}{more}")


def _read_components(root: pathlib.Path, names: list[str]):
    path = root / "components.mat"
    try:
        _, component_names, components = load_components(root, order=names)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found; {LAYOUT}") from None
    # scipy.io.loadmat reports a damaged file as IndexError, OSError, MatReadError, ValueError...,
    # mostly without the file's name
    except Exception as error:  # noqa: BLE001 - every one of them becomes the same one-line error
        message = str(error).splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(message if str(path) in message else f"{path}: {message}") from None
    if not torch.isfinite(components).all():
        raise ValueError(f"{path}: R holds {int((~torch.isfinite(components)).sum())} NaN or Inf values")
    return component_names, components


def load_natsound165(directory, sr: int = 20000, seconds: float = 2.0) -> NatSound165:
    """Read and check the set; errors name what is missing, extra, malformed or mismatched. Every
    file is checked (labels, all 165 wav headers, components) before any audio is decoded."""
    if not 0 < seconds <= FILE_SECONDS:
        raise ValueError(f"seconds must be in (0, {FILE_SECONDS}] (the recordings' length), got {seconds!r}")
    root = pathlib.Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"natsound165 directory {root} not found; {LAYOUT}")
    wav_dir = root / "wav"
    if not wav_dir.is_dir():
        raise FileNotFoundError(f"{wav_dir} not found; {LAYOUT}")
    categories = read_categories(root / "category_labels.csv")
    wavs = {path.stem: path for path in wav_dir.glob("*.wav")}
    missing = sorted(set(categories) - set(wavs))
    extra = sorted(set(wavs) - set(categories))
    if missing or extra or len(categories) != N_SOUNDS:
        raise ValueError(f"{root}: {len(categories)} sounds in category_labels.csv and {len(wavs)} wav "
                         f"files (expected {N_SOUNDS} of each, matching by name); missing wav files: "
                         f"{missing[:5]}{'...' if len(missing) > 5 else ''}; wav files without a "
                         f"category: {extra[:5]}{'...' if len(extra) > 5 else ''}")
    names = sorted(categories, key=lambda name: (int(name[4:].split("_")[0]) if name[4:5].isdigit()
                                                 else 10 ** 9, name))
    _raise_for([(wavs[name], problem) for name in names if (problem := wav_problem(wavs[name]))])
    component_names, components = _read_components(root, names)
    waveforms = []
    for name in tqdm(names, desc="reading natsound165", leave=False):
        try:
            # the first 2 s (SCIENCE.md section 7), not a centre crop
            clip = load_clip(wavs[name], sr, seconds, position=0.0)
        except AudioFileError as error:  # the header was fine but the samples are not
            _raise_for([(wavs[name], error.reason)])
        except _DECODE_ERRORS as error:
            _raise_for([(wavs[name], f"unreadable ({str(error).strip() or type(error).__name__})")])
        if not clip.abs().max() > 0:  # normalise leaves silence as zeros
            _raise_for([(wavs[name], "silent (every sample is zero)")])
        waveforms.append(torch.as_tensor(clip, dtype=torch.float32))
    return NatSound165(names, [categories[name] for name in names], torch.stack(waveforms),
                       component_names, components)
