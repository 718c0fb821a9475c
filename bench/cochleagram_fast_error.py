"""Errors of the fast cochleagram (topoaudio.ops.cochleagram_fast, issue 20) against the exact op.

For each oversample, over the 165 NH2015 natural sounds (first 2 s at 20 kHz, RMS 0.1, as the
project reads them) and the golden fixtures' 5 sounds (tests/fixtures/cochleagram_reference.npz:
4 test waveforms and the example speech clip), everything in float64:
- the compressed output: max |diff|, 99th percentile of |diff|, relative RMS ||diff|| / ||exact||,
  and the worst sound's relative RMS;
- the uncompressed downsampled envelope: relative RMS;
- the gradient d/dx of sum(out * G) (G fixed, uniform [0, 1), seeded per sound): max |diff|,
  99th percentile and relative RMS, and the worst sound's relative RMS.
The exact numbers are topoaudio.ops.cochleagram in its default mode (the cpp backend on the CPU).

Run: python bench/cochleagram_fast_error.py [--natsound165 ../shared/natsound165] [--threads 2]
     [--oversample 2 3 4 6 8] [--limit N] [--grad-every 1]
Writes bench/results/cochleagram-fast-error/{errors.json, errors.md}.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import subprocess
import time

import numpy as np
import torch

import topoaudio.ops as ops
from topoaudio.ops.cochleagram_fast import cochleagram_fast, fast_plan
from topoaudio.ops.cochlear_filters import CochleagramConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "cochleagram-fast-error"
BATCH = 10


def sounds(natsound_dir: pathlib.Path, limit: int | None):
    """(names, subset labels, waveforms float64 [N, 40000])."""
    from topoaudio.data.natsound165 import load_natsound165
    nat = load_natsound165(natsound_dir)
    fixtures = np.load(ROOT / "tests" / "fixtures" / "cochleagram_reference.npz")
    fixture_waves = np.concatenate([fixtures["waveforms"], fixtures["example_waveform"][None]])
    names = list(nat.names) + ["fixture_noise", "fixture_am_tone", "fixture_chirp",
                               "fixture_harmonic", "fixture_example_speech"]
    subset = ["nh2015"] * len(nat.names) + ["fixtures"] * 5
    waves = torch.cat([nat.waveforms.double(), torch.tensor(fixture_waves, dtype=torch.float64)])
    if limit is not None:
        keep = list(range(min(limit, len(nat.names)))) + list(range(len(nat.names), len(names)))
        names, subset, waves = [names[i] for i in keep], [subset[i] for i in keep], waves[keep]
    return names, subset, waves


def grad_weights(index: int, shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + index)
    return torch.rand(shape, generator=generator, dtype=torch.float64)


def run_op(fn, batch: torch.Tensor, first: int, with_grad: bool):
    """(out, envelope, grad or None) of one batch of sounds."""
    x = batch.clone().requires_grad_(with_grad)
    out = fn(x, compression="power")
    grad = None
    if with_grad:
        weights = torch.stack([grad_weights(first + i, out.shape[1:]) for i in range(len(batch))])
        (grad,) = torch.autograd.grad((out * weights).sum(), x)
    with torch.no_grad():
        envelope = fn(batch, compression=None)
    return out.detach(), envelope, grad


def stats(diff: np.ndarray, ref: np.ndarray, per_sound_axis) -> dict:
    adiff = np.abs(diff)
    per_sound = (np.sqrt((diff ** 2).sum(axis=per_sound_axis))
                 / np.sqrt((ref ** 2).sum(axis=per_sound_axis)))
    return {"max_abs": float(adiff.max()), "p99_abs": float(np.percentile(adiff, 99)),
            "rel_rms": float(np.linalg.norm(diff) / np.linalg.norm(ref)),
            "worst_sound_rel_rms": float(per_sound.max()),
            "worst_sound": int(per_sound.argmax())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--natsound165", default=str(ROOT.parent / "shared" / "natsound165"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--oversample", type=float, nargs="+", default=[2, 3, 4, 6, 8])
    parser.add_argument("--limit", type=int, default=None, help="first N NH2015 sounds only")
    parser.add_argument("--grad-every", type=int, default=1,
                        help="gradients for every k-th batch of sounds only (1: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    names, subset, waves = sounds(pathlib.Path(args.natsound165), args.limit)
    n_sounds = len(names)
    config = CochleagramConfig()

    def exact(x, compression):
        return ops.cochleagram(x, compression=compression)

    fns = {"exact": exact}
    for oversample in args.oversample:
        fns[oversample] = (lambda os_: lambda x, compression: cochleagram_fast(
            x, oversample=os_, compression=compression))(oversample)
    outs = {key: [] for key in fns}
    envs = {key: [] for key in fns}
    grads = {key: [] for key in fns}
    grad_rows = []
    seconds = {key: 0.0 for key in fns}
    for b, first in enumerate(range(0, n_sounds, BATCH)):
        batch = waves[first:first + BATCH]
        with_grad = b % args.grad_every == 0
        if with_grad:
            grad_rows += list(range(first, first + len(batch)))
        for key, fn in fns.items():
            t0 = time.perf_counter()
            out, env, grad = run_op(fn, batch, first, with_grad)
            seconds[key] += time.perf_counter() - t0
            outs[key].append(out.numpy().astype(np.float64))
            envs[key].append(env.numpy())
            if grad is not None:
                grads[key].append(grad.numpy())
        print(f"{first + len(batch)}/{n_sounds} sounds, {time.time() - started:.0f} s", flush=True)
    cat = {kind: {key: np.concatenate(value) for key, value in store.items()}
           for kind, store in (("out", outs), ("env", envs), ("grad", grads))}
    subsets = {"all": np.arange(n_sounds),
               "nh2015": np.array([i for i, s in enumerate(subset) if s == "nh2015"]),
               "fixtures": np.array([i for i, s in enumerate(subset) if s == "fixtures"])}
    grad_index = {i: j for j, i in enumerate(grad_rows)}
    results = []
    for oversample in args.oversample:
        plan = fast_plan(config, waves.shape[-1], oversample, None, "cpu", torch.float64)
        row = {"oversample": oversample, "effective_oversample": plan.effective_oversample,
               "groups": len(plan.groups), "sampled_points_per_clip": plan.sampled_points,
               "seconds_fwd_bwd_float64": seconds[oversample]}
        for name, rows in subsets.items():
            out = stats(cat["out"][oversample][rows] - cat["out"]["exact"][rows],
                        cat["out"]["exact"][rows], (1, 2))
            out["worst_sound"] = names[rows[out["worst_sound"]]]
            env_diff = cat["env"][oversample][rows] - cat["env"]["exact"][rows]
            env_rel = float(np.linalg.norm(env_diff) / np.linalg.norm(cat["env"]["exact"][rows]))
            g_rows = [grad_index[i] for i in rows if i in grad_index]
            grad = stats(cat["grad"][oversample][g_rows] - cat["grad"]["exact"][g_rows],
                         cat["grad"]["exact"][g_rows], 1)
            grad["worst_sound"] = names[grad_rows[g_rows[grad["worst_sound"]]]]
            grad["sounds"] = len(g_rows)
            grad["exact_max_abs"] = float(np.abs(cat["grad"]["exact"][g_rows]).max())
            row[name] = {"out": out, "envelope_rel_rms": env_rel, "grad": grad,
                         "sounds": len(rows)}
        results.append(row)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    meta = {"sounds": n_sounds, "gradient_sounds": len(grad_rows), "dtype": "float64",
            "threads": args.threads, "exact_seconds_fwd_bwd_float64": seconds["exact"],
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "commit (tree had uncommitted changes)": commit,
            "wall_seconds": time.time() - started}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "errors.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (OUT / "errors.md").write_text(markdown(meta, results))
    print(markdown(meta, results))


def markdown(meta, results) -> str:
    lines = [f"# Fast cochleagram: errors against the exact op (float64, {meta['sounds']} sounds: "
             f"165 NH2015 + 5 fixture clips; gradients of {meta['gradient_sounds']})", "",
             "Output = compressed cochleagram (values ~0.01-0.6); gradient = d/dx sum(out * G), "
             "G uniform [0, 1).", ""]
    for name in ("all", "nh2015", "fixtures"):
        lines += [f"## {name} ({results[0][name]['sounds']} sounds)", "",
                  "| oversample (effective) | out max abs | out p99 | out rel RMS | worst sound rel RMS "
                  "| envelope rel RMS | grad max abs (exact max) | grad p99 | grad rel RMS "
                  "| worst sound grad rel RMS |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in results:
            r, o, g = row[name], row[name]["out"], row[name]["grad"]
            lines.append(
                f"| {row['oversample']:g} ({row['effective_oversample']:.2f}) | {o['max_abs']:.2e} "
                f"| {o['p99_abs']:.2e} | {o['rel_rms']:.2e} | {o['worst_sound_rel_rms']:.2e} "
                f"({o['worst_sound']}) | {r['envelope_rel_rms']:.2e} | {g['max_abs']:.2e} "
                f"({g['exact_max_abs']:.2e}) | {g['p99_abs']:.2e} | {g['rel_rms']:.2e} "
                f"| {g['worst_sound_rel_rms']:.2e} ({g['worst_sound']}) |")
        lines.append("")
    lines.append(f"Threads {meta['threads']}, torch {meta['torch']}, wall {meta['wall_seconds']:.0f} s "
                 "(a shared 2-core machine: other processes were running).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
