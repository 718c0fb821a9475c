"""Brain predictivity (SCIENCE.md section 7): ridge with efficient LOO, splits, noise correction,
component predictivity on the real NH2015 components, RSA, and the loaders' errors."""

import numpy as np
import pytest
import scipy.io
import torch

from topoaudio.brain import (
    corrected_r2,
    fit_ridge_loo,
    load_components,
    load_voxels,
    predict_components,
    reliability,
    repetition_pair_correlations,
    ridge_loo,
    rsa,
    spearman_brown,
    split_indices,
    voxel_predictivity,
)


def planted(n_sounds=165, n_features=30, n_targets=20, noise=0.5, seed=0):
    """X, a planted linear map W, and Y = X W + 3 + Gaussian noise of known sd; the population R^2 of
    the true map is var(signal) / (var(signal) + noise^2)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n_sounds, n_features, generator=g, dtype=torch.float64) + 1.0
    W = torch.randn(n_features, n_targets, generator=g, dtype=torch.float64) / n_features ** 0.5
    signal = (X - 1.0) @ W + 3.0
    Y = signal + noise * torch.randn(n_sounds, n_targets, generator=g, dtype=torch.float64)
    ceiling = W.square().sum(0) / (W.square().sum(0) + noise ** 2)  # var of each signal column
    return X, W, Y, ceiling


def brute_force_loo_mse(X, Y, alphas):
    """Leave each sound out, re-centre on the rest, solve ridge explicitly, predict the left-out sound.
    (numpy: torch's small dense solves are needlessly slow on a busy two-core runner.)"""
    X, Y = X.numpy(), Y.numpy()
    n, n_features = X.shape
    mse = np.zeros((len(alphas), Y.shape[1]))
    for a, alpha in enumerate(alphas.tolist()):
        for i in range(n):
            keep = np.arange(n) != i
            x_mean, y_mean = X[keep].mean(0), Y[keep].mean(0)
            Xc, Yc = X[keep] - x_mean, Y[keep] - y_mean
            W = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(n_features), Xc.T @ Yc)
            mse[a] += (Y[i] - ((X[i] - x_mean) @ W + y_mean)) ** 2 / n
    return torch.from_numpy(mse)


# ---- ridge ----

def test_ridge_recovers_planted_map_up_to_noise_ceiling():
    X, W, Y, ceiling = planted(noise=0.3)
    train, test = split_indices()[0]
    weights, best_alpha, intercept = ridge_loo(X[train], Y[train])
    assert weights.shape == (30, 20) and best_alpha.shape == (20,) and intercept.shape == (20,)
    # least squares would miss by about sqrt(0.3^2 * 30 / (83 - 31)) = 0.23 of |W|; ridge no worse
    relative_error = (weights - W).norm() / W.norm()
    assert relative_error < 0.3
    prediction = X[test] @ weights + intercept
    r2 = torch.stack([torch.corrcoef(torch.stack([prediction[:, t], Y[test, t]]))[0, 1] for t in range(20)])
    r2 = r2.clamp_min(0).square()
    # close to the best any model can do on noisy targets, and never far above it
    assert r2.mean() > 0.85 * ceiling.mean()
    assert r2.mean() < ceiling.mean() + 0.1
    # the intercept undoes the centring: the fit passes through the train means
    torch.testing.assert_close(intercept, Y[train].mean(0) - X[train].mean(0) @ weights)


