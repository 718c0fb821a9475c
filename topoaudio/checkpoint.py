"""Checkpoints: written atomically (a crash mid-write never corrupts the last good one), verified
and safely unpickled when read, and read back into a model with its cortical sheets. Training
writes them, training and analysis read them; this module sits below both.

A checkpoint file is a two-line header, then the torch.save bytes of the state:

    topoaudio checkpoint
    format 2 sha256 <64 hex digits of the payload>

The checksum is verified before anything is unpickled (a damaged file is refused, never resumed),
and the payload is unpickled with weights_only=True: it may only hold tensors, numbers, strings,
lists, tuples and dicts, so a crafted file cannot run code. Every error reading a checkpoint is a
one-line ValueError naming the file (FileNotFoundError when there is none).
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import random

import numpy as np
import torch

from topoaudio.models import build_model, frontend_of, tap_shapes, task_sizes
from topoaudio.sheet import CorticalSheet, build_sheets

FORMAT_VERSION = 2
CHECKPOINT_NAME = "checkpoint.pt"
MAGIC = b"topoaudio checkpoint\n"
# The settings that rebuild a trained model and its sheets.
MODEL_KEYS = ("model", "topo", "seed", "topo_layers", "sheet", "sheet_size_mm")
# What a training checkpoint holds; resuming needs all of it. Beside these, "tasks" records the
# model's heads: {task: n_classes} for a multi-task model, None (or, in checkpoints written before
# multi-task training, absent) for one head, whose size the weights give.
TRAINING_KEYS = ("step", "config", "model", "optimizer", "scheduler", "topography", "rng")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions); the previous one is kept."""


# --- writing -----------------------------------------------------------------------------------------

