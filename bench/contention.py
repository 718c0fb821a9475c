"""The fused CPU ops under contention (issue 10, target 3; issue 23): 1 and 2 threads, alone and beside
competing busy processes, medians over several repeats and the ratios, each op beside a control
measured in the same conditions (the spatial loss beside torch's own N x N x B matmul, the
cochleagram beside the plain PyTorch reference).

Run: python bench/contention.py [--op spatial|cochleagram] [--mode forward|forward_backward]
     [--repeats 5] [--control reference] [--busy 1,3]
`--control reference` times the spatial loss against the plain PyTorch reference (N x N matrices,
forward and backward) instead of torch's matmul: the issue's ">= 10x the reference" figure.
The competitors are subprocesses spinning `while True: pass`, `--busy` of them per "busy" condition
(default 1; issue 23's heavier load: `--busy 1,3` adds a condition with three); "K+T" adds T
training-like jobs (a 2-thread torch loop of small matmuls and elementwise ops, whose OpenMP threads
fork, spin and wait as a training step's do) to K spinners, e.g. `--busy 1,3,3+1`. They run only
during that condition's rows. Within a condition the 1- and 2-thread calls alternate, repeat by repeat, so
that a change in the load from other jobs falls on both. On a machine that other jobs also use the
figures are noisy: compare the ratios within one run.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

import topoaudio.ops as ops


def spatial_case(mode: str, control_kind: str = "matmul"):
    """(fused step, control step) at N = 8192, B = 64, the issue's size."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, 8192, generator=generator, requires_grad=mode != "forward")
    positions = torch.rand(8192, 2, generator=generator) * 20
    weights = torch.rand(8192, 8192, generator=generator)
    z = torch.randn(8192, 64, generator=generator)

    def fused():
        loss = ops.spatial_loss(features, positions, backend="cpp")
        if mode != "forward":
            loss.backward()
            features.grad = None

    def control():  # one dense N x N x B product, what the kernel's W z costs in torch's GEMM
        torch.mm(weights, z)

    def reference():  # the definition: N x N correlation and weight matrices, autograd backward
        loss = ops.reference.spatial_loss(features, positions)
        if mode != "forward":
            loss.backward()
            features.grad = None

    if control_kind == "reference":
        return fused, reference, "reference"
    return fused, control, "torch.mm W z"


def cochleagram_case(mode: str, control_kind: str = "reference"):
    """(fused step, reference step) at batch 8, 2 s clips, as bench/test_cochleagram.py."""
    waveform = 0.1 * torch.randn(8, 40000, generator=torch.Generator().manual_seed(0))
    waveform.requires_grad_(mode != "forward")

    def run(backend):
        def step():
            out = ops.cochleagram(waveform, backend=backend)
            if mode != "forward":
                out.sum().backward()
                waveform.grad = None
        return step

    return run("cpp"), run("reference"), "reference"


SPINNER = "while True: pass"
TORCH_JOB = """import torch
torch.set_num_threads(2)
weights, batch = torch.randn(256, 256), torch.randn(64, 8192)
while True:
    hidden = (weights @ weights).relu_()
    batch.mul_(0.5).add_(hidden[:64, :1]).tanh_().sum()
"""


def competitors(spec: str) -> tuple[str, list[str]]:
    """("busy", "busy x3" or "busy x3 +1 torch", the programs) for a --busy item "K" or "K+T"."""
    spinners, _, jobs = spec.partition("+")
    count, torch_jobs = int(spinners), int(jobs or 0)
    label = "busy" if count == 1 else f"busy x{count}"
    if torch_jobs:
        label += f" +{torch_jobs} torch"
    return label, [SPINNER] * count + [TORCH_JOB] * torch_jobs


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def medians_ms(fused, control, repeats: int) -> dict:
    """{threads: (fused median ms, control median ms)} for 1 and 2 threads, alternating."""
    times = {threads: ([], []) for threads in (1, 2)}
    for threads in (1, 2):  # warm-up: plans, filters, thread pool
        torch.set_num_threads(threads)
        fused()
        control()
    for _ in range(repeats):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            times[threads][0].append(timed(fused))
            times[threads][1].append(timed(control))
    return {threads: tuple(1e3 * statistics.median(t) for t in pair)
            for threads, pair in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", choices=["spatial", "cochleagram"], default="spatial")
    parser.add_argument("--mode", choices=["forward", "forward_backward"], default=None,
                        help="default: forward_backward for spatial, forward for cochleagram")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--control", choices=["matmul", "reference"], default="matmul",
                        help="spatial only: the control beside the fused op (default: matmul)")
    parser.add_argument("--busy", default="1",
                        help="comma-separated busy conditions, each K spinning processes or K+T "
                             "(plus T training-like torch jobs); default 1, e.g. 1,3,3+1")
    args = parser.parse_args()
    mode = args.mode or ("forward_backward" if args.op == "spatial" else "forward")
    fused, control, control_name = (spatial_case if args.op == "spatial" else cochleagram_case)(
        mode, args.control)
    print(f"{args.op} {mode}, torch {torch.__version__}, {os.cpu_count()} CPUs, median of "
          f"{args.repeats} (ms), 1 and 2 threads alternating")
    print(f"load average at start: {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print(f"{'condition':18s} {'threads':>7s} {'fused':>9s} {control_name:>14s} {'ctrl/fused':>10s}")
    conditions = [("alone", [])] + [competitors(spec.strip()) for spec in args.busy.split(",")
                                    if spec.strip()]
    results = {}
    for condition, programs in conditions:
        spinners = [subprocess.Popen([sys.executable, "-c", program]) for program in programs]
        if spinners:
            time.sleep(2.0 if any(program != SPINNER for program in programs) else 0.5)
        try:
            for threads, (f, c) in medians_ms(fused, control, args.repeats).items():
                results[condition, threads] = f
                print(f"{condition:18s} {threads:7d} {f:9.1f} {c:14.1f} {c / f:10.2f}")
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    for condition, _ in conditions:
        ratio = results[condition, 2] / results[condition, 1]
        print(f"{condition}: fused 2 threads / 1 thread = {ratio:.2f} (target under load <= 1.2)")
    print(f"load average at end: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
