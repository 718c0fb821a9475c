"""Correlations, medians and the test-retest noise correction of SCIENCE.md section 7."""
from __future__ import annotations

import torch

# Reliability floors of Kell et al. 2018 / Tuckute et al. 2023: the one-tailed p < 0.05 threshold of a
# correlation over 83 sounds (data, measured on the train sounds) and over 82 sounds (predictions,
# measured on the test sounds). They stop a near-zero reliability from blowing up the corrected R^2.
DATA_RELIABILITY_FLOOR = 0.182
PREDICTION_RELIABILITY_FLOOR = 0.183

# The three pairs of the three scan repetitions
REPETITION_PAIRS = ((0, 1), (0, 2), (1, 2))


def standardize(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Centre along `dim` and scale to unit norm, so that Pearson r is a plain sum of products.
    Constant slices become NaN (0 / 0)."""
    x = x - x.mean(dim, keepdim=True)
    return x / x.norm(dim=dim, keepdim=True)


def pearson(a: torch.Tensor, b: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Pearson correlation along `dim` (the sounds), e.g. a, b [n_sounds, n_targets] -> [n_targets].
    NaN where either side is constant, so callers decide what an undefined correlation means."""
    return (standardize(a, dim) * standardize(b, dim)).sum(dim)


def clipped_r(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The regression score r on test sounds: Pearson per target, negative or undefined (constant
    prediction) -> 0. prediction, truth [n_test, n_targets] -> r [n_targets]; R^2 = r^2."""
    return torch.nan_to_num(pearson(prediction, truth), nan=0.0).clamp_min(0)


def median(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Median ignoring NaN, averaging the two middle values for an even count like numpy (torch.median
    would return the lower one). All-NaN slices give NaN."""
    return torch.nanquantile(x, 0.5, dim=dim)


def spearman_brown(r: torch.Tensor | float):
    """Reliability of the mean of 3 repetitions from the correlation r of single repetitions:
    SB(r) = 3 r / (1 + 2 r)."""
    return 3 * r / (1 + 2 * r)


def repetition_pair_correlations(responses: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pearson over sounds for each pair of repetitions, (0, 1), (0, 2), (1, 2).

    responses [n_sounds, n_targets, 3] (repetitions along `dim`, sounds first) -> [3, n_targets]
    """
    if responses.shape[dim] != 3:
        raise ValueError(f"expected 3 repetitions along dim {dim}, got shape {tuple(responses.shape)}")
    # repetitions first and contiguous: elementwise work on a stride-3 view is several times slower
    z = standardize(responses.movedim(dim, 0).contiguous(), dim=1)
    return torch.stack([(z[i] * z[j]).sum(0) for i, j in REPETITION_PAIRS])


def reliability(pair_r: torch.Tensor, floor: float) -> torch.Tensor:
    """SB(median over repetition pairs), floored. pair_r [n_pairs, n_targets] -> [n_targets].

    NaN pairs (a constant response) are ignored; an all-NaN voxel gets the floor. A negative median is
    taken as 0 before SB: SB is only meaningful for r >= 0, and the plain formula would map
    r < -0.5 to a large positive reliability.
    """
    med = median(pair_r, 0)
    sb = spearman_brown(med.clamp_min(0))
    return torch.nan_to_num(sb, nan=floor).clamp_min(floor)


def corrected_r2(r: torch.Tensor, data_pair_r: torch.Tensor, prediction_pair_r: torch.Tensor) -> torch.Tensor:
    """Noise-corrected explained variance R^2_c = r^2 / (r_v r_p).

    r [n_targets]: test correlation of the mean-fit prediction with the mean data (negative -> 0);
    data_pair_r [3, n_targets]: correlations between data repetitions on the train sounds -> r_v;
    prediction_pair_r [3, n_targets]: correlations between the test predictions of the models fit to
    each repetition -> r_p. Not clipped at 1: the correction is an estimate and can overshoot.
    """
    r_v = reliability(data_pair_r, DATA_RELIABILITY_FLOOR)
    r_p = reliability(prediction_pair_r, PREDICTION_RELIABILITY_FLOOR)
    return torch.nan_to_num(r, nan=0.0).clamp_min(0).square() / (r_v * r_p)
