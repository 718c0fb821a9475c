"""The run directory: where a run's files go, what a new run may not overwrite, the lock that makes
it one run's own, and how a resumed run takes its settings from its own checkpoint and drops the log
lines written after it."""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import time

from topoaudio.checkpoint import CHECKPOINT_NAME

from .config import TrainConfig, check_keys

RUNS_ROOT = "runs"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"
# One line per start of the run (the first, then each resume): topoaudio.environment's record.
ENVIRONMENT_NAME = "environment.jsonl"
# Held (fcntl.flock) by the run that owns the directory, for the run's lifetime; it holds the
# owner's pid. The OS releases the lock of a killed run, so a stale file never blocks a resume.
LOCK_NAME = "run.lock"
# What a resumed run may change: its length and how often it logs, evaluates and saves. Everything
# else defines the experiment, so changing it would not continue the same run.
# Settings whose value a new run resolves before it saves them (cpu_amp "auto" -> on/off): a resume
# that asks for the unresolved value asks for the run as it was.
RESOLVED_AT_START = {"cpu_amp": "auto"}
CHANGEABLE_ON_RESUME = ("steps", "out", "log_every", "eval_every", "checkpoint_every", "num_workers",
                        "frontend_in_workers")  # where the front end runs: the same numbers


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
    """A new run never writes into another run's files (RunLock.acquire, before it, refuses an
    `out` that is a file)."""
    taken = [name for name in (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME)
             if os.path.exists(os.path.join(out, name))]
    if taken:
        hint = ("pass --resume to continue that run" if CHECKPOINT_NAME in taken
                else "it has no checkpoint to resume from: remove them")
        raise FileExistsError(f"{out} already holds {', '.join(taken)}: {hint}, or choose another "
                              "--out, so that nothing is overwritten")


class RunDirectoryInUse(FileExistsError):
    """Another live run holds the run directory's lock."""


class RunLock:
    """The exclusive lock on a run directory: `RunLock.acquire(out)` before anything is written
    into it, `release()` when the run ends (also after an error). Only rank 0 takes it."""

    def __init__(self, out: str, fd: int, created_dir: bool):
        self.out, self.path, self._fd, self._created_dir = out, os.path.join(out, LOCK_NAME), fd, created_dir

    @classmethod
    def acquire(cls, out: str, create: bool = True) -> RunLock:
        """Lock `out` (made when `create` and absent). RunDirectoryInUse names the owner's pid
        when another run holds it; ValueError when the directory cannot be made or written."""
        if os.path.exists(out) and not os.path.isdir(out):
            raise FileExistsError(f"--out {out} is an existing file, not a directory: choose another "
                                  "--out for the run directory")
        created_dir = create and not os.path.isdir(out)
        path = os.path.join(out, LOCK_NAME)
        fd = -1
        try:
            if create:
                os.makedirs(out, exist_ok=True)
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as error:
                    owner = _read_pid(fd)
                    os.close(fd)
                    fd = -1
                    if error.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    raise RunDirectoryInUse(
                        f"{out} is in use by another run (pid {owner or 'unknown'}, which holds "
                        f"{LOCK_NAME}): wait for it to end, or choose another --out") from None
                # the owner before us may have removed the file after we opened it: lock the file
                # that is there now, or two runs could each hold a lock on a different file
                try:
                    same = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
                fd = -1
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except RunDirectoryInUse:
            raise
        except OSError as error:
            if fd >= 0:
                os.close(fd)
            if created_dir:
                _remove_if_empty(out)
            raise ValueError(f"run directory {out} cannot be created or written: "
                             f"{error.strerror or error}") from None
        return cls(out, fd, created_dir)

    def release(self) -> None:
        """Remove the lock file and unlock; a directory this run made and left empty (it failed
        before writing anything) is removed too. Safe to call twice."""
        if self._fd < 0:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)  # also for DataLoader workers that share the descriptor
        os.close(self._fd)
        self._fd = -1
        if self._created_dir:
            _remove_if_empty(self.out)


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""


def _remove_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


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
        if key in RESOLVED_AT_START and value == RESOLVED_AT_START[key]:
            continue  # "auto" asks for what the run chose when it began, which it keeps
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
