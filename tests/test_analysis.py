"""Topography analysis: planted maps are recovered, shuffled maps are not, statistics match
brute-force definitions (docs/SCIENCE.md section 6)."""
import math

import numpy as np
import pytest
import scipy.stats
import torch

from topoaudio.analysis import (
    am_noise,
    best_frequency,
    best_rate,
    log_spaced,
    morans_i,
    narrowband_noise,
    patches,
    plot_sheet_map,
    plot_smoothness_curve,
    pure_tones,
    selectivity,
    silent_units,
    smoothness,
)

SHEET_MM = 8.0
N_UNITS = 1500
TUNING_WIDTH_OCTAVES = 0.4


@pytest.fixture(scope="module")
def tonotopic_layer():
    """A fake layer: units scattered on an 8 x 8 mm sheet whose planted log2 best frequency rises
    linearly along x from 50 Hz to 8 kHz; responses [n_tones, N] are Gaussian tuning curves in
    log frequency around each unit's planted best frequency."""
    generator = torch.Generator().manual_seed(0)
    positions = torch.rand(N_UNITS, 2, generator=generator) * SHEET_MM
    planted_log2_bf = math.log2(50) + positions[:, 0] / SHEET_MM * math.log2(8000 / 50)
    tones = log_spaced(50, 8000, 25)
    distance_octaves = torch.log2(tones)[:, None] - planted_log2_bf[None, :]
    responses = torch.exp(-distance_octaves ** 2 / (2 * TUNING_WIDTH_OCTAVES ** 2))
    return {"positions": positions, "planted_log2_bf": planted_log2_bf, "tones": tones,
            "responses": responses}


@pytest.fixture(scope="module")
def recovered_log2_bf(tonotopic_layer):
    return torch.log2(best_frequency(tonotopic_layer["responses"], tonotopic_layer["tones"]))


def shuffled(values: torch.Tensor, seed: int = 1) -> torch.Tensor:
    return values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(seed))]


# ---------------------------------------------------------------- tuning

def test_best_frequency_recovers_planted_map(tonotopic_layer, recovered_log2_bf):
    log2_tones = torch.log2(tonotopic_layer["tones"])
    nearest_tone = (log2_tones[:, None] - tonotopic_layer["planted_log2_bf"][None, :]).abs().argmin(dim=0)
    assert torch.equal(recovered_log2_bf, log2_tones[nearest_tone])
    step = float(log2_tones[1] - log2_tones[0])
    assert float((recovered_log2_bf - tonotopic_layer["planted_log2_bf"]).abs().max()) <= step / 2 + 1e-5


def test_best_rate_averages_repeats_and_marks_dead_units():
    rates = torch.tensor([2.0, 4.0, 8.0])
    responses = torch.zeros(3, 2, 3)            # [rates, repeats, units]
    responses[2, :, 0] = 1.0                     # unit 0 prefers 8 Hz
    responses[1, 0, 1], responses[0, 1, 1] = 3.0, 2.0   # unit 1: mean 1.5 at 4 Hz, 1.0 at 2 Hz
    best = best_rate(responses, rates)           # unit 2 never responds
    assert best[:2].tolist() == [8.0, 4.0]
    assert math.isnan(best[2])


def test_welch_t_on_hand_computed_numbers():
    labels = ["Music", "Song", "EngSpeech", "ForSpeech", "Music"]
    responses = torch.tensor([[3.0, 7.0, -3.0],
                              [5.0, 7.0, -5.0],
                              [1.0, 7.0, -1.0],
                              [2.0, 7.0, -2.0],
                              [4.0, 7.0, -4.0]])
    t = selectivity(responses, labels, {"Music", "Song"}, {"EngSpeech", "ForSpeech"})
    # music: 3, 5, 4 (mean 4, var 1); speech: 1, 2 (mean 1.5, var 0.5)
    expected = 2.5 / math.sqrt(1 / 3 + 0.5 / 2)
    assert t[0] == pytest.approx(expected, rel=1e-6)
    assert math.isnan(t[1])                              # silent: no preference to measure
    assert t[2] == pytest.approx(-expected, rel=1e-6)


