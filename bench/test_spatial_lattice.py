"""Spatial loss on lattice sheets (issue 14): the FFT W z against the tiled kernels, same run.

Targets (CPU, B = 64, 2 threads, forward+backward, all pairs, relative): the lattice path at
N = 16,384 >= 4x faster than the tiles, at N = 65,536 >= 20x; beside them TDANN's sampled step
(one 500-unit neighbourhood through the plain reference, bench/tdann_sampled.py) on the same sheet.
Sheets are the project's own: channel_freq_sheet with 64 frequency rows and N / 64 channels on
10 mm, jitter 0.05 mm, lattice 0.05 mm (extra_info records each case's spacing and padded grid).
Each lattice case is first checked: against the float64 reference where it fits in memory, else
against the float64 tiles, else against the float32 tiles of the same run; the largest sizes (tiles
would take hours) are checked against nothing and say so.
The quick default runs N = 16,384; --full adds 4,096, 65,536 and the lattice alone at 262,144 and
1,048,576 (and on a GPU, N = 2^20 both ways: the tiles take seconds there).
Run: pytest bench/test_spatial_lattice.py --benchmark-only [--full]
"""
import functools
import os

import pytest
import torch
from conftest import bench_device, record, spatial_tolerances, synchronize
from tdann_sampled import NEIGHBOURHOOD, neighbourhood

import topoaudio.ops as ops
from topoaudio.ops.spatial_lattice import lattice_of
from topoaudio.sheet import DEFAULT_LATTICE_MM, channel_freq_sheet

DEVICE = bench_device()
FULL = pytest.mark.full
BATCH = 64
FREQS = 64
# N, and whether the tiles are timed too (beyond 65,536 they take minutes to hours on a CPU)
CASES = {"cpu": [pytest.param((4096, True), marks=FULL), (16384, True),
                 pytest.param((65536, True), marks=FULL), pytest.param((1 << 18, False), marks=FULL),
                 pytest.param((1 << 20, False), marks=FULL)],
         "cuda": [(16384, True), pytest.param((1 << 20, True), marks=FULL)]}
REFERENCE_BYTES_PER_PAIR = 80  # the float64 reference: N x N r, d, w, masks, pair vectors, grads
VARIANTS = ["tiled", "lattice", "tdann-sampled-500"]


def case_id(case):
    return f"N{case[0]}"


@functools.cache
def sheet_positions(n_units: int) -> torch.Tensor:
    sheet = channel_freq_sheet("bench", n_units // FREQS, FREQS, seed=0)
    return sheet.positions.to(DEVICE)


def make_features(n_units: int, dtype=torch.float32) -> torch.Tensor:
    """The same values in every dtype (drawn in float64, then rounded), so checks compare alike."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(BATCH, n_units, generator=generator, dtype=torch.float64)
    return features.to(dtype=dtype, device=DEVICE)


def run(features, positions, variant):
    """One forward+backward; returns (loss, gradient)."""
    x = features.detach().clone().requires_grad_(True)
    loss = ops.spatial_loss(x, positions, lattice=variant == "lattice")
    loss.backward()
    return loss.detach(), x.grad


def available_bytes() -> int:
    if DEVICE == "cuda":
        return torch.cuda.mem_get_info()[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@functools.cache
def check_lattice(n_units: int, tiles_timed: bool) -> str:
    """Value and gradient of the float32 lattice path against the best yardstick that fits."""
    positions = sheet_positions(n_units)
    loss, grad = run(make_features(n_units), positions, "lattice")
    value_tol, grad_tol, grad_floor = spatial_tolerances(torch.float32)
    if REFERENCE_BYTES_PER_PAIR * n_units ** 2 < 0.5 * available_bytes():
        x = make_features(n_units, torch.float64).requires_grad_(True)
        expected = ops.reference.spatial_loss(x, positions.double())
        expected.backward()
        yardstick, expected, expected_grad = "float64 reference", expected.item(), x.grad
    elif n_units <= 16384 or (DEVICE == "cuda" and tiles_timed):
        expected, expected_grad = run(make_features(n_units, torch.float64), positions, "tiled")
        yardstick, expected = "float64 tiles", expected.item()
    elif tiles_timed:
        expected, expected_grad = run(make_features(n_units), positions, "tiled")
        yardstick, expected = "float32 tiles", expected.item()
    else:
        return "not checked: no yardstick runs at this size"
    value_error = abs(loss.item() - expected) / abs(expected)
    grad_error = (grad.double() - expected_grad.double()).norm().item()
    grad_norm = expected_grad.double().norm().item()
    assert value_error <= value_tol, f"lattice: value relative error {value_error:.2e} ({yardstick})"
    assert grad_error <= grad_tol * grad_norm + grad_floor, \
        f"lattice: gradient error {grad_error:.2e} of norm {grad_norm:.2e} ({yardstick})"
    return f"ok vs {yardstick} (value rel. {value_error:.1e}, grad rel. {grad_error / grad_norm:.1e})"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("case", CASES[DEVICE], ids=case_id)
def test_spatial_lattice(benchmark, case, variant):
    n_units, tiles_timed = case
    if variant == "tiled" and not tiles_timed:
        pytest.skip(f"the N^2 tiles at N = {n_units} take too long on {DEVICE}: lattice only")
    positions = sheet_positions(n_units)
    lattice = lattice_of(positions)
    check = check_lattice(n_units, tiles_timed) if variant == "lattice" else "-"
    features = make_features(n_units).requires_grad_(True)
    generator = torch.Generator().manual_seed(1)

    def step():
        if variant == "tdann-sampled-500":  # what a user runs today instead of the whole sheet
            index = neighbourhood(positions.cpu(), NEIGHBOURHOOD, generator).to(DEVICE)
            loss = ops.reference.spatial_loss(features[:, index], positions[index])
        else:
            loss = ops.spatial_loss(features, positions, lattice=variant == "lattice")
        loss.backward()
        features.grad = None
        synchronize(DEVICE)
        return loss

    loss = step()
    if variant != "tdann-sampled-500":
        expected = ops.available_backends(DEVICE, "spatial_loss")[0]
        expected += "+lattice" if variant == "lattice" else ""
        assert ops.last_backend("spatial_loss") == expected and torch.isfinite(loss)
    benchmark.group = f"spatial_loss lattice sheet N{n_units}-B{BATCH} forward_backward {DEVICE}"
    slow = variant == "tiled" and n_units ** 2 * BATCH > (2e12 if DEVICE == "cpu" else 1e13)
    # the tiles' rounds take seconds at 65k; the fast variants get more rounds for a steadier median
    rounds = 1 if slow else 3 if variant == "tiled" else 7
    benchmark.pedantic(step, rounds=rounds, iterations=1)
    benchmark.extra_info.update(device=DEVICE, n=n_units, batch=BATCH, threads=torch.get_num_threads(),
                                lattice_mm=DEFAULT_LATTICE_MM, lattice_shape=list(lattice.shape),
                                padded_grid=list(lattice.padded), check=check)
    record(benchmark, variant, baseline="tiled", check=check)
    median = benchmark.stats.stats.median
    print(f"\nspatial_loss lattice sheet N{n_units:<8d} {variant:18s}: {median * 1e3:9.1f} ms  "
          f"(lattice {DEFAULT_LATTICE_MM} mm, sites {lattice.shape}, FFT grid {lattice.padded})")
