"""Loading brain data from user-given directories: NH2015 voxel responses and components.

The components.mat reader and the stimulus-name helpers live in the data layer
(topoaudio.data.nh2015_files: components.mat is a file of the natsound165 set); they are re-exported
here.

The McDermott lab's files are not redistributed with the project (SCIENCE.md section 7); users point
these loaders at their copies. Rows are sounds; `order` reorders them by stimulus name so they line
up with the model's features. Names are compared without directory and without a ".wav" suffix.
"""
from __future__ import annotations

import pathlib

import numpy as np
import scipy.io
import torch

from topoaudio.data.nh2015_files import (
    N_SOUNDS,
    existing_path,
    reorder_rows,
    stimulus_name,
    stimulus_names,
)
from topoaudio.data.nh2015_files import load_components as load_components  # re-exported

N_REPETITIONS = 3
VOXEL_FILES = ("voxels.npz", "voxels.mat", "voxels.npy", "voxel_features_array.npy")
ARRAY_KEYS = ("voxels", "data", "voxel_features_array")
NAME_KEYS = ("stim_names", "stimulus_names", "names")


def _find_voxel_file(path: pathlib.Path) -> pathlib.Path:
    if path.is_file():
        return path
    for name in VOXEL_FILES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"no voxel file in {path}: expected one of {', '.join(VOXEL_FILES)}")


def _read_keyed(path: pathlib.Path):
    """(array, names or None) from a .npz or .mat file."""
    if path.suffix == ".npz":
        contents = dict(np.load(path, allow_pickle=False))
    else:
        try:
            contents = scipy.io.loadmat(path)
        except NotImplementedError as error:  # MATLAB v7.3 is HDF5
            raise ValueError(f"{path} is MATLAB v7.3 (HDF5): save it as v7 or as .npz") from error
    array_key = next((key for key in ARRAY_KEYS if key in contents), None)
    if array_key is None:
        found = [key for key in contents if not key.startswith("__")]
        raise ValueError(f"{path} holds {found}: expected the voxel array under one of {list(ARRAY_KEYS)}")
    name_key = next((key for key in NAME_KEYS if key in contents), None)
    return contents[array_key], (stimulus_names(contents[name_key]) if name_key else None)


def _read_npy(path: pathlib.Path):
    """(array, names or None) from a .npy file and its optional siblings: `stim_names.txt` (one name a
    line) or the lab's `neural_stim_meta.npy` (name in the first field); the lab's
    `voxel_features_meta.npy` keeps only voxels whose `n_reps` is 3, as Tuckute et al. do."""
    array = np.load(path, allow_pickle=False)
    names = None
    if (path.parent / "stim_names.txt").is_file():
        lines = (path.parent / "stim_names.txt").read_text().splitlines()
        names = [stimulus_name(line) for line in lines if line.strip()]
    elif (path.parent / "neural_stim_meta.npy").is_file():
        meta = np.load(path.parent / "neural_stim_meta.npy", allow_pickle=False)
        names = stimulus_names([row[0] for row in meta])
    meta_path = path.parent / "voxel_features_meta.npy"
    if meta_path.is_file():
        meta = np.load(meta_path, allow_pickle=False)
        if meta.dtype.names and "n_reps" in meta.dtype.names and array.ndim == 3:
            array = array[:, meta["n_reps"] == N_REPETITIONS]
    return array, names


def load_voxels(directory, n_sounds: int = N_SOUNDS, order=None):
    """Voxel responses [n_sounds, n_voxels, 3 repetitions] from a user-given directory (or file).

    The first of these found is read:
      voxels.npz / voxels.mat: array under `voxels`, `data` or `voxel_features_array`; optional
        stimulus names under `stim_names`, `stimulus_names` or `names`;
      voxels.npy or the lab's voxel_features_array.npy: the array; names from stim_names.txt or
        neural_stim_meta.npy beside it; voxel_features_meta.npy beside it filters to n_reps == 3.
    Returns (stim_names list or None, voxels float64 tensor). With `order`, rows follow those names
    (the file must name its sounds). Raises FileNotFoundError / ValueError naming what is missing,
    mis-shaped or non-finite.
    """
    path = _find_voxel_file(existing_path(directory))
    array, names = _read_npy(path) if path.suffix == ".npy" else _read_keyed(path)
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 3 or array.shape[0] != n_sounds or array.shape[2] != N_REPETITIONS:
        raise ValueError(f"{path}: voxel array is {array.shape}, expected [{n_sounds} sounds, n_voxels, "
                         f"{N_REPETITIONS} repetitions]")
    bad = ~np.isfinite(array).all(axis=(0, 2))
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} voxels have NaN/inf responses (fewer than "
                         f"{N_REPETITIONS} repetitions?); drop them first")
    if names is not None and len(names) != n_sounds:
        raise ValueError(f"{path}: {len(names)} stimulus names for {n_sounds} sounds")
    if order is not None:
        if names is None:
            raise ValueError(f"{path} names no sounds, so rows cannot be matched to `order`")
        names, array = reorder_rows(array, names, order, str(path))
    return names, torch.from_numpy(np.ascontiguousarray(array))
