"""Readers of the NH2015 files a user names: components.mat of the natsound165 set, and the stimulus
name handling that the brain loaders (topoaudio.brain.io) share with it.

Rows are sounds; `order` reorders them by stimulus name so they line up with the model's features.
Names are compared without directory and without a ".wav" suffix.
"""
from __future__ import annotations

import pathlib

import numpy as np
import scipy.io
import torch

N_SOUNDS = 165
# The six voxel components of NH2015 (docs/SCIENCE.md section 7), in the published file's order.
COMPONENTS = ("lowfreq", "highfreq", "envsounds", "pitch", "speech", "music")


def stimulus_name(raw) -> str:
    """'stim7_applause' from b'stim7_applause.wav', 'wav/stim7_applause.wav', a MATLAB cell, ..."""
    while isinstance(raw, np.ndarray):  # loadmat wraps cell strings in 1-element arrays
        raw = raw.reshape(-1)[0] if raw.size else ""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    name = pathlib.PurePosixPath(str(raw).strip()).name
    return name[:-4] if name.lower().endswith(".wav") else name


def stimulus_names(raw) -> list[str]:
    """stimulus_name of each item of a list, array or MATLAB cell array, flattened."""
    return [stimulus_name(item) for item in np.asarray(raw, dtype=object).reshape(-1)]


def reorder_rows(values: np.ndarray, names: list[str], order, what: str):
    """Rows of values (named by names) rearranged to follow order: (order's names, values[order])."""
    order = [stimulus_name(name) for name in order]
    position = {name: i for i, name in enumerate(names)}
    missing = [name for name in order if name not in position]
    if missing:
        raise ValueError(f"{what}: {len(missing)} requested sounds are not in the file, e.g. {missing[:5]}")
    return order, values[[position[name] for name in order]]


def existing_path(path) -> pathlib.Path:
    """path as a pathlib.Path; FileNotFoundError when nothing is there."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def load_components(natsound_dir, order=None):
    """The NH2015 voxel components from `components.mat` in a natsound165 directory.

    Returns (stim_names [165] list, component_names [6] list, R [165, 6] float64 tensor), rows in the
    file's stim_names order, or in `order` (a list of stimulus names) when given. The components must
    be the six of NH2015 (COMPONENTS, each once, columns in the file's order).
    """
    path = existing_path(natsound_dir) / "components.mat"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: point this at the natsound165 directory "
                                "holding components.mat")
    mat = scipy.io.loadmat(path)
    missing = [key for key in ("R", "stim_names", "component_names") if key not in mat]
    if missing:
        raise ValueError(f"{path} lacks {missing}")
    R = np.asarray(mat["R"], dtype=np.float64)
    names, component_names = stimulus_names(mat["stim_names"]), stimulus_names(mat["component_names"])
    if R.shape != (len(names), len(component_names)) or len(names) != N_SOUNDS:
        raise ValueError(f"{path}: R is {R.shape}, expected [{N_SOUNDS} sounds, {len(component_names)} "
                         f"components] matching {len(names)} stim_names")
    missing = [name for name in COMPONENTS if name not in component_names]
    unknown = [name for name in component_names if name not in COMPONENTS]
    if missing or unknown or len(component_names) != len(COMPONENTS):
        raise ValueError(f"{path}: component_names {component_names} are not the {len(COMPONENTS)} "
                         f"NH2015 components {', '.join(COMPONENTS)}"
                         + (f"; missing {missing}" if missing else "")
                         + (f"; unknown {unknown}" if unknown else "")
                         + ("" if missing or unknown else "; a component is listed twice"))
    if order is not None:
        names, R = reorder_rows(R, names, order, str(path))
    return names, component_names, torch.from_numpy(np.ascontiguousarray(R))
