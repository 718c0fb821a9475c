"""Train the issue-21 study (docs/SCIENCE.md section 8): none / spatial / topoloss, seeds 0-4,
3,200 steps of the default recipe. Run it again after an interruption: finished runs are skipped,
an interrupted one resumes bit for bit from its last checkpoint.

    python docs/results/issue21/train_study.py --runs runs/study21

The runs go seed by seed (none, spatial, topoloss for seed 0, then seed 1, ...), so a study cut
short still has balanced groups. For each run this writes, beside the run's own config.json and
metrics.jsonl, a provenance.jsonl with one line per piece of training (a resumed run has several):
commit, machine, threads, wall time, the clips/s it reached and the machine's load while it ran
(what ran beside it), and copies the three files into docs/results/issue21/runs/<name>/ when the
run is complete.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time

STEPS = 3200
SEEDS = (0, 1, 2, 3, 4)
GROUPS = {  # name: the settings beside the defaults
    "none": ["--topo", "none"],
    "spatial": ["--topo", "spatial"],
    "topoloss": ["--topo", "topoloss", "--sheet", "channels"],
}
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))


def run_names() -> list[str]:
    return [f"{group}-seed{seed}" for seed in SEEDS for group in GROUPS]


def final_step(out: str) -> int:
    """The step of the run's last validation line, 0 when it has none."""
    path = os.path.join(out, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    last = 0
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "val_accuracy" in record:
                last = record["step"]
    return last


def commit() -> str:
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True)
    return sha.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


class LoadSampler:
    """The 1-minute load average every 30 s while a run trains: above ~2 on two cores means
    something ran beside it."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self._stop.wait(30.0):
            with open("/proc/loadavg") as f:
                self.samples.append(float(f.read().split()[0]))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def clips_per_s(out: str, from_step: int) -> float | None:
    """Median clips/s of the log lines after `from_step` (this piece of training)."""
    values = []
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "clips_per_s" in record and record["step"] > from_step:
                values.append(record["clips_per_s"])
    values.sort()
    return values[len(values) // 2] if values else None


def train(name: str, root: str, keep_root: str) -> None:
    out = os.path.join(root, name)
    group, seed = name.rsplit("-seed", 1)
    done = final_step(out)
    if done >= STEPS:
        return
    resume = os.path.exists(os.path.join(out, "checkpoint.pt"))
    args = ["--out", out, "--resume"] if resume else [
        "--out", out, "--steps", str(STEPS), "--seed", seed, *GROUPS[group]]
    command = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone",
               "--nproc_per_node=1", os.path.join(REPO, "train.py"), *args]
    record = {"run": name, "commit": commit(), "machine": cpu_model(),
              "cpus": os.cpu_count(), "python": platform.python_version(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset (torch: all cores)"),
              "resumed_from_validated_step": done if resume else None,
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "command": " ".join(command[3:])}
    print(f"== {name}: {'resume' if resume else 'start'}", flush=True)
    tic = time.time()
    with LoadSampler() as load:
        result = subprocess.run(command, cwd=REPO)
    record.update(wall_s=round(time.time() - tic, 1), returncode=result.returncode,
                  reached_step=final_step(out), median_clips_per_s=clips_per_s(out, done),
                  load_1min_mean=round(sum(load.samples) / len(load.samples), 2)
                  if load.samples else None,
                  load_1min_max=max(load.samples) if load.samples else None)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "provenance.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    if result.returncode != 0:
        raise SystemExit(f"{name}: training exited with {result.returncode}; see above")
    if final_step(out) >= STEPS:
        keep = os.path.join(keep_root, name)
        os.makedirs(keep, exist_ok=True)
        for file in ("config.json", "metrics.jsonl", "provenance.jsonl"):
            shutil.copy(os.path.join(out, file), os.path.join(keep, file))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=os.path.join(REPO, "runs", "study21"),
                        help="where the run directories (with their checkpoints) live")
    parser.add_argument("--keep", default=os.path.join(HERE, "runs"),
                        help="where a complete run's config, metrics and provenance are copied")
    parser.add_argument("--only", nargs="*", default=None, help="these runs (e.g. none-seed0)")
    args = parser.parse_args()
    names = args.only or run_names()
    unknown = sorted(set(names) - set(run_names()))
    if unknown:
        raise SystemExit(f"--only: no such run {unknown}; the runs are {run_names()}")
    for name in names:
        train(name, args.runs, args.keep)


if __name__ == "__main__":
    main()
