"""Train/test splits and component predictivity (SCIENCE.md section 7, Tuckute et al. 2023)."""
from __future__ import annotations

import torch

from .ridge import fit_ridge_loo
from .stats import clipped_r, median


def split_indices(n_sounds: int = 165, n_splits: int = 10, n_train: int = 83, seed: int = 0):
    """The seeded random train/test splits: a list of n_splits pairs (train [n_train], test
    [n_sounds - n_train]) of sorted int64 index tensors. The same seed gives the same splits on any
    machine (torch's CPU generator)."""
    if not 0 < n_train < n_sounds:
        raise ValueError(f"need 0 < n_train < n_sounds, got n_train={n_train}, n_sounds={n_sounds}")
    generator = torch.Generator().manual_seed(seed)
    splits = []
    for _ in range(n_splits):
        order = torch.randperm(n_sounds, generator=generator)
        splits.append((order[:n_train].sort().values, order[n_train:].sort().values))
    return splits


def as_features(features, n_sounds: int, dtype: torch.dtype) -> torch.Tensor:
    """One layer's features as a [n_sounds, n_features] tensor of `dtype`, checking the sound count."""
    X = torch.as_tensor(features).to(dtype)
    if X.dim() != 2 or X.shape[0] != n_sounds:
        raise ValueError(f"expected features [n_sounds={n_sounds}, n_features], got {tuple(X.shape)}")
    return X


def _predict_one_layer(X, Y, splits, alphas) -> dict:
    r2, chosen = [], []
    for train, test in splits:
        fit = fit_ridge_loo(X[train], Y[train], alphas, dtype=X.dtype)
        r2.append(clipped_r(fit.predict(X[test]), Y[test]).square())
        chosen.append(fit.best_alpha)
    r2 = torch.stack(r2)
    return {"r2": r2, "median_r2": median(r2, 0), "alphas": torch.stack(chosen)}


def predict_components(features, components, n_splits: int = 10, n_train: int = 83, seed: int = 0,
                       alphas=None, dtype: torch.dtype = torch.float64) -> dict:
    """Predict each brain component (a column of R) from model features with cross-validated ridge.

    features: one layer [n_sounds, n_features], or a dict layer -> [n_sounds, n_features];
    components [n_sounds, n_components] in the same sound order. For each split: fit on train (alpha by
    LOO per component), predict test, r = Pearson per component (negative -> 0), R^2 = r^2.
    Returns {"r2": [n_splits, n_components], "median_r2": [n_components] (median over splits),
    "alphas": [n_splits, n_components]} for one layer, or a dict layer -> that dict.
    """
    Y = torch.as_tensor(components).to(dtype)
    if Y.dim() != 2:
        raise ValueError(f"expected components [n_sounds, n_components], got {tuple(Y.shape)}")
    splits = split_indices(Y.shape[0], n_splits, n_train, seed)
    if isinstance(features, dict):
        return {layer: _predict_one_layer(as_features(f, Y.shape[0], dtype), Y, splits, alphas)
                for layer, f in features.items()}
    return _predict_one_layer(as_features(features, Y.shape[0], dtype), Y, splits, alphas)
