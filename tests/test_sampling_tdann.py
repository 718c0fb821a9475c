"""TDANN's neighbourhood sampling (training/topography.py) against TDANN's own code: statistics of
its sampler and values of its loss on a fixed 4096-unit sheet (tests/fixtures/tdann_sampling.pt,
made by tests/fixtures/tdann_make_fixtures.py from github.com/neuroailab/TDANN; see
tests/fixtures/tdann_README.md). Sampling is random, so means are compared within a tolerance set
by the number of draws on each side; the loss on given units is compared value for value."""
import math
import pathlib

import pytest
import torch

import topoaudio.ops as ops
from topoaudio.models import build_model
from topoaudio.training.config import TrainConfig
from topoaudio.training.topography import (
    TopographicLosses,
    nearest_neighbourhood,
    tdann_neighbourhood,
    tdann_neighbourhood_size,
)

FIXTURE = torch.load(pathlib.Path(__file__).parent / "fixtures" / "tdann_sampling.pt", weights_only=True)
POSITIONS = FIXTURE["positions"]
RESPONSES = FIXTURE["responses"]
WIDTH = FIXTURE["width_mm"]


def mean_pair_distance(index: torch.Tensor) -> float:
    points = POSITIONS[index].double()
    n = len(index)
    return float(torch.cdist(points, points).sum() / (n * (n - 1)))


def tolerance(ours: torch.Tensor, their_std: float, their_draws: int, sigmas: float = 4.0) -> float:
    """sigmas standard errors of the difference of two independent means."""
    return sigmas * math.sqrt(float(ours.var()) / len(ours) + their_std ** 2 / their_draws)


@pytest.fixture(scope="module")
def tdann_draws():
    generator = torch.Generator().manual_seed(7)
    size = FIXTURE["neighbourhood_size"]
    return [tdann_neighbourhood(POSITIONS, WIDTH, size, generator) for _ in range(300)]


def test_common_size_is_tdanns():
    generator = torch.Generator().manual_seed(0)
    # limit 500 binds (TDANN: 500); a looser limit leaves TDANN's 5th percentile of window sizes
    assert tdann_neighbourhood_size(POSITIONS, WIDTH, 500, generator) == FIXTURE["neighbourhood_size"]
    size = tdann_neighbourhood_size(POSITIONS, WIDTH, 10_000, generator)
    # both are 5th percentiles of 20,000 random windows: a few units apart at most
    assert abs(size - FIXTURE["window_size_p5"]) <= 6, (size, FIXTURE["window_size_p5"])
    # and the floor of 25 units applies to narrow windows
    assert tdann_neighbourhood_size(POSITIONS, 0.8, 500, generator, windows=500) == 25


def test_each_neighbourhood_is_a_thinned_window_off_the_edges(tdann_draws):
    low, high = POSITIONS.min(dim=0).values, POSITIONS.max(dim=0).values
    for index in tdann_draws[:50]:
        assert len(index) == len(set(index.tolist())) == FIXTURE["neighbourhood_size"]
        points = POSITIONS[index]
        span = points.max(dim=0).values - points.min(dim=0).values
        assert bool((span <= WIDTH + 1e-5).all())
        # the window (centre +- WIDTH / 2) lies inside the sheet's bounding box
        assert bool((points.max(dim=0).values - WIDTH <= high - WIDTH + 1e-5).all())
        assert bool((points.min(dim=0).values >= low).all())


def test_mean_pair_distance_matches_tdann_and_k_nearest_does_not(tdann_draws):
    ours = torch.tensor([mean_pair_distance(index) for index in tdann_draws])
    allowed = tolerance(ours, FIXTURE["pair_distance_std"], FIXTURE["pair_distance_draws"])
    assert abs(float(ours.mean()) - FIXTURE["pair_distance_mean"]) < allowed, (
        float(ours.mean()), FIXTURE["pair_distance_mean"], allowed)
    generator = torch.Generator().manual_seed(8)
    nearest = torch.tensor([mean_pair_distance(nearest_neighbourhood(POSITIONS, 500, generator))
                            for _ in range(100)])
    # k nearest is a disc: its pairs are markedly closer (the issue: 1.83 vs 2.09 mm)
    assert FIXTURE["pair_distance_mean"] - float(nearest.mean()) > 20 * allowed


