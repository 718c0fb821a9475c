"""Voxel predictivity at NH2015 size: 7694 voxels x 3 repetitions, 165 sounds, 5 layers, 10 splits, 4 ridge
fits per layer and split (each repetition and their mean), alpha by efficient LOO over 17 values.

Target on two CPU cores: <= 60 s for the whole pipeline (float64).
Not a claim of the README: runs only with --full.
Run: pytest bench/test_brain.py --benchmark-only --full [--benchmark-json FILE]
"""
import time

import pytest
import torch
from conftest import bench_device, record, synchronize

from topoaudio.brain import voxel_predictivity

DEVICE = bench_device()
N_SOUNDS, N_VOXELS, N_SPLITS = 165, 7694, 10
LAYER_WIDTHS = (512, 1024, 1024, 2048, 2048)  # typical widths of time-averaged CNN layers


@pytest.mark.full
def test_voxel_predictivity(benchmark):
    g = torch.Generator().manual_seed(0)
    features = {f"layer{i}": torch.randn(N_SOUNDS, width, generator=g, dtype=torch.float64).to(DEVICE)
                for i, width in enumerate(LAYER_WIDTHS)}
    # a shared signal plus independent noise per repetition, so reliabilities are not all at the floor
    signal = torch.randn(N_SOUNDS, N_VOXELS, 1, generator=g, dtype=torch.float64)
    voxels = (signal + torch.randn(N_SOUNDS, N_VOXELS, 3, generator=g, dtype=torch.float64)).to(DEVICE)
    result = {}

    def run():
        result.update(voxel_predictivity(features, voxels, n_splits=N_SPLITS))
        synchronize(DEVICE)

    voxel_predictivity({"warm-up": features["layer0"]}, voxels[:, :100], n_splits=2)  # LAPACK/BLAS set-up
    start = time.perf_counter()
    benchmark.group = f"voxel predictivity {DEVICE}"
    benchmark.pedantic(run, rounds=1, iterations=1)
    seconds = time.perf_counter() - start
    assert result["r2_corrected"].shape == (len(LAYER_WIDTHS), N_SPLITS, N_VOXELS)
    assert torch.isfinite(result["r2_corrected"]).all()
    fits = len(LAYER_WIDTHS) * N_SPLITS * 4
    benchmark.extra_info.update(device=DEVICE, n_voxels=N_VOXELS, n_layers=len(LAYER_WIDTHS),
                                n_splits=N_SPLITS, ridge_fits=fits, seconds=seconds, peak_mb=None)
    record(benchmark, "voxel_predictivity", baseline="-")
    print(f"\nvoxel predictivity {DEVICE}: {N_VOXELS} voxels x {N_SPLITS} splits x {len(LAYER_WIDTHS)} "
          f"layers x 4 fits, widths {LAYER_WIDTHS}: {seconds:.1f} s "
          f"({seconds / fits * 1e3:.0f} ms per fit of {N_VOXELS} voxels)")
