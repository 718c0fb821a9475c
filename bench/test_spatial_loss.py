"""Spatial loss: fused backends against the N x N reference, forward and forward+backward.

CPU targets: N=8192, B=64 forward+backward >= 10x faster than the reference; N=65,536, B=64 in
< 1.5 GB peak RSS (the reference would need > 30 GB: it is not run, and the table says so).
GPU targets: N=16,384, B=256 >= 20x faster than the reference; the weighted-sum kernel's FLOP rate
against the card's measured dense matmul rate; N=1,048,576 at B=64 runs.
Each (case, backend) is first checked against the reference in float64 on the benchmark's own
input, with the tolerances tests/test_spatial_loss.py asserts (loaded from it). The quick default
runs the first case of each device (the README's claim); --full adds the others, the largest size
and the chunked PyTorch fallback.
Run: pytest bench/test_spatial_loss.py --benchmark-only [--full]
"""
import functools
import os

import pytest
import torch
from conftest import bench_device, peak_memory_mb, record, spatial_tolerances, synchronize

import topoaudio.ops as ops

DEVICE = bench_device()
FULL = pytest.mark.full
BACKENDS = {"cpu": ["reference", pytest.param("torch", marks=FULL), "cpp"],
            "cuda": ["reference", pytest.param("torch", marks=FULL), "triton", "cuda"]}
# (N, B, kind, radius) per device: the sizes first; the first is the README's claim
CASES = {
    "cpu": [(8192, 64, "relative", None), (8192, 64, "relative", 2.0), (8192, 64, "absolute", None),
            (65536, 64, "relative", None)],
    "cuda": [(16384, 256, "relative", None), (16384, 256, "relative", 2.0),
             (16384, 256, "absolute", None), (1 << 20, 64, "relative", None)],
}
CASE_PARAMS = {device: [cases[0]] + [pytest.param(case, marks=FULL) for case in cases[1:]]
               for device, cases in CASES.items()}
REFERENCE_BYTES_PER_PAIR = 40  # N x N float32 r, d, w, two masks, float64 pair vectors, grads


