"""Issue 12, analysis side: silent units drop out of every map statistic, signed statistics tell
anti-structure from no structure, tonotopy is measured where the sheet does not build it in, the
controls are what they claim, and Holm / permutation p / TOST match hand-worked numbers
(docs/SCIENCE.md section 8). Tiny sizes: the whole file runs in seconds."""
import math

import pytest
import scipy.stats
import torch

from topoaudio.analysis import morans_i, morans_i_test, selectivity, smoothness, within_band
from topoaudio.analysis.controls import frequency_bands, shuffled_positions, untrained_twin
from topoaudio.brain.stats import holm, permutation_p, tost
from topoaudio.sheet import channel_freq_sheet, channels_sheet

SHEET_MM = 8.0


def planted_selectivity_layer(n_units=600, silent_fraction=0.0, seed=0):
    """Units on an 8 x 8 mm sheet whose music preference rises along x; 10 music and 10 speech
    stimuli; responses [20, N] with noise. A silent_fraction of the units (a fixed random choice)
    never respond (all-zero responses, as dead ReLUs)."""
    generator = torch.Generator().manual_seed(seed)
    positions = torch.rand(n_units, 2, generator=generator) * SHEET_MM
    preference = positions[:, 0] / SHEET_MM - 0.5                               # [-0.5, 0.5]
    labels = ["Music"] * 10 + ["EngSpeech"] * 10
    is_music = torch.tensor([label == "Music" for label in labels], dtype=torch.float32)
    responses = (1.0 + is_music[:, None] * preference[None, :]
                 + 0.3 * torch.randn(20, n_units, generator=generator))
    silent = torch.randperm(n_units, generator=generator)[:round(silent_fraction * n_units)]
    responses[:, silent] = 0.0
    return positions, responses, labels, silent


def checkerboard(side=24):
    """A regular side x side grid (0.25 mm apart) with values alternating like a checkerboard: every
    nearest neighbour differs, the strongest anti-structure a map can have."""
    row, column = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    positions = torch.stack([column.reshape(-1), row.reshape(-1)], dim=1).double() * 0.25
    return ((row + column) % 2).reshape(-1).double(), positions


# ---------------------------------------------------------------- silent units

def test_silent_units_are_dropped_and_leave_smoothness_where_it_was():
    positions, responses, labels, _ = planted_selectivity_layer()
    full = smoothness(selectivity(responses, labels, "Music", "EngSpeech"), positions, n_shuffles=5)
    positions, responses, labels, silent = planted_selectivity_layer(silent_fraction=0.3)
    t = selectivity(responses, labels, "Music", "EngSpeech")
    assert t[silent].isnan().all() and int(t.isnan().sum()) == silent.numel() == 180
    with_silent = smoothness(t, positions, n_shuffles=5)
    assert with_silent["n_units"] == 420 and with_silent["n_dropped"] == 180
    # the same units and the same positions without the silent ones: the very same statistic
    responding = t.isfinite()
    alone = smoothness(t[responding], positions[responding], n_shuffles=5)
    assert with_silent["smoothness"] == pytest.approx(alone["smoothness"], abs=1e-12)
    # and within noise of the map that had no silent units at all
    assert full["smoothness"] > 0.5
    assert with_silent["smoothness"] == pytest.approx(full["smoothness"], abs=0.1)
    # the old rule (a silent unit's t = 0) pulls the planted map's smoothness far down
    zero_filled = smoothness(t.nan_to_num(nan=0.0), positions, n_shuffles=5)
    assert zero_filled["smoothness"] < full["smoothness"] - 0.2
    moran = morans_i_test(t, positions, n_permutations=9)
    assert moran["n_dropped"] == 180 and moran["n_units"] == 420


# ---------------------------------------------------------------- signed statistics