def test_silent_units_by_relative_spread_at_any_scale():
    responses = torch.tensor([[0.0, 5.0, 1e-3, 1.0, 1e-3],
                              [0.0, 5.0, 1e-3, 1.0 + 1e-7, 1e-3 + 1e-8],
                              [0.0, 5.0 * (1 + 1e-7), 1e-3, 1.0, 1e-3]])
    # all-zero, constant up to rounding, constant at a small scale, responding (relative spread
    # 1e-7 of 1.0 counts as rounding), responding at a small scale (1e-5 relative)
    assert silent_units(responses).tolist() == [True, True, True, True, False]
    assert math.isnan(best_frequency(responses, [100.0, 200.0, 400.0])[1])
    labels = ["a", "a", "b"]
    t = selectivity(torch.cat([responses, responses[:2]]), labels + ["b", "b"], "a", "b")
    assert t[:4].isnan().all() and torch.isfinite(t[4])


def test_welch_t_matches_scipy_with_repeats_and_single_labels():
    generator = torch.Generator().manual_seed(3)
    responses = torch.randn(12, 3, 40, generator=generator, dtype=torch.float64)   # repeats averaged
    labels = ["a"] * 5 + ["b"] * 4 + ["c"] * 3
    t = selectivity(responses, labels, "a", "b")
    means = responses.mean(dim=1).numpy()
    expected = scipy.stats.ttest_ind(means[:5], means[5:9], equal_var=False).statistic
    np.testing.assert_allclose(t.numpy(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        selectivity(responses, labels, "a", "z")


# ---------------------------------------------------------------- smoothness

def test_planted_map_is_smooth_and_outside_the_null(tonotopic_layer, recovered_log2_bf):
    result = smoothness(recovered_log2_bf, tonotopic_layer["positions"], n_pairs=50_000, n_shuffles=40)
    assert not result["exact"]                           # N^2 / 2 > n_pairs: the sampled path
    assert result["smoothness"] > 0.5
    assert result["smoothness"] > result["null_interval"][1] + 0.3
    assert result["p_value"] == pytest.approx(1 / 41)
    # Near neighbours are sampled on purpose: uniform pairs alone would put about 0.4 % of pairs
    # (pi (0.28 mm)^2 / 64 mm^2) in the first bin.
    assert int(result["pair_counts"][0]) > 0.1 * 50_000


def test_shuffled_map_is_not_smooth(tonotopic_layer, recovered_log2_bf):
    result = smoothness(shuffled(recovered_log2_bf), tonotopic_layer["positions"], n_pairs=50_000,
                        n_shuffles=40)
    # A shuffled map is one more draw from the null: not above its 95 % interval, not significant.
    # (Its lower bound is not tested: 2.5 % of permutations fall below it by construction.)
    assert result["smoothness"] <= result["null_interval"][1]
    assert result["p_value"] > 0.05
    assert result["smoothness"] < 0.1


def test_sampled_curve_matches_all_pairs_on_an_uneven_sheet():
    """Near-neighbour pairs are importance-weighted, so a dense cluster does not bias the bins."""
    generator = torch.Generator().manual_seed(5)
    positions = torch.cat([torch.rand(500, 2, generator=generator) * 6,
                           1 + torch.rand(300, 2, generator=generator)])
    values = positions[:, 0] + torch.sin(3 * positions[:, 1]) + 0.3 * torch.randn(800, generator=generator)
    exact = smoothness(values, positions, n_pairs=10 ** 6, n_shuffles=5)
    sampled = smoothness(values, positions, n_pairs=60_000, n_shuffles=5, seed=2)
    assert exact["exact"] and not sampled["exact"]
    assert torch.equal(exact["bin_centres"], sampled["bin_centres"])
    np.testing.assert_allclose(sampled["curve"].numpy(), exact["curve"].numpy(), rtol=0.06)
    assert sampled["smoothness"] == pytest.approx(exact["smoothness"], abs=0.03)


def test_smoothness_drops_dead_units_and_rejects_bad_input():
    positions = torch.rand(50, 2, generator=torch.Generator().manual_seed(0))
    values = positions[:, 0].clone()
    values[:10] = float("nan")
    assert smoothness(values, positions, n_shuffles=3)["n_units"] == 40
    with pytest.raises(ValueError):
        smoothness(values, positions[:, :1])


# ---------------------------------------------------------------- Moran's I

def brute_force_morans_i(values, positions, weights, k=8, max_distance=None):
    x = values.double().numpy()
    distances = np.linalg.norm(positions.double().numpy()[:, None] - positions.double().numpy()[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    if max_distance is not None:
        distances[distances > max_distance] = np.inf
    if weights == "knn":
        w = np.zeros_like(distances)
        nearest = np.argsort(distances, axis=1)[:, :k]
        np.put_along_axis(w, nearest, 1.0, axis=1)
        w[~np.isfinite(distances)] = 0.0
    else:
        with np.errstate(divide="ignore"):
            w = np.where((distances > 0) & np.isfinite(distances), 1 / distances, 0.0)
    z = x - x.mean()
    return len(x) / w.sum() * (z @ w @ z) / (z @ z)


@pytest.mark.parametrize("weights", ["inverse_distance", "knn"])
@pytest.mark.parametrize("max_distance", [None, 0.3])
def test_morans_i_tiled_equals_brute_force(weights, max_distance):
    generator = torch.Generator().manual_seed(7)
    positions = torch.rand(150, 2, generator=generator)
    values = positions[:, 0] + 0.5 * torch.randn(150, generator=generator)
    if weights == "inverse_distance":
        positions[140:145] = positions[:5]               # coincident units get weight 0
    expected = brute_force_morans_i(values, positions, weights, max_distance=max_distance)
    for rows_per_block in (None, 7):
        tiled = morans_i(values, positions, weights, max_distance=max_distance, rows_per_block=rows_per_block)
        assert tiled == pytest.approx(expected, rel=1e-9)


def test_morans_i_high_for_planted_map_and_chance_after_shuffling(tonotopic_layer, recovered_log2_bf):
    positions = tonotopic_layer["positions"]
    assert morans_i(recovered_log2_bf, positions, "knn") > 0.9
    assert morans_i(recovered_log2_bf, positions, max_distance=1.0) > 0.5
    chance = -1 / (N_UNITS - 1)
    shuffled_map = shuffled(recovered_log2_bf)
    assert morans_i(shuffled_map, positions, "knn") == pytest.approx(chance, abs=0.05)
    assert morans_i(shuffled_map, positions) == pytest.approx(chance, abs=0.02)


def test_morans_i_of_a_constant_map_is_nan():
    positions = torch.rand(20, 2)
    assert math.isnan(morans_i(torch.ones(20), positions))


# ---------------------------------------------------------------- patches

def test_two_planted_blobs_give_two_patches_of_the_planted_areas():
    generator = torch.Generator().manual_seed(11)
    positions = torch.rand(6000, 2, generator=generator) * 10
    blobs = [((3.0, 3.0), 1.0), ((7.0, 6.5), 1.5)]       # (centre mm, radius mm)
    values = 0.3 * torch.randn(6000, generator=generator)
    for centre, radius in blobs:
        values[(positions - torch.tensor(centre)).norm(dim=1) < radius] += 5.0
    result = patches(values, positions, threshold=2.0, sigma_mm=0.2, grid_mm=0.1)
    assert result["count"] == 2
    order = result["areas_mm2"].argsort()
    for (centre, radius), index in zip(blobs, order.tolist(), strict=True):
        assert float(result["areas_mm2"][index]) == pytest.approx(math.pi * radius ** 2, rel=0.12)
        np.testing.assert_allclose(result["centroids_mm"][index].numpy(), centre, atol=0.1)
    assert result["labels"].shape == result["smoothed_map"].shape
    assert patches(values, positions, threshold=6.0, sigma_mm=0.2)["count"] == 0


# ---------------------------------------------------------------- stimuli

def test_log_spaced_endpoints_and_constant_ratio():
    values = log_spaced(50, 8000, 9)
    assert values[0] == pytest.approx(50) and values[-1] == pytest.approx(8000, rel=1e-6)
    ratios = values[1:] / values[:-1]
    np.testing.assert_allclose(ratios.numpy(), ratios[0].item(), rtol=1e-5)


def test_pure_tones_rms_ramps_and_peak_frequency():
    freqs = [440.0, 1000.0, 3150.0]
    tones = pure_tones(freqs, seconds=0.5)
    assert tones.shape == (3, 10000) and tones.dtype == torch.float32
    np.testing.assert_allclose(tones.pow(2).mean(dim=1).sqrt().numpy(), 0.1, rtol=1e-4)
    assert float(tones[:, 0].abs().max()) < 1e-3 and float(tones[:, -1].abs().max()) < 1e-3
    spectrum = torch.fft.rfft(tones.double(), dim=1).abs()
    bin_freqs = torch.fft.rfftfreq(10000, d=1 / 20000)
    assert bin_freqs[spectrum.argmax(dim=1)].tolist() == pytest.approx(freqs, abs=2.0)


def test_narrowband_noise_stays_in_its_band():
    bands = narrowband_noise([500.0, 2000.0], seconds=0.5)
    np.testing.assert_allclose(bands.pow(2).mean(dim=1).sqrt().numpy(), 0.1, rtol=1e-4)
    power = torch.fft.rfft(bands.double(), dim=1).abs() ** 2
    bin_freqs = torch.fft.rfftfreq(10000, d=1 / 20000).double()
    for row, centre in enumerate([500.0, 2000.0]):
        in_band = (bin_freqs > centre * 2 ** (-1 / 6) * 0.95) & (bin_freqs < centre * 2 ** (1 / 6) * 1.05)
        assert float(power[row, in_band].sum() / power[row].sum()) > 0.99
    assert torch.equal(bands, narrowband_noise([500.0, 2000.0], seconds=0.5))
    assert not torch.equal(bands, narrowband_noise([500.0, 2000.0], seconds=0.5, seed=1))


def test_am_noise_envelope_has_energy_at_the_modulation_rate():
    rates = [8.0, 32.0]
    modulated, flat = am_noise(rates, seconds=1.0), am_noise(rates, depth=0.0, seconds=1.0)
    np.testing.assert_allclose(modulated.pow(2).mean(dim=1).sqrt().numpy(), 0.1, rtol=1e-4)
    bin_freqs = torch.fft.rfftfreq(20000, d=1 / 20000)
    low = (bin_freqs >= 2) & (bin_freqs <= 100)              # envelope range, DC excluded
    for row, rate in enumerate(rates):
        envelope_power = torch.fft.rfft(modulated[row].double() ** 2).abs()[low] ** 2
        flat_power = torch.fft.rfft(flat[row].double() ** 2).abs()[low] ** 2
        assert float(bin_freqs[low][envelope_power.argmax()]) == rate
        at_rate = bin_freqs[low] == rate
        assert float(envelope_power[at_rate]) > 50 * float(envelope_power.median())
        assert float(flat_power[at_rate]) < 20 * float(flat_power.median())


# ---------------------------------------------------------------- figures

def assert_real_png(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    assert float(np.asarray(matplotlib.image.imread(path))[..., :3].std()) > 0.05


def test_plots_write_png_files(tmp_path, tonotopic_layer, recovered_log2_bf):
    values = recovered_log2_bf.clone()
    values[:20] = float("nan")                            # dead units are drawn grey, not dropped
    map_path = plot_sheet_map(values, tonotopic_layer["positions"], tmp_path / "maps" / "bf.png",
                              "best frequency", "viridis", "best frequency (log2 Hz)", vmin=5, vmax=13)
    assert_real_png(map_path)
    result = smoothness(recovered_log2_bf, tonotopic_layer["positions"], n_pairs=20_000, n_shuffles=10)
    curve_path = plot_smoothness_curve(result, tmp_path / "curve.png", "tonotopy smoothness")
    assert_real_png(curve_path)