def test_mean_loss_over_draws_matches_tdann(tdann_draws):
    ours = torch.stack([ops.spatial_loss(RESPONSES[:, index], POSITIONS[index])
                        for index in tdann_draws[:200]]).double()
    allowed = tolerance(ours, FIXTURE["loss_std"], FIXTURE["loss_draws"])
    assert abs(float(ours.mean()) - FIXTURE["loss_mean"]) < allowed, (
        float(ours.mean()), FIXTURE["loss_mean"], allowed)


@pytest.mark.parametrize("case", range(len(FIXTURE["exact"])))
def test_loss_and_gradient_on_given_units_equal_tdanns(case):
    exact = FIXTURE["exact"][case]
    index = exact["indices"]
    features = RESPONSES[:, index].clone().requires_grad_(True)
    loss = ops.spatial_loss(features, POSITIONS[index])
    loss.backward()
    # TDANN builds float32 500 x 500 matrices; ours reduces pair sums in float64: float32 rounding
    assert loss.item() == pytest.approx(exact["loss"].item(), rel=2e-5)
    torch.testing.assert_close(features.grad, exact["grad"], rtol=1e-3, atol=1e-7)


def test_a_window_wider_than_the_sheet_is_refused():
    with pytest.raises(ValueError, match="neighbourhood_width_mm=12.0 is wider than the sheet"):
        tdann_neighbourhood_size(POSITIONS, 12.0, 500, torch.Generator())
    with pytest.raises(ValueError, match="no 0.05 mm window holds 25 units"):
        tdann_neighbourhood_size(POSITIONS, 0.05, 500, torch.Generator(), windows=200)


def training_term(**settings):
    config = TrainConfig(clip_seconds=0.4, topo_layers=["block3"], **settings)
    model = build_model("cochcnn", n_classes=4)
    return TopographicLosses(config, model, torch.device("cpu"), clip_samples=8000), model


def test_training_term_averages_draws_per_step_and_replays_them():
    term, _ = training_term(neighbourhood=500, neighbourhoods_per_step=3)
    sheet = term.sheets["block3"]
    size = term.neighbourhood_sizes["block3"]
    assert 25 <= size < sheet.n_units  # a 4 mm window on 10 mm holds a fraction of the 1,248 units
    features = {"block3": torch.randn(6, 96, 13, 3, generator=torch.Generator().manual_seed(1))}
    total, terms = term(features, step=5)
    again, _ = term(features, step=5)
    other, _ = term(features, step=6)
    assert total.item() == again.item() != other.item()
    # by hand: three TDANN draws from the generator of (seed, step, layer), averaged
    generator = term._generator("block3", 5)
    responses = sheet.responses(features["block3"])
    draws = [tdann_neighbourhood(sheet.positions, 4.0, size, generator) for _ in range(3)]
    expected = torch.stack([ops.spatial_loss(responses[:, i], sheet.positions[i]) for i in draws]).mean()
    assert total.item() == pytest.approx(0.25 * expected.item(), rel=1e-6)


def test_training_term_keeps_k_nearest_under_its_name():
    term, _ = training_term(neighbourhood=200, neighbourhood_kind="knearest")
    assert term.neighbourhood_sizes == {}
    features = {"block3": torch.randn(6, 96, 13, 3, generator=torch.Generator().manual_seed(2))}
    total, _ = term(features, step=0)
    sheet = term.sheets["block3"]
    index = nearest_neighbourhood(sheet.positions, 200, term._generator("block3", 0))
    responses = sheet.responses(features["block3"])
    expected = ops.spatial_loss(responses[:, index], sheet.positions[index])
    assert total.item() == pytest.approx(0.25 * expected.item(), rel=1e-6)


@pytest.mark.parametrize("settings, message", [
    ({"neighbourhood_kind": "disc"}, "neighbourhood_kind must be one of"),
    ({"neighbourhood_width_mm": 0.0}, "neighbourhood_width_mm must be > 0"),
    ({"neighbourhoods_per_step": 0}, "neighbourhoods_per_step must be >= 1"),
])
def test_config_rules(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


def test_training_term_names_the_layer_whose_sheet_is_too_small_for_the_window():
    with pytest.raises(ValueError, match="layer 'block3' .*wider than the sheet"):
        training_term(neighbourhood=500, neighbourhood_width_mm=30.0)
