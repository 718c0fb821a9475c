"""Where and with what a process runs: the record that a training run, an evaluation and a readout
write beside their numbers, so that each number can be traced to a commit, a machine and a thread
count (issue 21: "per run: commit, machine, threads").

Nothing here fails: a value that cannot be found (no git, not a checkout, no /proc/cpuinfo) is None.
"""
from __future__ import annotations

import os
import pathlib
import platform
import subprocess
import time

import torch

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def source_commit() -> str | None:
    """The git commit of the topoaudio source this process imported, with "+uncommitted changes"
    when tracked files differ from it; None outside a git checkout (e.g. an installed wheel)."""
    # Only a source checkout counts: an installed copy under a .venv inside some repository would
    # otherwise report that repository's commit.
    top = _git("rev-parse", "--show-toplevel")
    if not top or pathlib.Path(top).resolve() != PACKAGE_DIR.parent:
        return None
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None
    changed = _git("status", "--porcelain", "--untracked-files=no")
    return commit + ("+uncommitted changes" if changed else "")


def cpu_model() -> str | None:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def environment() -> dict:
    """A JSON-ready record of this process: time, commit, versions, machine and threads."""
    from topoaudio import __version__

    cuda = torch.cuda.is_available()
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "topoaudio": __version__,
        "commit": source_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gpu": torch.cuda.get_device_name() if cuda else None,
        # the 1-minute load average as the record is written: above the process's own threads,
        # something ran beside it
        "load_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