def test_moran_test_agrees_with_morans_i_and_is_signed():
    positions, responses, labels, _ = planted_selectivity_layer(n_units=300)
    smooth = selectivity(responses, labels, "Music", "EngSpeech")
    test = morans_i_test(smooth, positions, k=8, n_permutations=199, seed=1)
    assert test["morans_i"] == pytest.approx(morans_i(smooth, positions, weights="knn", k=8), rel=1e-9)
    assert test["z"] > 5
    assert test["p"] == pytest.approx(2 / 200) and test["p_greater"] == pytest.approx(1 / 200)
    values, grid = checkerboard()
    anti = morans_i_test(values, grid, k=4, n_permutations=199)
    # an inner unit's 4 nearest neighbours all carry the other value (edge units reach a diagonal)
    assert anti["morans_i"] == pytest.approx(morans_i(values, grid, weights="knn", k=4), rel=1e-9)
    assert anti["morans_i"] < -0.9 and anti["z"] < -5
    assert anti["p"] == pytest.approx(2 / 200) and anti["p_greater"] == pytest.approx(1.0)
    shuffled_map = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(2))]
    chance = morans_i_test(shuffled_map, grid, k=4, n_permutations=199)
    assert abs(chance["z"]) < 3.5 and chance["p"] > 0.001
    assert math.isnan(morans_i_test(torch.ones(50), grid[:50], n_permutations=9)["p"])


def test_nearest_bin_z_tells_anti_structure_from_no_structure():
    values, grid = checkerboard()
    anti = smoothness(values, grid, n_bins=12, n_shuffles=99)
    # smoothness is floored at 0 whether neighbours differ or nothing is arranged ...
    assert anti["smoothness"] == pytest.approx(0.0, abs=0.05)
    # ... the nearest bin against its null is not: neighbours differ more than chance
    assert anti["near_z"] < -5 and anti["near_p"] == pytest.approx(2 / 100)
    ordered = smoothness(grid[:, 0], grid, n_bins=12, n_shuffles=99)
    assert ordered["near_z"] > 5 and ordered["near_p"] == pytest.approx(2 / 100)


# ---------------------------------------------------------------- tonotopy within bands

