"""Checkpoints written atomically: a crash mid-write never corrupts the last good one."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def save_atomic(state: dict, path: str) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path: str, expected_model: str | None = None) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    # weights_only=False: the checkpoint holds the config dict and NumPy/Python RNG states; only
    # load checkpoints you wrote.
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} is not a topoaudio checkpoint of format {FORMAT_VERSION}")
    if expected_model is not None and state["config"]["model"] != expected_model:
        raise ValueError(f"{path} holds a {state['config']['model']!r} model, not {expected_model!r}")
    return state


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