def save_atomic(state: dict, path: str) -> None:
    """Write `state` (tensors, numbers, strings, lists, dicts) with its checksum to a temporary file
    in the same directory, fsync, then rename over `path`. Non-finite tensors are refused: a
    checkpoint is only ever a state worth resuming from."""
    bad = _first_non_finite(state)
    if bad is not None:
        raise ValueError(f"refusing to write checkpoint {path}: {bad} holds NaN or Inf values")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = MAGIC + f"format {FORMAT_VERSION} sha256 {hashlib.sha256(payload).hexdigest()}\n".encode()
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(header)
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        kept = (f"the previous checkpoint {path} is kept" if os.path.isfile(path)
                else "no checkpoint was written")
        raise CheckpointWriteError(f"could not write checkpoint {path}: "
                                   f"{error.strerror or error}; {kept}") from error
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _first_non_finite(value, where: str = "state") -> str | None:
    """The key path of the first floating-point tensor holding NaN or Inf, or None."""
    if isinstance(value, torch.Tensor):
        finite = not value.is_floating_point() or bool(torch.isfinite(value).all())
        return None if finite else where
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _first_non_finite(item, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None


# --- reading -----------------------------------------------------------------------------------------

def load(path: str, expected_model: str | None = None) -> dict:
    """The verified state dict of a checkpoint. ValueError (one line, naming the file) if it is
    empty, truncated, damaged, of another format, holds anything but plain data, or holds another
    model than `expected_model`."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as handle:
        data = handle.read()
    payload = _verified_payload(data, path)
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise ValueError(f"refusing checkpoint {path}: it holds objects other than tensors, numbers "
                         f"and strings ({reason[:200]})") from None
    except Exception as error:  # a payload whose checksum matches but torch cannot read
        raise ValueError(f"{path} is not a readable checkpoint: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a topoaudio checkpoint: it holds a {type(state).__name__}, "
                         "not a dict")
    if expected_model is not None:
        model = _config(state, path).get("model")
        if model != expected_model:
            raise ValueError(f"{path} holds a {model!r} model, not {expected_model!r}")
    return state


def _verified_payload(data: bytes, path: str) -> bytes:
    if not data:
        raise ValueError(f"{path} is empty: not a checkpoint (an interrupted copy?)")
    if not data.startswith(MAGIC):
        if data.startswith(b"PK\x03\x04"):
            raise ValueError(f"{path} is a plain torch file, not a topoaudio checkpoint of format "
                             f"{FORMAT_VERSION} (an older topoaudio wrote format 1 without a "
                             "checksum; retrain, or load it yourself if you trust it)")
        raise ValueError(f"{path} is not a topoaudio checkpoint (no 'topoaudio checkpoint' header)")
    end = data.find(b"\n", len(MAGIC))
    fields = data[len(MAGIC):end].decode("ascii", "replace").split() if end > 0 else []
    if len(fields) != 4 or fields[0] != "format" or fields[2] != "sha256":
        raise ValueError(f"{path} is a damaged topoaudio checkpoint: its header is unreadable")
    if fields[1] != str(FORMAT_VERSION):
        raise ValueError(f"{path} is a topoaudio checkpoint of format {fields[1]}; this version reads "
                         f"format {FORMAT_VERSION}")
    payload = data[end + 1:]
    if hashlib.sha256(payload).hexdigest() != fields[3]:
        raise ValueError(f"{path} is damaged or truncated: its contents do not match the SHA-256 "
                         "written with them")
    return payload


def _config(state: dict, path: str) -> dict:
    config = state.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"{path} has no config: not a training checkpoint")
    return config


def check_training_state(state: dict, path: str, config_keys=None) -> None:
    """Refuse (one line) a checkpoint that lacks what resuming needs, or whose config has keys this
    version does not know or lacks ones it needs (`config_keys`: this version's settings)."""
    missing = [key for key in TRAINING_KEYS if key not in state]
    if missing:
        raise ValueError(f"{path} is incomplete: it lacks {missing}")
    config = _config(state, path)
    if config_keys is not None:
        unknown = sorted(set(config) - set(config_keys))
        lacking = sorted(set(config_keys) - set(config))
        if unknown or lacking:
            raise ValueError(f"{path} was written by another topoaudio version: its config "
                             + "; ".join(part for part in (f"has unknown keys {unknown}" if unknown else "",
                                                           f"lacks {lacking}" if lacking else "") if part))
    if not isinstance(state["step"], int) or state["step"] < 0:
        raise ValueError(f"{path} has no valid step count (got {state['step']!r})")
    rng = state["rng"]
    if not isinstance(rng, list) or not rng or not all(isinstance(r, dict) for r in rng):
        raise ValueError(f"{path} holds no valid RNG state list")
    for name in ("model", "optimizer", "scheduler", "topography"):
        if not isinstance(state[name], dict):
            raise ValueError(f"{path}: {name} is a {type(state[name]).__name__}, not a state dict")


def restore(state: dict, path: str, **objects) -> None:
    """load_state_dict each of `objects` (model=..., optimizer=..., ...) from state[name]; a state
    that does not fit is a one-line ValueError naming the file and the part."""
    for name, target in objects.items():
        try:
            target.load_state_dict(state[name])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"{path}: the saved {name} does not fit this run ({first})") from None


# --- random number generators ------------------------------------------------------------------------

def rng_state() -> dict:
    """Every RNG a training step draws from, as tensors and plain numbers (so weights_only loads
    it): torch's CPU generator, each CUDA device's when CUDA is in use, NumPy's and Python's."""
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "key": torch.from_numpy(key.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, path: str = "checkpoint") -> None:
    """Restore what rng_state() saved; a malformed state is a one-line ValueError."""
    try:
        numpy_state, python_state = state["numpy"], state["python"]
        torch.set_rng_state(state["torch"])
        np.random.set_state((numpy_state["kind"], numpy_state["key"].numpy().astype(np.uint32),
                             numpy_state["pos"], numpy_state["has_gauss"],
                             numpy_state["cached_gaussian"]))
        random.setstate((python_state["version"], tuple(python_state["internal"].tolist()),
                         python_state["gauss_next"]))
        if "cuda" in state and torch.cuda.is_available():
            # a machine with fewer GPUs restores those it has
            torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        raise ValueError(f"{path} holds a malformed RNG state ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None


# --- checkpoint -> model -----------------------------------------------------------------------------

def sheets_for(config: dict, model: torch.nn.Module, clip_samples: int) -> dict:
    """{layer: CorticalSheet} of config["topo_layers"] as the run's spatial loss builds them."""
    shapes = tap_shapes(model, config["topo_layers"], clip_samples)
    return build_sheets(shapes, config["sheet"], size_mm=config["sheet_size_mm"], seed=config["seed"])


def recorded_tasks(state: dict, path) -> dict[str, int] | None:
    """The checkpoint's {task: n_classes}, or None for a one-head model; one line when malformed."""
    tasks = state.get("tasks")
    if tasks is None:
        return None
    try:
        sizes = task_sizes(tasks)
    except ValueError as error:
        raise ValueError(f"{path} records malformed tasks: {error}") from None
    if sizes is None:  # an int is a head size, not a task list
        raise ValueError(f"{path} records malformed tasks: {tasks!r} is not {{task: n_classes}}")
    return sizes


def check_tasks(state: dict, tasks: dict[str, int] | None, path) -> None:
    """Refuse (one line) to resume a checkpoint whose heads differ from the run's `tasks`
    ({task: n_classes} of its dataset, None for one head)."""
    saved = recorded_tasks(state, path)  # checkpoints from before multi-task training: one head
    if saved != tasks:
        def name(value):
            return "one head" if value is None else f"tasks {value}"
        raise ValueError(f"{path} was trained with {name(saved)}, but this run's dataset gives "
                         f"{name(tasks)}: the heads cannot be resumed")


def _n_classes(model_state: dict, path) -> int:
    for key in ("head.weight", "heads.out.weight"):
        if isinstance(model_state.get(key), torch.Tensor) and model_state[key].dim() == 2:
            return int(model_state[key].shape[0])
    raise ValueError(f"{path} has no single classification head (head.weight / heads.out.weight)")


def _first_problem(error: RuntimeError) -> str:
    """The first concrete line of load_state_dict's message (its first line is only a preamble),
    cut short: a list of every missing key would bury the message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    line = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
    return line if len(line) <= 300 else line[:297] + "..."


def _saved_sheet_states(state: dict, path) -> dict:
    """{layer: sheet state} of the sheets a spatial-loss run saved (TopoLoss entries hold no
    positions); one line when the topography entry is not a dict."""
    topography = state.get("topography", {})
    if not isinstance(topography, dict):
        raise ValueError(f"{path} holds a malformed sheet: its topography is a {type(topography).__name__}")
    return {layer: s for layer, s in topography.items() if isinstance(s, dict) and "positions" in s}


def load_trained(path, clip_samples: int = 40000,
                 sheet: str | None = None) -> tuple[torch.nn.Module, dict, dict]:
    """(model in eval mode, {layer: CorticalSheet}, config dict) from a training checkpoint. Layers
    without a saved sheet (models trained with --topo none or topoloss) get the sheet the spatial
    loss would have used (same kind, size and seed), so maps of all models are drawn on the same
    sheets. `sheet` (a sheet kind) lays a run trained without saved sheets on that kind instead
    (the returned config says so), so that, e.g., a `none` run can be compared with a TopoLoss run
    on the TopoLoss run's `channels` sheets; a run that trained on its own sheets keeps them."""
    state = load(str(path))
    config = _config(state, path)
    saved_states = _saved_sheet_states(state, path)
    if sheet is not None and sheet != config.get("sheet"):
        if saved_states:
            raise ValueError(f"{path} trained on its own {config.get('sheet')} sheets (the spatial loss); "
                             f"sheet={sheet!r} applies only to runs trained without them (topo none or "
                             "topoloss)")
        config = {**config, "sheet": sheet}
    missing = [key for key in MODEL_KEYS if key not in config]
    if missing:
        raise ValueError(f"{path} was written by another topoaudio version: its config lacks {missing}")
    if not isinstance(state.get("model"), dict):
        raise ValueError(f"{path} holds no model weights")
    tasks = recorded_tasks(state, path)
    n_classes = _n_classes(state["model"], path) if tasks is None else None
    try:
        # measured through the front end it trained with (the exact op for older runs)
        model = build_model(config["model"], n_classes=n_classes, tasks=tasks,
                            **frontend_of(config))
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path} names a model this version cannot build: {error}") from None
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        recorded = "" if tasks is None else f" with its recorded tasks {tasks}"
        raise ValueError(f"{path} does not match the {config['model']} model of this version"
                         f"{recorded}: {_first_problem(error)}") from None
    model.eval()
    try:
        saved = {layer: CorticalSheet.from_state_dict(s) for layer, s in saved_states.items()}
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} holds a malformed sheet: {error}") from None
    sheets = sheets_for(config, model, clip_samples)
    sheets.update(saved)
    return model, sheets, config