def test_a_map_of_the_row_alone_is_smooth_but_has_no_within_band_structure():
    sheet = channel_freq_sheet("block", n_channels=32, n_freqs=16, seed=0)
    bands = frequency_bands(sheet)
    assert bands.tolist() == (torch.arange(512) // 32).tolist()
    # the row index alone: nothing is left within the bands (a constant map, NaN smoothness)
    assert within_band(bands, bands).abs().max() == 0
    assert math.isnan(smoothness(within_band(bands, bands), sheet.positions, n_shuffles=3)["smoothness"])
    noise = 0.1 * torch.randn(sheet.n_units, generator=torch.Generator().manual_seed(0))
    row_map = bands.double() + noise                     # what any model's BF map gets for free
    plain = smoothness(row_map, sheet.positions, n_shuffles=20)
    assert plain["smoothness"] > 0.7 and plain["near_z"] > 5
    residual = within_band(row_map, bands)
    row_means = noise.double().reshape(16, 32).mean(dim=1).repeat_interleave(32)
    assert torch.allclose(residual, noise.double() - row_means)
    inside = smoothness(residual, sheet.positions, n_shuffles=20)
    assert inside["smoothness"] < 0.25 and abs(inside["near_z"]) < 3.5
    assert morans_i_test(residual, sheet.positions, n_permutations=99)["p"] > 0.01
    # a map arranged along x within every band keeps its structure after the rows are removed
    column = (torch.arange(sheet.n_units) % 32 % 8).double()          # the channel's grid column
    arranged = within_band(row_map + column, bands)
    assert morans_i_test(arranged, sheet.positions, n_permutations=99)["z"] > 5
    assert frequency_bands(channels_sheet("block", 64)) is None


def test_the_layout_null_keeps_what_the_sheet_builds_in_and_tests_the_arrangement():
    """On a channel_freq sheet a map that depends on the channel alone (a random value per channel,
    the same in every row: what any network's channels give) is 'significant' for Moran's I, since
    a channel's units neighbour each other across rows; against permutations of the channels'
    places it is not. Channels arranged so that grid neighbours are alike are significant against
    both. Silent units move with their channel."""
    from topoaudio.analysis.controls import layout_null_test

    sheet = channel_freq_sheet("block", n_channels=16, n_freqs=40, seed=0)
    generator = torch.Generator().manual_seed(1)

    def noise():
        return 0.05 * torch.randn(640, generator=generator, dtype=torch.float64)

    channel_only = torch.randn(16, generator=generator, dtype=torch.float64).repeat(40) + noise()
    assert morans_i_test(channel_only, sheet.positions, n_permutations=199)["z"] > 10
    layout = layout_null_test(channel_only, sheet.positions, 16, n_permutations=199)
    assert layout["p"] > 0.05 and abs(layout["z"]) < 3
    arranged = (torch.arange(16) % 4).double().repeat(40) + noise()   # grid columns: neighbours alike
    arranged[torch.arange(640) % 16 == 5] = float("nan")             # a silent channel
    layout = layout_null_test(arranged, sheet.positions, 16, n_permutations=199)
    assert layout["p"] == pytest.approx(2 / 200) and layout["z"] > 5
    assert math.isnan(layout_null_test(torch.ones(640), sheet.positions, 16, n_permutations=9)["p"])
    with pytest.raises(ValueError, match="not rows of 30 channels"):
        layout_null_test(arranged, sheet.positions, 30)


def test_within_band_keeps_nan_and_checks_its_input():
    values = torch.tensor([1.0, float("nan"), 3.0, 10.0, 20.0])
    bands = torch.tensor([0, 0, 0, 1, 1])
    residual = within_band(values, bands)
    assert residual[[0, 2, 3, 4]].tolist() == [-1.0, 1.0, -5.0, 5.0] and residual[1].isnan()
    with pytest.raises(ValueError, match="integer labels"):
        within_band(values, bands.double())
    with pytest.raises(ValueError, match="bands"):
        within_band(values, bands[:3])


# ---------------------------------------------------------------- controls

def test_shuffled_positions_are_a_fixed_permutation_that_removes_the_arrangement():
    positions, responses, labels, _ = planted_selectivity_layer(n_units=300)
    moved = shuffled_positions(positions)
    assert torch.equal(moved, shuffled_positions(positions))                     # fixed seed
    assert not torch.equal(moved, positions)
    assert torch.equal(moved.sort(dim=0).values, positions.sort(dim=0).values)   # the same places
    t = selectivity(responses, labels, "Music", "EngSpeech")
    assert morans_i_test(t, positions, n_permutations=99)["z"] > 5
    assert abs(morans_i_test(t, moved, n_permutations=99)["z"]) < 3.5


def test_untrained_twin_is_the_initialisation_of_the_run(tmp_path):
    from topoaudio.checkpoint import load_trained
    from topoaudio.training import train
    from topoaudio.training.config import TrainConfig

    # a learning rate of 1e-12 leaves every weight where initialisation put it (to ~1e-12)
    train(TrainConfig(dataset="procedural", num_workers=0, clip_seconds=0.5, train_size=8,
                      val_size=4, batch_size=4, steps=1, warmup_steps=0,
                      log_every=1, eval_every=1000, checkpoint_every=1000, lr=1e-12, topo="none",
                      seed=3, out=str(tmp_path / "run")))
    model, _, config = load_trained(tmp_path / "run" / "checkpoint.pt")
    twin = untrained_twin(config)
    twin_weights = dict(twin.named_parameters())
    trunk = [(name, weight) for name, weight in model.named_parameters() if not name.startswith("head")]
    assert trunk
    for name, weight in trunk:
        torch.testing.assert_close(twin_weights[name], weight, atol=1e-7, rtol=0, msg=name)
    other_seed = dict(untrained_twin({**config, "seed": 4}).named_parameters())
    assert any(not torch.allclose(other_seed[name], weight) for name, weight in trunk)
    state = torch.get_rng_state()
    untrained_twin(config)
    assert torch.equal(state, torch.get_rng_state())                             # RNG left as it was
    with pytest.raises(ValueError, match="seed"):
        untrained_twin({"model": "cochcnn"})


# ---------------------------------------------------------------- Holm, permutation p, TOST

def test_holm_by_hand():
    # sorted: 0.01 x 4 = 0.04; 0.02 x 3 = 0.06; 0.03 x 2 = 0.06; 0.5 x 1 = 0.5
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    # a large p early on carries over: 0.04 x 2 = 0.08, then 0.045 x 1 -> 0.08 (non-decreasing)
    assert holm([0.045, 0.04, None]) == pytest.approx([0.08, 0.08, None])


def test_permutation_p_by_hand():
    null = [1.0, 2.0, 3.0, 4.0, float("nan")]          # NaN entries are not arrangements
    # observed 3.5: 1 null value >= it, 3 <= it; counting itself: 2 / 5 and 4 / 5
    assert permutation_p(3.5, null, "greater") == pytest.approx(0.4)
    assert permutation_p(3.5, null, "less") == pytest.approx(0.8)
    assert permutation_p(3.5, null) == pytest.approx(0.8)
    assert permutation_p(9.0, null) == pytest.approx(0.4)
    assert permutation_p(2.5, null) == 1.0                                       # capped
    with pytest.raises(ValueError, match="alternative"):
        permutation_p(1.0, null, "both")


def test_tost_by_hand_and_against_shifted_welch_tests():
    a, b = [1.0, 2.0, 3.0], [1.5, 2.5, 3.5]
    # difference -0.5; standard error sqrt(1/3 + 1/3); Welch df = (2/3)^2 / (2 (1/3)^2 / 2) = 4
    result = tost(a, b, margin=1.0)
    standard_error = math.sqrt(2 / 3)
    assert result["difference"] == pytest.approx(-0.5) and result["df"] == pytest.approx(4.0)
    assert result["p_lower"] == pytest.approx(scipy.stats.t.sf(0.5 / standard_error, 4))
    assert result["p_upper"] == pytest.approx(scipy.stats.t.cdf(-1.5 / standard_error, 4))
    assert result["p"] == max(result["p_lower"], result["p_upper"])
    shifted = scipy.stats.ttest_ind([x + 1.0 for x in a], b, equal_var=False, alternative="greater")
    assert result["p_lower"] == pytest.approx(shifted.pvalue)
    half = scipy.stats.t.ppf(0.95, 4) * standard_error
    assert result["interval"] == pytest.approx((-0.5 - half, -0.5 + half))


def test_tost_supports_parity_only_when_the_data_do():
    generator = torch.Generator().manual_seed(0)
    same = [0.90 + 0.005 * torch.randn(8, generator=generator) for _ in range(2)]
    assert tost(*same, margin=0.02)["equivalent"] is True                        # 2 accuracy points
    apart = tost(same[0], same[1] + 0.05, margin=0.02)
    assert apart["equivalent"] is False and apart["p"] > 0.5
    # three noisy seeds cannot show parity within 0.02 R^2 even when the means agree
    noisy = tost(torch.tensor([0.40, 0.48, 0.44]), torch.tensor([0.47, 0.39, 0.45]), margin=0.02)
    assert noisy["equivalent"] is False
    # no spread at all (accuracy at ceiling): no test, not a verdict
    ceiling = tost([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], margin=0.02)
    assert ceiling["p"] is None and ceiling["equivalent"] is None
    with pytest.raises(ValueError, match="margin"):
        tost([1.0, 2.0], [1.0, 2.0], margin=0.0)
    with pytest.raises(ValueError, match="sample b"):
        tost([1.0, 2.0], [1.0], margin=0.1)


def test_multi_task_validation_accuracy_reaches_the_parity_tests(tmp_path):
    # a multi-task run logs {task: accuracy}; each task gets its own parity entry, none is dropped
    from topoaudio.analysis import evaluation

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"step": 4, "val_accuracy": {"word": 0.25, "speaker": null, "category": 0.5}}\n'
        '{"step": 8, "val_accuracy": {"word": 0.5, "speaker": null, "category": 0.75}}\n')
    accuracy = evaluation.final_val_accuracy(run / "checkpoint.pt")
    assert accuracy == {"word": 0.5, "category": 0.75}
    flat = evaluation._flatten({"val_accuracy": accuracy, "layers": {}})
    assert flat == {"val_accuracy/word": 0.5, "val_accuracy/category": 0.75}
    assert evaluation._parity_margin("val_accuracy/word") == evaluation._parity_margin("val_accuracy")
