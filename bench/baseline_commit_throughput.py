"""Clips per second of the default training, this tree against an earlier commit built beside it,
on the same machine in one run (issue 20: "3x today's ~40 clips/s" was read off d8c64ef's
committed log; that commit's own code, run today, is the baseline a claim can stand on).

The commit is checked out into a temporary git worktree, its extension built there without CUDA
(the same compiler and torch as this tree), and each tree trains the default config for --steps
steps in its own process (the tree's own TrainConfig defaults, as `make train` would run them, but
without validation or checkpoints), alternating round by round so that a change of the machine's
load falls on both. Per run: the median of the clips/s that metrics.jsonl records after --warmup
steps. This tree runs as `train.py` would (OMP_WAIT_POLICY=PASSIVE unless set); the old commit
runs with the environment it had, where train.py did not set the policy yet.

--busy K runs K competing processes (each `while True: pass`, nice 0) beside every training: the
claim under load, not only on an idle machine.

Run: python bench/baseline_commit_throughput.py [--commit d8c64ef] [--steps 70] [--rounds 2]
     [--busy 0]
Writes DIR/baseline.{json,md} (default bench/results/baseline-commit).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs inside a tree (as its own process, with that tree first on sys.path): the tree's default
# TrainConfig, only the settings every version has overridden.
CHILD = """
import inspect, json, statistics, sys, tempfile
from topoaudio.training import train
from topoaudio.training.config import TrainConfig
steps, warmup = int(sys.argv[1]), int(sys.argv[2])
out = tempfile.mkdtemp() + "/run"
wanted = dict(steps=steps, out=out, log_every=5, eval_every=10 ** 6, checkpoint_every=10 ** 6,
              val_size=16)
known = set(inspect.signature(TrainConfig).parameters)
train(TrainConfig(**{k: v for k, v in wanted.items() if k in known}))
rows = [json.loads(line) for line in open(out + "/metrics.jsonl")]
rates = [r["clips_per_s"] for r in rows if "clips_per_s" in r and r["step"] > warmup]
if not rates:
    raise SystemExit("this tree's metrics.jsonl records no clips_per_s")
print(json.dumps({"median_clips_per_s": statistics.median(rates), "intervals": len(rates)}))
"""


def build_worktree(commit: str, where: pathlib.Path) -> pathlib.Path:
    tree = where / f"tree-{commit}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), commit],
                   check=True, capture_output=True, text=True)
    env = {**os.environ, "TOPOAUDIO_NO_CUDA": "1"}
    print(f"building the extension of {commit} in {tree} ...", flush=True)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, env=env,
                   check=True, capture_output=True, text=True)
    return tree


def run_tree(tree: pathlib.Path, steps: int, warmup: int, passive: bool, busy: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if passive:
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    else:
        env.pop("OMP_WAIT_POLICY", None)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(steps), str(warmup)], cwd=tree,
                              env=env, capture_output=True, text=True)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    if done.returncode != 0:
        raise RuntimeError(f"training in {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commit", default="d8c64ef")
    parser.add_argument("--steps", type=int, default=70)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--busy", type=int, default=0, help="competing busy processes")
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "bench/results/baseline-commit")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} must exceed --warmup {args.warmup}")
    if args.busy < 0:
        parser.error(f"--busy must be >= 0, got {args.busy}")
    head = git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain") else "")
    runs: dict[str, list[dict]] = {args.commit: [], head: []}
    with tempfile.TemporaryDirectory() as tmp:
        old = build_worktree(args.commit, pathlib.Path(tmp))
        try:
            for round_ in range(args.rounds):
                for name, tree, passive in ((args.commit, old, False), (head, ROOT, True)):
                    runs[name].append(run_tree(tree, args.steps, args.warmup, passive, args.busy))
                    print(f"round {round_}: {name}: {runs[name][-1]['median_clips_per_s']:.1f} "
                          "clips/s", flush=True)
        finally:
            git("worktree", "remove", "--force", str(old))
    rate = {name: statistics.median(r["median_clips_per_s"] for r in rs) for name, rs in runs.items()}
    load = os.getloadavg()
    beside = f", beside {args.busy} busy process(es)" if args.busy else ""
    lines = [f"# Default training, clips per second: {head} against {args.commit}, one run{beside}",
             "",
             "| tree | clips/s, median over rounds | each round | x the old commit |",
             "|---|---:|---|---:|"]
    lines += [f"| {name} | {rate[name]:.1f} | "
              f"{', '.join(format(r['median_clips_per_s'], '.1f') for r in rs)} | "
              f"{rate[name] / rate[args.commit]:.2f} |" for name, rs in runs.items()]
    lines += ["", f"{args.steps} steps per training (the first {args.warmup} not counted), "
              f"{args.rounds} rounds, each tree's default config; python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs, load average at the end {load[0]:.2f} {load[1]:.2f} "
              f"{load[2]:.2f}."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "baseline.json").write_text(json.dumps(
        {"runs": runs, "commit": args.commit, "head": head, "steps": args.steps,
         "rounds": args.rounds, "busy": args.busy, "loadavg": load}, indent=1))
    (args.out / "baseline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
