"""Training throughput of the default run (issue 20): clips per second of `train()` on the default
config (cochcnn, whole-sheet spatial loss, speech/music scenes, batch 16, 1 data worker), for the
step as it was (exact front end, contiguous convolutions, float32) and with each change since (the
fast front end, channels_last, bf16 autocast on the CPU, OpenMP threads that sleep instead of spin
while they wait, cochcnn's batch norm + ReLU + max-pool as one fused op, the cochleagrams computed
in the DataLoader worker beside the synthesis), each variant in its own
process, the variants alternating round by round so that a change of the machine's load falls on
all of them. Per variant: the median of the per-log-interval clips/s that metrics.jsonl records,
after --warmup steps. Then a per-phase profile of one step of the first and the last variant, on
batches rendered beforehand (so without the scenes' synthesis, which is timed apart, per clip, on
one thread). The profile runs every phase in one process, the front end included, also for a
variant that computes it in the worker during training.

Run: python bench/train_throughput.py [--steps 40] [--rounds 2] [--out DIR]
Writes DIR/throughput.{json,md} (default bench/results/train-throughput). Compare within one run.
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
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# name: (front end, channels_last, cpu_amp, OpenMP wait policy or None for the default, cochcnn's
# batch norm + ReLU + max-pool fused into one op, the cochleagrams computed in the DataLoader
# worker with 1 thread left to the network: frontend_in_workers on/off)
VARIANTS = {
    "before: exact, contiguous, float32": ("exact", False, "off", None, False, "off"),
    "fast front end, channels_last": ("fast", True, "off", None, False, "off"),
    "fast, channels_last, bf16 autocast": ("fast", True, "on", None, False, "off"),
    "fast, channels_last, bf16, OMP_WAIT_POLICY=PASSIVE": ("fast", True, "on", "PASSIVE", False, "off"),
    "+ fused batch norm, ReLU, max-pool": ("fast", True, "on", "PASSIVE", True, "off"),
    "+ front end in the DataLoader worker": ("fast", True, "on", "PASSIVE", True, "on"),
}


def _memory_format(channels_last: bool):
    import torch
    return torch.channels_last if channels_last else torch.contiguous_format


def run_variant(name: str, steps: int, warmup: int) -> dict:
    """One variant in this process: a short default training, its median clips/s."""
    from topoaudio.models.cochcnn import ConvBlock
    from topoaudio.training import loop, train
    from topoaudio.training.config import TrainConfig

    frontend, channels_last, cpu_amp, _, fused, in_workers = VARIANTS[name]
    loop.MEMORY_FORMAT = _memory_format(channels_last)
    ConvBlock.fused = fused
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        started = time.perf_counter()
        train(TrainConfig(frontend=frontend, cpu_amp=cpu_amp, steps=steps, out=out, log_every=5,
                          eval_every=10 ** 6, checkpoint_every=10 ** 6,
                          frontend_in_workers=in_workers))
        wall = time.perf_counter() - started
        with open(os.path.join(out, "metrics.jsonl")) as handle:
            rows = [json.loads(line) for line in handle]
    rates = [r["clips_per_s"] for r in rows if "clips_per_s" in r and r["step"] > warmup]
    return {"median_clips_per_s": statistics.median(rates), "intervals": len(rates),
            "wall_s_with_setup_and_validation": wall, "loadavg_after": os.getloadavg()}


def profile_variant(name: str, repeats: int = 8) -> dict:
    """Milliseconds per phase of one training step (batch 16, rendered beforehand), medians."""
    import torch

    from topoaudio.models import build_model, frontend_of, tapped
    from topoaudio.models.cochcnn import ConvBlock
    from topoaudio.training import loop
    from topoaudio.training.config import TrainConfig
    from topoaudio.training.data import build_datasets, collate
    from topoaudio.training.objective import Objective
    from topoaudio.training.topography import TopographicLosses

    frontend, channels_last, cpu_amp, _, fused, _ = VARIANTS[name]
    ConvBlock.fused = fused
    config = TrainConfig(frontend=frontend, cpu_amp=cpu_amp)
    train_set, _ = build_datasets(config)
    started = time.perf_counter()
    items = [train_set[i] for i in range(4 * config.batch_size)]
    render_ms = (time.perf_counter() - started) / len(items) * 1e3
    batches = [collate(items[i * config.batch_size:(i + 1) * config.batch_size]) for i in range(4)]
    objective = Objective.for_dataset(config, train_set)
    torch.manual_seed(0)
    model = build_model(config.model, **objective.model_heads(), **frontend_of(config.to_dict()))
    model = model.to(memory_format=_memory_format(channels_last))
    topo = TopographicLosses(config, model, torch.device("cpu"), clip_samples=items[0][0].numel())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    autocast = loop._autocast(config, torch.device("cpu"))
    phases: dict[str, list[float]] = {p: [] for p in
                                      ("front end", "network forward", "topographic terms",
                                       "backward", "optimizer", "step")}
    for repeat in range(repeats + 2):
        waveforms, labels = batches[repeat % len(batches)]
        t0 = time.perf_counter()
        with torch.no_grad():
            model.frontend(waveforms)
        t1 = time.perf_counter()
        with autocast, tapped(model, topo.layers) as features:
            task_loss, _ = objective.loss(model(waveforms), labels)
        t2 = time.perf_counter()
        topo_total, _ = topo(features, 100)
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        (task_loss + topo_total).backward()
        t4 = time.perf_counter()
        optimizer.step()
        t5 = time.perf_counter()
        if repeat >= 2:  # the forward includes the front end again: its share is subtracted
            for phase, ms in zip(phases, (t1 - t0, (t2 - t1) - (t1 - t0), t3 - t2, t4 - t3,
                                          t5 - t4, t5 - t1), strict=True):
                phases[phase].append(ms * 1e3)
    return {"render_ms_per_clip_1_thread": render_ms,
            **{phase: statistics.median(values) for phase, values in phases.items()}}


def _child(name: str, task: str, args) -> dict:
    env = dict(os.environ)
    policy = VARIANTS[name][3]
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, __file__, "--child", task, "--variant", name,
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "bench/results/train-throughput")
    parser.add_argument("--child", choices=("train", "profile"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = (run_variant(args.variant, args.steps, args.warmup) if args.child == "train"
                  else profile_variant(args.variant))
        print(json.dumps(result))
        return
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        for name in VARIANTS:
            runs[name].append(_child(name, "train", args))
            print(f"round {round_}: {name}: {runs[name][-1]['median_clips_per_s']:.1f} clips/s",
                  flush=True)
    first, last = list(VARIANTS)[0], list(VARIANTS)[-1]
    profiles = {name: _child(name, "profile", args) for name in (first, last)}
    rate = {name: statistics.median(r["median_clips_per_s"] for r in rs) for name, rs in runs.items()}
    lines = ["# Default training run: clips per second (2 CPU threads, 1 data worker)", "",
             "| variant | clips/s, median over rounds | each round | x before |",
             "|---|---:|---|---:|"]
    lines += [f"| {name} | {rate[name]:.1f} | "
              f"{', '.join(format(r['median_clips_per_s'], '.1f') for r in runs[name])} | "
              f"{rate[name] / rate[first]:.2f} |" for name in VARIANTS]
    lines += ["", "Per phase of one step, ms (batch 16 rendered beforehand; medians of 8):", "",
              "| phase | " + " | ".join(profiles) + " |", "|---|" + "---:|" * len(profiles)]
    for phase in profiles[first]:
        lines.append(f"| {phase} | " + " | ".join(f"{p[phase]:.1f}" for p in profiles.values()) + " |")
    load = os.getloadavg()
    lines += ["", f"{args.steps} steps per training (the first {args.warmup} not counted), "
              f"{args.rounds} rounds; python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
              f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(
        {"runs": runs, "profiles": profiles, "steps": args.steps, "rounds": args.rounds,
         "loadavg": load}, indent=1))
    (args.out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
