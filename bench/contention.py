"""The fused CPU ops under contention (issue 10, target 3): 1 and 2 threads, alone and beside one
competing busy process, medians over several repeats and the ratios, each op beside a control
measured in the same conditions (the spatial loss beside torch's own N x N x B matmul, the
cochleagram beside the plain PyTorch reference).

Run: python bench/contention.py [--op spatial|cochleagram] [--mode forward|forward_backward]
     [--repeats 5] [--control reference]
`--control reference` times the spatial loss against the plain PyTorch reference (N x N matrices,
forward and backward) instead of torch's matmul: the issue's ">= 10x the reference" figure.
The competitor is a subprocess spinning `while True: pass`; it runs only during the "busy" rows.
On a machine that other jobs also use the figures are noisy: compare the ratios within one run.
"""
import argparse
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


def median_ms(step, repeats: int) -> float:
    step()  # warm-up: plans, filters, thread pool
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--op", choices=["spatial", "cochleagram"], default="spatial")
    parser.add_argument("--mode", choices=["forward", "forward_backward"], default=None,
                        help="default: forward_backward for spatial, forward for cochleagram")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--control", choices=["matmul", "reference"], default="matmul",
                        help="spatial only: the control beside the fused op (default: matmul)")
    args = parser.parse_args()
    mode = args.mode or ("forward_backward" if args.op == "spatial" else "forward")
    fused, control, control_name = (spatial_case if args.op == "spatial" else cochleagram_case)(
        mode, args.control)
    print(f"{args.op} {mode}, torch {torch.__version__}, median of {args.repeats} (ms)")
    print(f"{'condition':14s} {'threads':>7s} {'fused':>9s} {control_name:>14s} {'ctrl/fused':>10s}")
    results = {}
    for condition in ("alone", "busy"):
        spinner = None
        if condition == "busy":
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                f, c = median_ms(fused, args.repeats), median_ms(control, args.repeats)
                results[condition, threads] = f
                print(f"{condition:14s} {threads:7d} {f:9.1f} {c:14.1f} {c / f:10.2f}")
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
    for condition in ("alone", "busy"):
        ratio = results[condition, 2] / results[condition, 1]
        print(f"{condition}: fused 2 threads / 1 thread = {ratio:.2f} (target under load <= 1.2)")


if __name__ == "__main__":
    main()
