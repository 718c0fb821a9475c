"""The run directory: where a run's files go, what a new run may not overwrite, and how a resumed
run takes its settings from its own checkpoint and drops the log lines written after it."""
from __future__ import annotations

import dataclasses
import json
import os
import time

from topoaudio.checkpoint import CHECKPOINT_NAME

from .config import TrainConfig, check_keys

RUNS_ROOT = "runs"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
# What a resumed run may change: its length and how often it logs, evaluates and saves. Everything
# else defines the experiment, so changing it would not continue the same run.
CHANGEABLE_ON_RESUME = ("steps", "out", "log_every", "eval_every", "checkpoint_every", "num_workers")


def default_out(config: TrainConfig) -> str:
    return os.path.join(RUNS_ROOT, f"{config.model}-{config.topo}-{time.strftime('%Y%m%d-%H%M%S')}")


def latest_run(root: str = RUNS_ROOT) -> str:
    """The run under `root` whose checkpoint was written last, or "" when there is none."""
    if not os.path.isdir(root):
        return ""
    checkpoints = [os.path.join(root, name, CHECKPOINT_NAME) for name in os.listdir(root)]
    checkpoints = [path for path in checkpoints if os.path.isfile(path)]
    return os.path.dirname(max(checkpoints, key=os.path.getmtime)) if checkpoints else ""


def check_new_run(out: str) -> None:
    """A new run never writes into another run's files."""
    taken = [name for name in (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME)
             if os.path.exists(os.path.join(out, name))]
    if taken:
        hint = ("pass --resume to continue that run" if CHECKPOINT_NAME in taken
                else "it has no checkpoint to resume from: remove them")
        raise FileExistsError(f"{out} already holds {', '.join(taken)}: {hint}, or choose another "
                              "--out, so that nothing is overwritten")


def resumed_config(saved: dict, requested: dict, step: int, out: str) -> TrainConfig:
    """The settings of the run in `out` (saved in its checkpoint at `step`), with the requested
    changes that CHANGEABLE_ON_RESUME allows. Any other requested setting must equal the saved
    one: a ValueError names the first that does not."""
    check_keys(saved, f"the checkpoint of {out}")
    check_keys(requested, "the resume request")
    try:
        run = TrainConfig(**saved)
    except ValueError as error:
        raise ValueError(f"the checkpoint of {out} holds settings this version refuses: {error}") from None
    for key, value in requested.items():
        if key not in CHANGEABLE_ON_RESUME and value != getattr(run, key):
            raise ValueError(f"--resume: the run in {out} has {key}={getattr(run, key)!r}, not "
                             f"{value!r}; a resumed run keeps its settings (only "
                             f"{', '.join(CHANGEABLE_ON_RESUME)} may change)")
    changes = {key: value for key, value in requested.items() if key in CHANGEABLE_ON_RESUME}
    run = dataclasses.replace(run, **{**changes, "out": out})
    if run.steps < step:
        raise ValueError(f"--resume: steps={run.steps} is below the checkpoint's step {step} in {out}")
    if run.steps == step:
        raise ValueError(f"--resume: the run in {out} is complete at step {step}; pass --steps N "
                         f"with N > {step} to extend it")
    return run


def write_json_atomic(path: str, record: dict) -> None:
    """Write to a temporary file beside `path`, then rename: a reader sees the old or the new file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(record, handle, indent=2)
    os.replace(tmp, path)


def keep_metrics_up_to(path: str, step: int) -> None:
    """Drop the log lines a killed run wrote after its checkpoint at `step`: the resumed run writes
    those steps again, so each step is logged once."""
    if not os.path.exists(path):
        return
    with open(path) as handle:
        lines = handle.read().splitlines()
    kept = [line for line in lines if _step(line) <= step]
    if len(kept) == len(lines):
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.writelines(line + "\n" for line in kept)
    os.replace(tmp, path)


def _step(line: str) -> float:
    """The step of a log line; a line cut short by the kill counts as after every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def summary(out: str, final: dict, seconds: float) -> str:
    """The line a finished run ends with."""
    minutes, secs = divmod(round(seconds), 60)
    if "val_accuracy" not in final:
        accuracy = "no validation"
    elif isinstance(final["val_accuracy"], dict):  # multi-task: each task against its own chance
        accuracy = "validation accuracy " + ", ".join(
            f"{task} {'n/a (no labelled clip)' if value is None else f'{value:.3f}'} "
            f"(chance {final['chance'][task]:.3f})" for task, value in final["val_accuracy"].items())
    else:
        accuracy = f"validation accuracy {final['val_accuracy']:.3f} (chance {final['chance']:.3f})"
    return f"run {out}: step {final.get('step')}, {accuracy}, wall time {minutes} min {secs} s"
