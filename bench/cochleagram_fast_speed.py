"""Speed of the fast cochleagram (issue 20) beside the exact fused op and torchaudio's mel spectrogram.

Batch 8 x 40000 float32 (2 s at 20 kHz), forward and forward+backward, 1 and 2 threads, alone and
beside one competing busy process (`while True: pass`), median of --repeats timed calls after
warm-up, all in one run. Contestants: ops.cochleagram (exact, backend cpp), the fast mode
(ops.cochleagram(mode="fast")) on the cpp backend at several oversamples and on the torch backend
at the default, and torchaudio.transforms.MelSpectrogram(sample_rate=20000, n_fft=1024,
hop_length=100, n_mels=128). Each fast case is checked against the exact op first (relative RMS
error of the output within the bound docs/SCIENCE.md states for oversample >= 4).

Run: python bench/cochleagram_fast_speed.py [--repeats 9] [--threads 1 2] [--out DIR]
Writes DIR/speed.{json,md} (default bench/results/cochleagram-fast-speed). On a machine that other
jobs share, numbers are noisy: compare within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import torch

import topoaudio.ops as ops

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "cochleagram-fast-speed"


def contestants():
    import torchaudio
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=20000, n_fft=1024, hop_length=100,
                                               n_mels=128)
    cases = {"exact (cpp)": lambda x: ops.cochleagram(x, backend="cpp")}
    for oversample in (2, 4, 8):
        cases[f"fast cpp os={oversample}"] = (lambda os_: lambda x: ops.cochleagram(
            x, mode="fast", oversample=os_, backend="cpp"))(oversample)
    cases["fast torch os=4"] = lambda x: ops.cochleagram(x, mode="fast", backend="torch")
    cases["torchaudio mel (n_fft 1024, hop 100, 128 mels)"] = mel
    return cases


def check(cases, x) -> dict:
    """Relative RMS error of each fast case against the exact op on the benchmark's input."""
    exact = ops.cochleagram(x)
    errors = {}
    for name, fn in cases.items():
        if name.startswith("fast"):
            error = ((fn(x) - exact).norm() / exact.norm()).item()
            if "os=2" not in name:
                assert error < 2e-3, f"{name}: relative RMS error {error:.2e}"
            errors[name] = error
    return errors


def timed(fn, x, backward: bool, repeats: int) -> float:
    def once():
        if backward:
            xg = x.detach().requires_grad_()
            fn(xg).sum().backward()
        else:
            with torch.no_grad():
                fn(x)
    once(), once()  # warm-up: plans, filters, FFT descriptors
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    x = torch.randn(8, 40000, generator=torch.Generator().manual_seed(0)) * 0.1
    cases = contestants()
    errors = check(cases, x)
    rows = []
    for condition in ("alone", "busy"):
        spinner = None
        if condition == "busy":
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        try:
            for threads in args.threads:
                torch.set_num_threads(threads)
                for name, fn in cases.items():
                    row = {"op": name, "condition": condition, "threads": threads}
                    for mode, backward in (("forward_ms", False), ("forward_backward_ms", True)):
                        median, best = timed(fn, x, backward, args.repeats)
                        row[mode], row[mode.replace("_ms", "_min_ms")] = 1e3 * median, 1e3 * best
                    rows.append(row)
                    print(row, flush=True)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    load = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"batch": [8, 40000], "dtype": "float32", "repeats": args.repeats,
            "loadavg_at_end": load, "torch": torch.__version__, "rel_rms_error": errors}
    (args.out / "speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["# Cochleagram modes: speed (batch 8 x 40000 float32, medians and minima, ms)", "",
             "| op | condition | threads | forward (min) | fwd+bwd (min) | forward / exact | "
             "forward / mel |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        same = [q for q in rows if q["condition"] == r["condition"] and q["threads"] == r["threads"]]
        exact = next(q for q in same if q["op"].startswith("exact"))["forward_ms"]
        mel = next(q for q in same if q["op"].startswith("torchaudio"))["forward_ms"]
        lines.append(f"| {r['op']} | {r['condition']} | {r['threads']} | {r['forward_ms']:.1f} "
                     f"({r['forward_min_ms']:.1f}) | {r['forward_backward_ms']:.1f} "
                     f"({r['forward_backward_min_ms']:.1f}) | {r['forward_ms'] / exact:.3f} | "
                     f"{r['forward_ms'] / mel:.2f} |")
    lines += ["", "Relative RMS error of each fast case against the exact op on this input: " +
              ", ".join(f"{k} {v:.1e}" for k, v in errors.items()),
              f"Load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}."]
    (args.out / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
