"""Representational similarity analysis between model features and brain responses."""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr


def dissimilarity_matrix(responses) -> np.ndarray:
    """1 - Pearson correlation between the response patterns of every pair of sounds.

    responses [n_sounds, n_features] (or [n_sounds, n_voxels, n_repetitions], averaged over
    repetitions first) -> [n_sounds, n_sounds] float64.
    """
    R = torch.as_tensor(responses).to(torch.float64)
    if R.dim() == 3:
        R = R.mean(2)
    if R.dim() != 2:
        raise ValueError(f"expected [n_sounds, n_features] responses, got {tuple(R.shape)}")
    R = R - R.mean(1, keepdim=True)
    norms = R.norm(dim=1)
    if bool((norms == 0).any()):
        constant = torch.nonzero(norms == 0).flatten().tolist()
        raise ValueError(f"sounds {constant[:10]} have constant responses: correlation is undefined")
    R = R / norms[:, None]
    return (1 - R @ R.T).numpy()


def rsa(features, responses) -> float:
    """Spearman correlation between the upper triangles (diagonal excluded) of the model's and the
    brain's sounds x sounds dissimilarity matrices (1 - Pearson). Using Pearson similarity instead gives
    the same value: Spearman only sees ranks, and both matrices are ranked in reverse alike.

    features [n_sounds, n_features]; responses [n_sounds, n_components or n_voxels] or
    [n_sounds, n_voxels, n_repetitions]; same sound order.
    """
    model, brain = dissimilarity_matrix(features), dissimilarity_matrix(responses)
    if model.shape != brain.shape:
        raise ValueError(f"features and responses cover different numbers of sounds: "
                         f"{model.shape[0]} vs {brain.shape[0]}")
    upper = np.triu_indices(model.shape[0], k=1)
    return float(spearmanr(model[upper], brain[upper]).statistic)
