"""Cochleagram: fused backends against the reference, forward and forward+backward, 2 s clips.

CPU: batch 8 (target: fused forward >= 3x faster, peak memory <= 1/3 of the reference).
GPU: batch 64 (target: forward+backward >= 5x faster, peak memory <= 1/4).
Each backend is first checked against the reference on the benchmark's own input, with the
tolerances of tests/test_cochleagram.py (compare_with_reference): output atol 2e-6, rtol 1e-5;
gradient relative L2 < 1e-4. The chunked PyTorch fallback runs only with --full.
Run: pytest bench/test_cochleagram.py --benchmark-only [--full] [--benchmark-json FILE]
"""
import functools

import pytest
import torch
from conftest import bench_device, peak_memory_mb, record, synchronize

import topoaudio.ops as ops

DEVICE = bench_device()
BATCH = 64 if DEVICE == "cuda" else 8
LENGTH = 40000
FULL = pytest.mark.full
BACKENDS = {"cpu": ["reference", pytest.param("torch", marks=FULL), "cpp"],
            "cuda": ["reference", pytest.param("torch", marks=FULL), "triton", "cuda"]}
# tests/test_cochleagram.py, compare_with_reference: the same numbers, not looser ones
OUT_ATOL, OUT_RTOL, GRAD_REL_L2 = 2e-6, 1e-5, 1e-4


def make_waveform() -> torch.Tensor:
    torch.manual_seed(0)
    return 0.1 * torch.randn(BATCH, LENGTH, device=DEVICE)


@functools.cache
def reference_output_and_gradient():
    """The reference's output and its gradient against fixed random weights, once per run."""
    waveform = make_waveform().requires_grad_(True)
    out = ops.reference.cochleagram(waveform)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    (grad,) = torch.autograd.grad((out * weights).sum(), waveform)
    return out.detach(), grad, weights


@functools.cache
def check_against_reference(backend: str) -> str:
    """Fails the case unless the backend's output and gradient match the reference's."""
    expected, expected_grad, weights = reference_output_and_gradient()
    waveform = make_waveform().requires_grad_(True)
    out = ops.cochleagram(waveform, backend=backend)
    torch.testing.assert_close(out.detach(), expected, atol=OUT_ATOL, rtol=OUT_RTOL)
    (grad,) = torch.autograd.grad((out * weights).sum(), waveform)
    grad_error = ((grad.double() - expected_grad.double()).norm() / expected_grad.double().norm()).item()
    assert grad_error < GRAD_REL_L2, f"{backend}: gradient relative L2 error {grad_error:.2e}"
    max_error = (out.detach() - expected).abs().max().item()
    return f"ok (max |diff| {max_error:.1e}, grad rel. {grad_error:.1e})"


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("backend", BACKENDS[DEVICE])
def test_cochleagram(benchmark, backend, mode):
    check = "reference" if backend == "reference" else check_against_reference(backend)
    waveform = make_waveform()
    if mode == "forward_backward":
        waveform.requires_grad_(True)

    def step():
        out = ops.cochleagram(waveform, backend=backend)
        if mode == "forward_backward":
            out.sum().backward()
            waveform.grad = None
        synchronize(DEVICE)

    step()  # warm-up: kernels, FFT plans, filters
    assert ops.last_backend("cochleagram") == backend
    benchmark.group = f"cochleagram {mode} {DEVICE} batch {BATCH}"
    benchmark.pedantic(step, rounds=5 if DEVICE == "cpu" else 20, iterations=1)
    median = benchmark.stats.stats.median
    peak = peak_memory_mb(["cochleagram", "--backend", backend, "--mode", mode, "--batch",
                           str(BATCH), "--length", str(LENGTH), "--device", DEVICE], step)
    benchmark.extra_info.update(device=DEVICE, batch=BATCH, clips_per_s=BATCH / median,
                                peak_mb=peak, check=check)
    record(benchmark, backend, check=check, peak_mb=peak)
    print(f"\ncochleagram {mode:16s} {backend:9s} {DEVICE} batch {BATCH}: "
          f"{median * 1e3:8.1f} ms  {BATCH / median:7.1f} clips/s  peak {peak:7.0f} MB")
