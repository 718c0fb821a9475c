"""Noise-corrected voxel predictivity and the best layer per voxel (SCIENCE.md section 7).

For every layer and split, four ridge models are fit on the train sounds: one per scan repetition and
one on the mean of the three. They share the features, so they are one multi-target fit with
4 * n_voxels targets (one SVD). Reading of SCIENCE.md, following Tuckute et al. 2023's code:
  r    = Pearson over the test sounds of the mean-fit prediction and the mean data (negative -> 0);
  r_v  = SB(median over the 3 repetition pairs of Pearson between data repetitions on the *train*
         sounds), floor 0.182 (the p < 0.05 threshold for 83 sounds);
  r_p  = SB(median over the 3 pairs of Pearson between the *test* predictions of the models fit to
         single repetitions), floor 0.183 (the threshold for 82 sounds);
  R^2_c = r^2 / (r_v r_p), per voxel and split, not clipped.
A layer's score is the median over voxels of each voxel's median over splits. The best layer avoids
double dipping: the first half of the splits picks, per voxel, the layer with the highest median
R^2_c; the second half reports that layer's median R^2_c.
"""
from __future__ import annotations

import torch

from .predictivity import as_features, split_indices
from .ridge import fit_ridge_loo
from .stats import clipped_r, corrected_r2, median, repetition_pair_correlations

N_REPETITIONS = 3


def _as_voxels(voxels, dtype) -> torch.Tensor:
    Y = torch.as_tensor(voxels).to(dtype)
    if Y.dim() != 3 or Y.shape[2] != N_REPETITIONS:
        raise ValueError(f"expected voxels [n_sounds, n_voxels, {N_REPETITIONS}], got {tuple(Y.shape)}")
    return Y


def _split_scores(X, targets, train, test, data_pair_r, alphas):
    """One layer, one split. targets [n_sounds, 4, n_voxels] (3 repetitions, then their mean) ->
    (r2_corrected [n_voxels], r2 [n_voxels], alpha of the mean fit [n_voxels])."""
    n_sounds, n_fits, n_voxels = targets.shape
    fit = fit_ridge_loo(X[train], targets[train].reshape(len(train), -1), alphas, dtype=X.dtype)
    prediction = fit.predict(X[test]).reshape(len(test), n_fits, n_voxels)
    r = clipped_r(prediction[:, 3], targets[test, 3])
    prediction_pair_r = repetition_pair_correlations(prediction[:, :3], dim=1)
    r2c = corrected_r2(r, data_pair_r, prediction_pair_r)
    return r2c, r.square(), fit.best_alpha.reshape(n_fits, n_voxels)[3]


def best_layer(r2_corrected: torch.Tensor, n_select: int) -> dict:
    """Per voxel, choose a layer on the first n_select splits and read it out on the others.

    r2_corrected [n_layers, n_splits, n_voxels] -> {"layer_index": [n_voxels], "r2_corrected":
    [n_voxels] (median over the read-out splits), "median_r2_corrected": median of that over voxels}.
    """
    if not 0 < n_select < r2_corrected.shape[1]:
        raise ValueError(f"need at least one split to select and one to read out, got n_select={n_select} "
                         f"of {r2_corrected.shape[1]} splits")
    choice = median(r2_corrected[:, :n_select], 1).argmax(0)  # [n_voxels]
    readout = median(r2_corrected[:, n_select:], 1)  # [n_layers, n_voxels]
    per_voxel = readout.gather(0, choice[None]).squeeze(0)
    return {"layer_index": choice, "r2_corrected": per_voxel, "median_r2_corrected": float(median(per_voxel))}


def voxel_predictivity(features_by_layer: dict, voxels, n_splits: int = 10, n_train: int = 83,
                       seed: int = 0, alphas=None, dtype: torch.dtype = torch.float64) -> dict:
    """Noise-corrected voxel predictivity of every layer, and the best layer per voxel.

    features_by_layer: layer -> [n_sounds, n_features]; voxels [n_sounds, n_voxels, 3] (3 scan
    repetitions) in the same sound order. Returns
      "layers": the layer names in order;
      "r2_corrected", "r2": [n_layers, n_splits, n_voxels] (R^2_c and the uncorrected r^2 of the mean fit);
      "alphas": [n_layers, n_splits, n_voxels] alpha chosen for the mean fit;
      "median_r2_corrected": [n_layers], median over voxels of the per-voxel median over splits;
      "best_layer": see best_layer(), choosing on the first n_splits // 2 splits (None for 1 split).
    """
    if not features_by_layer:
        raise ValueError("features_by_layer is empty")
    Y = _as_voxels(voxels, dtype)
    n_sounds = Y.shape[0]
    # [n_sounds, 4, n_voxels]: repetitions then their mean; each fit's voxels are contiguous columns
    targets = torch.cat([Y, Y.mean(2, keepdim=True)], 2).transpose(1, 2).contiguous()
    layers = list(features_by_layer)
    features = [as_features(features_by_layer[layer], n_sounds, dtype) for layer in layers]
    splits = split_indices(n_sounds, n_splits, n_train, seed)
    # the data reliability depends on the train sounds only, so it is shared by all layers
    data_pair_r = [repetition_pair_correlations(targets[train, :3], dim=1) for train, _ in splits]
    r2c, r2, chosen = (torch.empty(len(layers), n_splits, Y.shape[1], dtype=dtype) for _ in range(3))
    for i, X in enumerate(features):
        for j, (train, test) in enumerate(splits):
            r2c[i, j], r2[i, j], chosen[i, j] = _split_scores(X, targets, train, test, data_pair_r[j], alphas)
    return {"layers": layers, "r2_corrected": r2c, "r2": r2, "alphas": chosen,
            "median_r2_corrected": median(median(r2c, 1), 1),
            "best_layer": best_layer(r2c, n_splits // 2) if n_splits >= 2 else None}
