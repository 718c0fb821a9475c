"""The spatial loss depends only on distances and on the positions as they are now (issue 23):
not on where the sheet sits or the unit its coordinates are in (float32 sums of small weights),
not on a lattice that is only float rounding, and never on positions cached before a change that
bypassed the version counter."""
import numpy as np
import pytest
import torch

import topoaudio.ops as ops
from topoaudio.ops import reference, spatial_lattice
from topoaudio.ops.spatial_common import SHEET_CACHE

# Triton runs on CPU tensors under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
FUSED_CPU = ["cpp", "torch", "triton"]


def layer(n_units=50, batch=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, n_units, generator=generator)
    positions = torch.rand(n_units, 2, generator=generator) * 10
    return features, positions


def truth(features, positions, **kwargs) -> float:
    """The float64 definition on the same positions."""
    return reference.spatial_loss(features.double(), positions.double(), **kwargs).item()


@pytest.mark.parametrize("backend", FUSED_CPU)
@pytest.mark.parametrize("scale", [1e3, 1e4, 1e5])
def test_sheets_in_other_units_keep_their_small_weights(backend, scale):
    # w = 1 / (1 + d) of 1e-6: a unit's own w_ii = 1 in a float32 row sum rounded them away and
    # the loss read 0.5 (positions x 1e5), off by 3.8e-5 at x 1e3
    features, positions = layer()
    positions = positions * scale
    expected = truth(features, positions)
    assert abs(expected - 0.5) > 1e-3  # the loss does see the layout
    got = ops.spatial_loss(features, positions, backend=backend).item()
    assert got == pytest.approx(expected, abs=2e-6)


@pytest.mark.parametrize("backend", FUSED_CPU + ["reference"])
@pytest.mark.parametrize("kwargs", [{}, {"radius": 3.0}, {"kind": "absolute"}])
def test_a_sheet_far_from_the_origin_gives_the_loss_of_the_same_sheet_at_it(backend, kwargs):
    features, positions = layer()
    near = positions.double()
    far = near + 1e6  # float64 positions, float32 features: rounding them to float32 lost 0.0625 mm
    expected = truth(features, near, **kwargs)
    got = ops.spatial_loss(features, far, backend=backend, **kwargs).item()
    assert got == pytest.approx(expected, abs=2e-6)


def test_positions_that_only_rounded_onto_a_grid_are_not_a_lattice():
    features, positions = layer()
    far = positions + 1e6  # float32 rounds these to multiples of 0.0625 mm
    assert isinstance(spatial_lattice.lattice_of(far), spatial_lattice.NotOnLattice)
    with pytest.raises(ValueError, match="rounding or jitter"):
        ops.spatial_loss(features, far, lattice=True)
    got = ops.spatial_loss(features, far)  # auto: the tiles
    assert ops.last_backend("spatial_loss") == "cpp"
    assert got.item() == pytest.approx(truth(features, far), abs=2e-6)


def test_a_real_lattice_far_from_the_origin_is_still_found_in_float64():
    index = torch.randint(0, 40, (300, 2), generator=torch.Generator().manual_seed(3))
    positions = index.double() * 0.05 + 1e6
    found = spatial_lattice.lattice_of(positions)
    assert isinstance(found, spatial_lattice.Lattice)
    assert found.spacing == pytest.approx((0.05, 0.05), rel=1e-6)


# --- the per-sheet cache -------------------------------------------------------------------------

def change_through_data(p):
    p.data.mul_(0.5)  # .data has its own version counter


def change_through_numpy(p):
    p.numpy()[:] *= 2  # NumPy writes bump no version at all


def change_one_unit(p):
    p.numpy()[7, 0] += 0.25


@pytest.mark.parametrize("change", [change_through_data, change_through_numpy, change_one_unit])
@pytest.mark.parametrize("kwargs", [{"radius": 3.0}, {}, {"kind": "absolute"}])
def test_positions_changed_behind_the_version_counter_are_not_served_stale(change, kwargs):
    SHEET_CACHE.clear()
    features, positions = layer()
    before = ops.spatial_loss(features, positions, **kwargs).item()
    version = positions._version
    change(positions)
    assert positions._version == version  # the counter did not see the change
    expected = truth(features, positions, **kwargs)
    assert abs(expected - before) > 1e-5
    assert ops.spatial_loss(features, positions, **kwargs).item() == pytest.approx(expected, abs=2e-6)


def test_a_non_finite_position_written_through_numpy_is_caught():
    features, positions = layer()
    ops.spatial_loss(features, positions)
    positions.numpy()[3, 1] = np.nan
    with pytest.raises(ValueError, match="positions contain 1 NaN"):
        ops.spatial_loss(features, positions)


def test_an_unchanged_sheet_is_computed_once():
    SHEET_CACHE.clear()
    features, positions = layer()
    calls = []
    compute = lambda: calls.append(1) or len(calls)  # noqa: E731
    assert SHEET_CACHE.get(positions, ("k",), compute) == 1
    assert SHEET_CACHE.get(positions, ("k",), compute) == 1
    positions.numpy()[0, 0] += 1.0
    assert SHEET_CACHE.get(positions, ("k",), compute) == 2
