"""Training throughput of the default run (issue 20): clips per second of `train()` on the default
config (cochcnn, whole-sheet spatial loss, speech/music scenes, batch 16, 1 data worker), for the
step as it was (exact front end, contiguous convolutions) and as it is (fast front end,
channels_last), each for --steps steps in one process after --warmup steps, the median of the
per-log-interval clips/s that metrics.jsonl records. Also a per-phase profile of one step.

Run: python bench/train_throughput.py [--steps 60] [--out DIR]
Writes DIR/throughput.{json,md} (default bench/results/train-throughput). Compare within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import tempfile
import time

import torch

from topoaudio.training import loop, train
from topoaudio.training.config import TrainConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = {
    "before: exact front end, contiguous": ("exact", torch.contiguous_format),
    "fast front end, contiguous": ("fast", torch.contiguous_format),
    "exact front end, channels_last": ("exact", torch.channels_last),
    "after: fast front end, channels_last": ("fast", torch.channels_last),
}


def clips_per_second(frontend: str, memory_format, steps: int, warmup: int) -> dict:
    loop.MEMORY_FORMAT = memory_format
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        started = time.perf_counter()
        train(TrainConfig(frontend=frontend, steps=steps, out=out, log_every=5,
                          eval_every=10 ** 6, checkpoint_every=10 ** 6))
        wall = time.perf_counter() - started
        with open(os.path.join(out, "metrics.jsonl")) as handle:
            rows = [json.loads(line) for line in handle]
    rates = [r["clips_per_s"] for r in rows if "clips_per_s" in r and r["step"] > warmup]
    return {"median_clips_per_s": statistics.median(rates), "intervals": len(rates),
            "wall_s_with_setup_and_validation": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "bench/results/train-throughput")
    args = parser.parse_args()
    results = {}
    for name, (frontend, memory_format) in VARIANTS.items():
        results[name] = clips_per_second(frontend, memory_format, args.steps, args.warmup)
        print(name, results[name], flush=True)
    loop.MEMORY_FORMAT = torch.channels_last
    before = results["before: exact front end, contiguous"]["median_clips_per_s"]
    lines = ["# Default training run: clips per second (2 CPU threads, 1 data worker)", "",
             "| variant | clips/s (median) | x before |", "|---|---:|---:|"]
    lines += [f"| {name} | {r['median_clips_per_s']:.1f} | {r['median_clips_per_s'] / before:.2f} |"
              for name, r in results.items()]
    load = os.getloadavg()
    lines += ["", f"{args.steps} steps each (the first {args.warmup} not counted), torch "
              f"{torch.__version__}, {os.cpu_count()} CPUs, load average at the end "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps({"results": results, "steps": args.steps,
                                                          "loadavg": load}, indent=1))
    (args.out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
