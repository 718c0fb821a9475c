"""Checkpoints: written atomically (a crash mid-write never corrupts the last good one), and read
back into a model with its cortical sheets. Training writes them, training and analysis read them;
this module sits below both."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from topoaudio.models import build_model, tap_shapes
from topoaudio.sheet import CorticalSheet, build_sheets

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
# The settings that rebuild a trained model and its sheets.
MODEL_KEYS = ("model", "topo", "seed", "topo_layers", "sheet", "sheet_size_mm")


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


def sheets_for(config: dict, model: torch.nn.Module, clip_samples: int) -> dict:
    """{layer: CorticalSheet} of config["topo_layers"] as the run's spatial loss builds them."""
    shapes = tap_shapes(model, config["topo_layers"], clip_samples)
    return build_sheets(shapes, config["sheet"], size_mm=config["sheet_size_mm"], seed=config["seed"])


def _n_classes(model_state: dict) -> int:
    for key in ("head.weight", "heads.out.weight"):
        if key in model_state:
            return int(model_state[key].shape[0])
    raise ValueError("checkpoint has no single classification head (head.weight / heads.out.weight)")


def load_trained(path, clip_samples: int = 40000) -> tuple[torch.nn.Module, dict, dict]:
    """(model in eval mode, {layer: CorticalSheet}, config dict) from a training checkpoint. Layers
    without a saved sheet (models trained with --topo none or topoloss) get the sheet the spatial
    loss would have used (same kind, size and seed), so maps of all models are drawn on the same
    sheets."""
    state = load(str(path))
    config = state["config"]
    missing = [key for key in MODEL_KEYS if key not in config]
    if missing:
        raise ValueError(f"{path} was written by another topoaudio version: its config lacks {missing}")
    model = build_model(config["model"], _n_classes(state["model"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"{path} does not match the {config['model']} model of this version: "
                         f"{str(error).splitlines()[0]}") from None
    model.eval()
    saved = {layer: CorticalSheet.from_state_dict(s) for layer, s in state.get("topography", {}).items()
             if isinstance(s, dict) and "positions" in s}
    sheets = sheets_for(config, model, clip_samples)
    sheets.update(saved)
    return model, sheets, config
