"""TDANN draws read a sheet's float64 positions and window bounds from SHEET_CACHE: computed once
per positions tensor and width, never stale after an in-place change, and the draws are the same as
from a fresh tensor (training/topography.py)."""
import pathlib

import pytest
import torch

from topoaudio.training.topography import _sheet_windows, tdann_neighbourhood

FIXTURE = torch.load(pathlib.Path(__file__).parent / "fixtures" / "tdann_sampling.pt", weights_only=True)
WIDTH = FIXTURE["width_mm"]
SIZE = 100


def draws(positions: torch.Tensor, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([tdann_neighbourhood(positions, WIDTH, SIZE, generator) for _ in range(20)])


def test_a_sheet_is_prepared_once_and_draws_as_a_fresh_tensor_would():
    positions = FIXTURE["positions"].clone()
    points, low, high = _sheet_windows(positions, WIDTH)
    assert points.dtype == torch.float64 and torch.equal(points, positions.double())
    assert _sheet_windows(positions, WIDTH)[0] is points  # the cached copy, not a new one
    assert _sheet_windows(positions, WIDTH / 2)[1] is not low  # another width, other bounds
    assert torch.equal(draws(positions), draws(positions.clone()))


def test_an_in_place_change_of_the_positions_is_seen():
    positions = FIXTURE["positions"].clone()
    before = draws(positions)
    positions[:, 0] *= 0.5  # a narrower sheet: other windows, other members
    after = draws(positions)
    assert not torch.equal(before, after)
    assert torch.equal(after, draws(positions.clone()))
    points, low, high = _sheet_windows(positions, WIDTH)
    span = float(positions[:, 0].max() - positions[:, 0].min())
    assert float(high[0] - low[0]) == pytest.approx(span - WIDTH, abs=1e-6)