@pytest.mark.parametrize("n_features", [5, 30])  # fewer and more features than sounds
def test_efficient_loo_equals_brute_force(n_features):
    g = torch.Generator().manual_seed(n_features)
    X = torch.randn(16, n_features, generator=g, dtype=torch.float64) * 2 + 5
    Y = X[:, :3] @ torch.randn(3, 4, generator=g, dtype=torch.float64) + torch.randn(16, 4, generator=g,
                                                                                   dtype=torch.float64)
    alphas = torch.logspace(-3, 4, 8, dtype=torch.float64)
    fit = fit_ridge_loo(X, Y, alphas)
    expected = brute_force_loo_mse(X, Y, alphas)
    torch.testing.assert_close(fit.loo_mse, expected, rtol=1e-8, atol=1e-12)
    assert torch.equal(fit.best_alpha, alphas[expected.argmin(0)])
    # weights are those of a plain ridge refit on all train sounds with each target's chosen alpha
    Xc, Yc = (X - X.mean(0)).numpy(), (Y - Y.mean(0)).numpy()
    for t in range(4):
        W = np.linalg.solve(Xc.T @ Xc + fit.best_alpha[t].item() * np.eye(n_features), Xc.T @ Yc[:, t])
        np.testing.assert_allclose(fit.weights[:, t].numpy(), W, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(fit.predict(X), X @ fit.weights + fit.intercept)


def test_loo_picks_different_alphas_for_different_targets():
    # a target the features explain needs little shrinkage, pure noise needs a lot
    X, _, Y, _ = planted(n_targets=1, noise=0.1)
    noise = torch.randn(165, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fit = fit_ridge_loo(X[:83], torch.cat([Y, noise], 1)[:83])
    assert fit.best_alpha[0] < fit.best_alpha[1]
    assert fit.alphas.shape == (17,)
    torch.testing.assert_close(fit.alphas[1:] / fit.alphas[:-1], torch.full((16,), 10.0, dtype=torch.float64))


def test_ridge_rejects_bad_alphas_and_shapes():
    X, _, Y, _ = planted()
    with pytest.raises(ValueError, match="positive"):
        ridge_loo(X, Y, alphas=[0.0, 1.0])
    with pytest.raises(ValueError, match="same"):
        ridge_loo(X, Y[:100])


# ---- splits ----

def test_splits_are_seeded_disjoint_and_sized():
    splits = split_indices(seed=0)
    assert len(splits) == 10
    for train, test in splits:
        assert len(train) == 83 and len(test) == 82
        assert len(set(train.tolist()) | set(test.tolist())) == 165
        assert not set(train.tolist()) & set(test.tolist())
    assert len({tuple(train.tolist()) for train, _ in splits}) == 10
    again = split_indices(seed=0)
    for (train, test), (train_again, test_again) in zip(splits, again, strict=True):
        assert torch.equal(train, train_again) and torch.equal(test, test_again)
    other = split_indices(seed=1)
    assert not torch.equal(splits[0][0], other[0][0])


# ---- noise correction ----

def test_spearman_brown_and_floors():
    assert spearman_brown(0.5) == pytest.approx(0.75)  # 1.5 / 2
    assert spearman_brown(1.0) == pytest.approx(1.0)
    assert spearman_brown(0.0) == 0.0
    pair_r = torch.tensor([[0.05, -0.9, float("nan")]]).expand(3, 3)
    # SB(0.05) = 0.15 / 1.1 = 0.136 < floor; a negative median counts as 0; all-NaN -> floor
    torch.testing.assert_close(reliability(pair_r, 0.182), torch.full((3,), 0.182))
    torch.testing.assert_close(reliability(pair_r, 0.183), torch.full((3,), 0.183))
    torch.testing.assert_close(reliability(torch.tensor([[0.2], [0.5], [0.9]]), 0.182), torch.tensor([0.75]))


def test_corrected_r2_hand_computed():
    # repetitions of one voxel over 4 sounds, chosen so the pair correlations are easy by hand:
    # centred r0 = [-1.5, -.5, .5, 1.5]; r0.r1 = 4, r0.r2 = 4, r1.r2 = 3, every norm^2 = 5
    reps = torch.tensor([[1.0, 2, 3, 4], [1, 2, 4, 3], [2, 1, 3, 4]], dtype=torch.float64).T[:, None, :]
    pair_r = repetition_pair_correlations(reps)
    torch.testing.assert_close(pair_r[:, 0], torch.tensor([0.8, 0.8, 0.6], dtype=torch.float64))
    prediction_pair_r = torch.tensor([[0.2], [0.25], [0.3]], dtype=torch.float64)
    r = torch.tensor([0.5], dtype=torch.float64)
    # r_v = SB(0.8) = 2.4 / 2.6; r_p = SB(0.25) = 0.75 / 1.5 = 0.5; R^2_c = 0.25 / (r_v * 0.5)
    expected = 0.25 / ((2.4 / 2.6) * 0.5)
    torch.testing.assert_close(corrected_r2(r, pair_r, prediction_pair_r), torch.tensor([expected],
                                                                                       dtype=torch.float64))
    # a negative test correlation scores 0; floors apply to both reliabilities
    low = torch.full((3, 1), 0.01, dtype=torch.float64)
    torch.testing.assert_close(corrected_r2(torch.tensor([-0.4, 0.1]), low.expand(3, 2), low.expand(3, 2)),
                               torch.tensor([0.0, 0.01 / (0.182 * 0.183)], dtype=torch.float64))


def test_voxel_pipeline_corrects_noise_and_picks_the_true_layer():
    g = torch.Generator().manual_seed(3)
    n_voxels = 60
    true = torch.randn(165, 12, generator=g, dtype=torch.float64)
    signal = true @ torch.randn(12, n_voxels, generator=g, dtype=torch.float64)
    signal /= signal.std(0)
    noise_sd = torch.linspace(0.7, 2.0, n_voxels, dtype=torch.float64)  # reliability varies over voxels
    voxels = signal[:, :, None] + noise_sd[:, None] * torch.randn(165, n_voxels, 3, generator=g,
                                                                  dtype=torch.float64)
    layers = {"true": true, "random": torch.randn(165, 40, generator=g, dtype=torch.float64)}
    out = voxel_predictivity(layers, voxels, n_splits=4)
    assert out["layers"] == ["true", "random"]
    assert out["r2_corrected"].shape == (2, 4, n_voxels) and out["alphas"].shape == (2, 4, n_voxels)
    true_corrected, random_corrected = out["median_r2_corrected"]
    # the true map explains all the explainable variance once noise is corrected for
    assert 0.75 < true_corrected < 1.25
    assert random_corrected < 0.2
    assert out["r2"][0].median() < 0.8 * true_corrected  # uncorrected r^2 is held down by the noise
    assert (out["best_layer"]["layer_index"] == 0).float().mean() > 0.9
    assert out["best_layer"]["median_r2_corrected"] == pytest.approx(true_corrected, abs=0.25)


# ---- components ----

def test_components_predicted_from_noisy_components_and_not_from_noise(natsound165_dir):
    names, component_names, R = load_components(natsound165_dir)
    g = torch.Generator().manual_seed(0)
    noisy = R + 0.2 * R.std(0) * torch.randn(R.shape, generator=g, dtype=torch.float64)
    random = torch.randn(165, 50, generator=g, dtype=torch.float64)
    out = predict_components({"noisy": noisy, "random": random}, R)
    assert out["noisy"]["r2"].shape == (10, 6) and out["noisy"]["median_r2"].shape == (6,)
    assert (out["noisy"]["median_r2"] > 0.8).all()
    assert out["random"]["median_r2"].mean() < 0.05
    assert (out["random"]["r2"] >= 0).all()
    single = predict_components(noisy, R)  # one layer gives the inner dict
    torch.testing.assert_close(single["r2"], out["noisy"]["r2"])


def test_load_components_matches_by_name(natsound165_dir):
    names, component_names, R = load_components(natsound165_dir)
    assert component_names == ["lowfreq", "highfreq", "envsounds", "pitch", "speech", "music"]
    assert len(names) == 165 and R.shape == (165, 6) and R.dtype == torch.float64
    order = sorted(names)
    reordered_names, _, reordered = load_components(natsound165_dir, order=[f"wav/{n}.wav" for n in order])
    assert reordered_names == order
    torch.testing.assert_close(reordered[order.index(names[7])], R[7])
    with pytest.raises(ValueError, match="not in the file"):
        load_components(natsound165_dir, order=["stim0_not_a_sound"])


# ---- RSA ----

def test_rsa_identity_and_unrelated():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(40, 25, generator=g)
    assert rsa(features, features) == pytest.approx(1.0)
    # the brain side may carry repetitions; RSA on a monotone rescaling of features is still 1
    assert rsa(features, (3 * features + 1)[:, :, None].expand(40, 25, 3)) == pytest.approx(1.0)
    assert abs(rsa(features, torch.randn(40, 25, generator=g))) < 0.2
    with pytest.raises(ValueError, match="constant"):
        rsa(torch.ones(40, 3), features)


# ---- loaders ----

def test_load_voxels_formats_and_errors(tmp_path):
    g = np.random.default_rng(0)
    voxels = g.standard_normal((165, 7, 3))
    names = [f"stim{i}_sound" for i in range(165)]
    np.savez(tmp_path / "voxels.npz", voxels=voxels, stim_names=np.array(names))
    loaded_names, loaded = load_voxels(tmp_path)
    assert loaded_names == names and loaded.shape == (165, 7, 3)
    np.testing.assert_allclose(loaded.numpy(), voxels)
    order = names[::-1]
    _, reordered = load_voxels(tmp_path, order=order)
    np.testing.assert_allclose(reordered.numpy(), voxels[::-1])

    mat_dir = tmp_path / "mat"
    mat_dir.mkdir()
    scipy.io.savemat(mat_dir / "voxels.mat", {"data": voxels})
    assert load_voxels(mat_dir)[0] is None
    with pytest.raises(ValueError, match="names no sounds"):
        load_voxels(mat_dir, order=order)

    # the lab's layout: voxels with fewer repetitions are dropped by the meta file's n_reps
    lab = tmp_path / "lab"
    lab.mkdir()
    with_nan = voxels.copy()
    with_nan[:, 2, 2] = np.nan
    np.save(lab / "voxel_features_array.npy", with_nan)
    np.save(lab / "voxel_features_meta.npy", np.array([(3,), (3,), (2,), (3,), (3,), (3,), (3,)],
                                                      dtype=[("n_reps", "i8")]))
    assert load_voxels(lab)[1].shape == (165, 6, 3)
    (lab / "voxel_features_meta.npy").unlink()
    with pytest.raises(ValueError, match="NaN"):
        load_voxels(lab)


@pytest.mark.parametrize("shape, message", [((160, 7, 3), "165 sounds"), ((165, 7, 2), "3 repetitions"),
                                            ((165, 21), "3 repetitions")])
def test_load_voxels_rejects_wrong_shapes(tmp_path, shape, message):
    np.save(tmp_path / "voxels.npy", np.zeros(shape))
    with pytest.raises(ValueError, match=message):
        load_voxels(tmp_path)


def test_load_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_voxels(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="voxels.npz"):
        load_voxels(tmp_path)
    np.savez(tmp_path / "voxels.npz", responses=np.zeros((165, 2, 3)))
    with pytest.raises(ValueError, match="'voxels'"):
        load_voxels(tmp_path)
    with pytest.raises(FileNotFoundError, match="components.mat"):
        load_components(tmp_path)
    scipy.io.savemat(tmp_path / "components.mat", {"R": np.zeros((165, 5)), "stim_names": ["a"] * 165,
                                                   "component_names": ["c"] * 6})
    with pytest.raises(ValueError, match="R is"):
        load_components(tmp_path)
    scipy.io.savemat(tmp_path / "components.mat", {"R": np.zeros((165, 6))})
    with pytest.raises(ValueError, match="stim_names"):
        load_components(tmp_path)


SIX = ["lowfreq", "highfreq", "envsounds", "pitch", "speech", "music"]


@pytest.mark.parametrize("component_names, problem", [
    (["lowfreq"], r"missing \['highfreq', 'envsounds', 'pitch', 'speech', 'music'\]"),
    (SIX[:5] + ["speech"], r"missing \['music'\]"),
    (SIX + ["pitch2"], r"unknown \['pitch2'\]"),
    (SIX + ["music"], "listed twice"),
], ids=["one", "a duplicate for one", "an extra", "a repeat"])
def test_components_other_than_the_six_of_nh2015_are_refused(tmp_path, component_names, problem):
    """R that matches its names is not enough: the file must hold the six NH2015 components."""
    scipy.io.savemat(tmp_path / "components.mat", {
        "R": np.ones((165, len(component_names))), "stim_names": [f"stim{i}_s" for i in range(165)],
        "component_names": np.array(component_names, dtype=object)})
    with pytest.raises(ValueError, match=problem) as refused:
        load_components(tmp_path)
    assert str(tmp_path / "components.mat") in str(refused.value)
    assert "are not the 6 NH2015 components" in str(refused.value)
    scipy.io.savemat(tmp_path / "components.mat", {  # the six in another order are fine
        "R": np.ones((165, 6)), "stim_names": [f"stim{i}_s" for i in range(165)],
        "component_names": np.array(SIX[::-1], dtype=object)})
    assert load_components(tmp_path)[1] == SIX[::-1]
