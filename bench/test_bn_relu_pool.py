"""Batch norm + ReLU (+ 2x2 max-pool) fused (cpp) against the plain composition (reference), on the
CPU, at cochcnn's training shapes (batch 16 of 2 s clips): block1 [16, 24, 106, 195] pooled (most
of what the fusion saves), block2 [16, 48, 27, 49] and block3 [16, 96, 27, 49] pooled, in
bfloat16 (the default run's CPU autocast) and float32. Each case is first checked against the
reference on its own input, with tests/test_bn_relu_pool.py's tolerances. In the training step
itself: bench/train_throughput.py. Run: pytest bench/test_bn_relu_pool.py --benchmark-only
"""
import functools

import pytest
import torch
from conftest import _tests_module, peak_memory_mb, record

import topoaudio.ops as ops
from topoaudio.ops import reference

SHAPES = {"block1": ((16, 24, 106, 195), True), "block2": ((16, 48, 27, 49), False),
          "block3": ((16, 96, 27, 49), True)}
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def make_inputs(block: str, dtype: str):
    shape, _ = SHAPES[block]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(DTYPES[dtype]).contiguous(
        memory_format=torch.channels_last)
    return x, torch.rand(shape[1], generator=generator) + 0.5, torch.randn(shape[1], generator=generator)


def call(backend: str, x, weight, bias, pool):
    if backend == "reference":
        return reference.batch_norm_relu_pool(x, weight, bias, pool=pool)
    return ops.batch_norm_relu_pool(x, weight, bias, pool=pool, backend=backend)


def output_and_gradient(backend: str, x, weight, bias, pool):
    leaf = x.detach().clone().requires_grad_(True)
    out = call(backend, leaf, weight, bias, pool)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    out.backward(grad)
    return out.detach(), leaf.grad


@functools.cache
def check(block: str, dtype: str) -> str:
    """Both backends against the composition in float64 on the same input: the fused op's error
    must not exceed the reference's (by 10 %) or tests/'s float32 tolerance, whichever is larger.
    (At block1's size torch's own float32 batch norm is the less accurate: its gradient is off by
    ~2e-3 relative RMS there, the fused op's by ~1e-7.)"""
    x, weight, bias = make_inputs(block, dtype)
    pool = SHAPES[block][1]
    truth = output_and_gradient("reference", x.double(), weight.double(), bias.double(), pool)
    tests = _tests_module("test_bn_relu_pool")
    floor = tests.TOLERANCE[torch.float32]
    errors = {}
    for backend in ("reference", "cpp"):
        out, grad = output_and_gradient(backend, x, weight, bias, pool)
        errors[backend] = [tests._relative_rms(a, b) for a, b in zip((out, grad), truth, strict=True)]
    for what, fused, plain in zip(("output", "gradient"), errors["cpp"], errors["reference"], strict=True):
        assert fused <= max(1.1 * plain, floor), f"{block} {dtype}: {what} error {fused:.1e} vs {plain:.1e}"
    return (f"ok (grad rel. RMS vs float64 {errors['cpp'][1]:.1e}, "
            f"reference {errors['reference'][1]:.1e})")


@pytest.mark.parametrize("direction", ["forward", "forward_backward"])
@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("block", list(SHAPES))
def test_batch_norm_relu_pool(benchmark, block, dtype, backend, direction):
    note = check(block, dtype) if backend == "cpp" else "baseline"
    x, weight, bias = make_inputs(block, dtype)
    pool = SHAPES[block][1]
    if direction == "forward_backward":
        x.requires_grad_(True)

    def step():
        if direction == "forward":
            with torch.no_grad():
                call(backend, x, weight, bias, pool)
            return
        call(backend, x, weight, bias, pool).sum().backward()
        x.grad = None

    step()
    benchmark.group = f"batch_norm_relu_pool {block} {dtype} {direction} cpu"
    benchmark.pedantic(step, rounds=15, iterations=1)
    shape = ",".join(str(size) for size in SHAPES[block][0])
    peak = peak_memory_mb(["batch_norm_relu_pool", "--backend", backend, "--mode", direction,
                           "--shape", shape, "--dtype", dtype, "--batch", "0"]
                          + (["--pool"] if pool else []))
    record(benchmark, backend, baseline="reference", check=note, peak_mb=peak)
