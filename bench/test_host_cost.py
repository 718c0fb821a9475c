"""Host cost of spatial_loss (issue 10): one forward+backward at N = 64, B = 16 on the CPU, where
the kernels take microseconds and the time is dispatch: Python, autograd and small aten calls.

Target: <= 0.25 ms per call and <= 150 aten calls with the cpp backend (before issue 10: ~1 ms and
552; 133-166 calls and ~0.33 ms before issue 23, whose one-call C++ forward and backward take 23).
The aten-call count of one call (torch.profiler's aten:: events, nested ones included) goes into
benchmark.extra_info and the table; tests/test_spatial_loss.py asserts the count, this file times
it. Each case is first checked against the float64 reference with the tests' tolerances.
The reference (N x N matrices, autograd) is the baseline row: at this size it is all dispatch too.
Run: pytest bench/test_host_cost.py --benchmark-only
"""
import pytest
import torch
from conftest import _tests_module, record, spatial_tolerances

import topoaudio.ops as ops

TESTS = _tests_module("test_spatial_loss")
N_UNITS, BATCH = 64, 16
VARIANTS = [("relative", None), ("relative", 1.0), ("absolute", None)]


def check(backend, kind, radius) -> str:
    """Value and gradient of the benchmark's own input against the float64 reference."""
    generator = torch.Generator().manual_seed(10)
    features = torch.randn(BATCH, N_UNITS, generator=generator)
    positions = torch.rand(N_UNITS, 2, generator=generator) * 4
    value_tol, grad_tol, floor = spatial_tolerances(torch.float32)
    x = features.clone().requires_grad_(True)
    x_ref = features.double().requires_grad_(True)
    loss = ops.spatial_loss(x, positions, kind=kind, radius=radius, backend=backend)
    expected = ops.reference.spatial_loss(x_ref, positions.double(), kind=kind, radius=radius)
    loss.backward()
    expected.backward()
    assert abs(loss.item() - expected.item()) <= value_tol * abs(expected.item())
    assert (x.grad.double() - x_ref.grad).norm() <= grad_tol * x_ref.grad.norm() + floor
    return "ok"


@pytest.mark.parametrize("kind, radius", VARIANTS, ids=lambda v: str(v))
@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_host_cost(benchmark, backend, kind, radius):
    status = check(backend, kind, radius)
    step = TESTS.host_cost_step(N_UNITS, BATCH, backend, kind=kind, radius=radius)
    step()  # per-sheet constants are made once; the count and the time are of later calls
    calls = TESTS.count_aten_calls(step)
    benchmark.group = (f"spatial_loss host cost N={N_UNITS} B={BATCH} {kind} "
                       f"radius={radius} fwd+bwd cpu, {torch.get_num_threads()} threads")
    benchmark.pedantic(step, rounds=100, iterations=3, warmup_rounds=10)
    benchmark.extra_info.update(n=N_UNITS, batch=BATCH, kind=kind, radius=radius, aten_calls=calls)
    record(benchmark, backend, check=f"{status}, {calls} aten calls")
