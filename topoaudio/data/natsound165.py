"""The 165 natural sounds of NH2015 (Norman-Haignere et al. 2015), read from a directory the user
names (layout: README of the natsound165 set): wav/stimN_name.wav, category_labels.csv,
components.mat. Sounds are matched by name everywhere, never by file order."""
from __future__ import annotations

import csv
import pathlib
from dataclasses import dataclass

import torch

from .datasets import load_clip

N_SOUNDS = 165
MUSIC = ("Music", "Song")
SPEECH = ("EngSpeech", "ForSpeech")


@dataclass
class NatSound165:
    names: list[str]  # [165] stimulus names, e.g. "stim28_big_band_music"
    categories: list[str]  # [165] one of the 11 NH2015 categories
    waveforms: torch.Tensor  # [165, T] float32, 20 kHz, first 2 s, RMS 0.1
    component_names: list[str]  # [6] lowfreq, highfreq, envsounds, pitch, speech, music
    components: torch.Tensor  # [165, 6] float64 response profiles, rows in `names` order


def load_natsound165(directory, sr: int = 20000, seconds: float = 2.0) -> NatSound165:
    """Read and check the set; errors name what is missing, extra or mismatched."""
    from topoaudio.brain import load_components

    root = pathlib.Path(directory)
    layout = "expected DIR/wav/stimN_name.wav (165 files), DIR/category_labels.csv, DIR/components.mat"
    if not root.is_dir():
        raise FileNotFoundError(f"natsound165 directory {root} not found; {layout}")
    labels_path, wav_dir = root / "category_labels.csv", root / "wav"
    for path in (labels_path, wav_dir):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found; {layout}")
    with open(labels_path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if rows and rows[0][0].strip().lower() == "name":
        rows = rows[1:]
    categories = {row[0].strip(): row[1].strip() for row in rows}
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
    _, component_names, components = load_components(root, order=names)
    # the first 2 s (SCIENCE.md section 7), not a centre crop
    waveforms = torch.stack([torch.as_tensor(load_clip(wavs[name], sr, seconds, position=0.0),
                                             dtype=torch.float32) for name in names])
    return NatSound165(names, [categories[name] for name in names], waveforms, component_names,
                       components)
