"""Cochleagram: fused backends against the reference, forward and forward+backward, 2 s clips.

CPU: batch 8 (target: fused forward >= 3x faster, peak memory <= 1/3 of the reference).
GPU: batch 64 (target: forward+backward >= 5x faster, peak memory <= 1/4).
Run: pytest bench/test_cochleagram.py --benchmark-only [--benchmark-json FILE]
"""
import pytest
import torch
from conftest import bench_device, peak_memory_mb, synchronize

import topoaudio.ops as ops

DEVICE = bench_device()
BATCH = 64 if DEVICE == "cuda" else 8
LENGTH = 40000
BACKENDS = {"cpu": ["reference", "torch", "cpp"], "cuda": ["reference", "torch", "triton", "cuda"]}


@pytest.mark.parametrize("mode", ["forward", "forward_backward"])
@pytest.mark.parametrize("backend", BACKENDS[DEVICE])
def test_cochleagram(benchmark, backend, mode):
    torch.manual_seed(0)
    waveform = 0.1 * torch.randn(BATCH, LENGTH, device=DEVICE)
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
                                peak_mb=peak)
    print(f"\ncochleagram {mode:16s} {backend:9s} {DEVICE} batch {BATCH}: "
          f"{median * 1e3:8.1f} ms  {BATCH / median:7.1f} clips/s  peak {peak:7.0f} MB")