def available_bytes() -> int:
    if DEVICE == "cuda":
        return torch.cuda.mem_get_info()[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def case_id(case):
    n, b, kind, radius = case
    return f"N{n}-B{b}-{kind}" + ("" if radius is None else f"-r{radius:g}")


def make_inputs(n_units, batch):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(batch, n_units, generator=generator).to(DEVICE)
    positions = (torch.rand(n_units, 2, generator=generator) * 20).to(DEVICE)
    return features, positions


@functools.cache
def reference_float64(case):
    """The float64 reference's value and gradient on the benchmark's input, once per case (the
    correctness tests compare every float32 path with the float64 reference, too)."""
    n_units, batch, kind, radius = case
    features, positions = make_inputs(n_units, batch)
    x = features.double().requires_grad_(True)
    loss = ops.reference.spatial_loss(x, positions.double(), kind=kind, radius=radius)
    loss.backward()
    return loss.item(), x.grad


@functools.cache
def check_against_reference(case, backend: str) -> str:
    """Fails the case unless value and gradient match the float64 reference's within the tests'
    float32 tolerances; says why when the reference cannot run at this size."""
    n_units, batch, kind, radius = case
    need = 2 * REFERENCE_BYTES_PER_PAIR * n_units ** 2  # float64: twice the float32 footprint
    if need > 0.8 * available_bytes():
        return f"not checked: the float64 reference would need ~{need / 2 ** 30:.0f} GiB"
    expected, expected_grad = reference_float64(case)
    value_tol, grad_tol, grad_floor = spatial_tolerances(torch.float32)
    features, positions = make_inputs(n_units, batch)
    x = features.requires_grad_(True)
    loss = ops.spatial_loss(x, positions, kind=kind, radius=radius, backend=backend)
    loss.backward()
    value_error = abs(loss.item() - expected) / abs(expected)
    grad_error = (x.grad.double() - expected_grad).norm().item()
    grad_norm = expected_grad.norm().item()
    assert value_error <= value_tol, f"{backend}: value relative error {value_error:.2e}"
    assert grad_error <= grad_tol * grad_norm + grad_floor, \
        f"{backend}: gradient error {grad_error:.2e} of norm {grad_norm:.2e}"
    return f"ok (value rel. {value_error:.1e}, grad rel. {grad_error / grad_norm:.1e})"


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("backend", BACKENDS[DEVICE])
@pytest.mark.parametrize("case", CASE_PARAMS[DEVICE], ids=case_id)
def test_spatial_loss(benchmark, case, backend, mode):
    n_units, batch, kind, radius = case
    if backend == "reference" and REFERENCE_BYTES_PER_PAIR * n_units ** 2 > 0.8 * available_bytes():
        need = REFERENCE_BYTES_PER_PAIR * n_units ** 2 / 2 ** 30
        pytest.skip(f"the N x N reference would need ~{need:.0f} GiB, more than this machine has "
                    f"({available_bytes() / 2 ** 30:.0f} GiB free): not run")
    if backend == "torch" and n_units > 100_000:
        pytest.skip("the chunked PyTorch fallback takes minutes at this size; fused kernels only")
    check = "reference" if backend == "reference" else check_against_reference(case, backend)
    features, positions = make_inputs(n_units, batch)
    if mode == "forward_backward":
        features.requires_grad_(True)

    def step():
        loss = ops.spatial_loss(features, positions, kind=kind, radius=radius, backend=backend)
        if mode == "forward_backward":
            loss.backward()
            features.grad = None
        synchronize(DEVICE)
        return loss

    loss = step()
    assert ops.last_backend("spatial_loss") == backend and torch.isfinite(loss)
    benchmark.group = f"spatial_loss {case_id(case)} {mode} {DEVICE}"
    slow = n_units ** 2 * batch > (2e12 if DEVICE == "cpu" else 1e13)  # one round of the largest
    benchmark.pedantic(step, rounds=1 if slow else 3, iterations=1)
    median = benchmark.stats.stats.median
    args = ["spatial_loss", "--backend", backend, "--mode", mode, "--batch", str(batch), "--n",
            str(n_units), "--kind", kind, "--device", DEVICE]
    peak = peak_memory_mb(args + ([] if radius is None else ["--radius", str(radius)]), step)
    # 2 N^2 B FLOP per N x N x B product (W z or Z Z^T); the all-pairs relative forward does one
    flop = 2 * n_units ** 2 * batch
    benchmark.extra_info.update(device=DEVICE, n=n_units, batch=batch, peak_mb=peak,
                                tflops_per_product=flop / median / 1e12, check=check)
    record(benchmark, backend, check=check, peak_mb=peak)
    print(f"\nspatial_loss {case_id(case):24s} {mode:16s} {backend:9s}: {median * 1e3:9.1f} ms  "
          f"peak {peak:8.0f} MB  {flop / median / 1e12:6.2f} TFLOP/s per N^2 B product")


@pytest.mark.skipif(DEVICE != "cuda", reason="the dense matmul ceiling is measured on GPUs")
@pytest.mark.parametrize("dtype", ["float32-ieee", "tf32", "bfloat16"])
def test_dense_matmul_ceiling(benchmark, dtype):
    """The card's measured dense matmul rate, the yardstick for the tiled kernels."""
    n = 8192
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    a = torch.randn(n, n, device="cuda", dtype=torch_dtype)
    b = torch.randn(n, n, device="cuda", dtype=torch_dtype)
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"

    def step():
        torch.mm(a, b)
        torch.cuda.synchronize()

    step()
    benchmark.group = "dense matmul ceiling"
    benchmark.pedantic(step, rounds=10, iterations=1)
    torch.backends.cuda.matmul.allow_tf32 = False
    tflops = 2 * n ** 3 / benchmark.stats.stats.median / 1e12
    benchmark.extra_info.update(device=DEVICE, tflops=tflops, peak_mb=None)
    record(benchmark, dtype, baseline="float32-ieee")
    print(f"\ndense matmul {dtype}: {tflops:.1f} TFLOP/s")
