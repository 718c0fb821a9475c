"""Correlations, medians and the test-retest noise correction of SCIENCE.md section 7; Holm, permutation
p values and equivalence tests (TOST) for comparing checkpoints (section 8)."""
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


# --- tests across checkpoints (docs/SCIENCE.md section 8) ---------------------------------------------

# Parity margins: a difference smaller than these is taken as no difference that matters. Task
# accuracy is stored as a fraction, so 2 accuracy points are 0.02 of it, like R^2.
ACCURACY_MARGIN = 0.02
R2_MARGIN = 0.02


def holm(p_values: list) -> list:
    """Holm's step-down adjustment of p values tested as one family (None stays None): the k-th
    smallest of m is multiplied by m - k + 1, capped at 1, and kept non-decreasing."""
    order = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def permutation_p(observed: float, null, alternative: str = "two-sided") -> float:
    """p of `observed` against a permutation null [S] (NaN entries ignored), counting the observed
    arrangement as one of the S + 1 (so p >= 1 / (S + 1)).

    "greater": (1 + #null >= observed) / (1 + S); "less": (1 + #null <= observed) / (1 + S);
    "two-sided": twice the smaller of the two, capped at 1. NaN when observed is NaN."""
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    null = torch.as_tensor(null, dtype=torch.float64).reshape(-1)
    null = null[~null.isnan()]
    if null.numel() == 0:
        raise ValueError("the permutation null holds no finite value")
    if observed != observed:  # NaN: no arrangement to compare
        return float("nan")
    greater = (1 + int((null >= observed).sum())) / (1 + null.numel())
    less = (1 + int((null <= observed).sum())) / (1 + null.numel())
    if alternative == "greater":
        return greater
    if alternative == "less":
        return less
    return min(1.0, 2 * min(greater, less))


def tost(a, b, margin: float, alpha: float = 0.05) -> dict:
    """Two one-sided Welch t-tests (TOST) of equivalence of two independent samples' means.

    H0: |mean_a - mean_b| >= margin; rejecting it (p < alpha) supports |difference| < margin.
    p = max(p_lower, p_upper), p_lower testing difference <= -margin and p_upper difference >= margin,
    each with Welch's standard error and Satterthwaite's degrees of freedom. Returns a dict:
    "difference" (mean_a - mean_b), "margin", "p", "p_lower", "p_upper", "df", "interval" (the
    1 - 2 alpha confidence interval of the difference, the one that must lie inside +-margin),
    "equivalent" (p < alpha). When neither sample varies, Welch's t is undefined: p, p_lower,
    p_upper, df and interval are None and "equivalent" is None (no test, not a "no").
    """
    from scipy import stats as scipy_stats

    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin!r}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    samples = []
    for name, sample in (("a", a), ("b", b)):
        sample = torch.as_tensor(sample, dtype=torch.float64).reshape(-1)
        if sample.numel() < 2 or not bool(sample.isfinite().all()):
            raise ValueError(f"sample {name} needs at least 2 finite values, got {sample.tolist()}")
        samples.append(sample)
    a, b = samples
    difference = float(a.mean() - b.mean())
    var_a, var_b = float(a.var()) / a.numel(), float(b.var()) / b.numel()
    standard_error = (var_a + var_b) ** 0.5
    result = {"difference": difference, "margin": float(margin), "alpha": float(alpha)}
    if standard_error == 0:
        return {**result, "p": None, "p_lower": None, "p_upper": None, "df": None, "interval": None,
                "equivalent": None}
    df = (var_a + var_b) ** 2 / (var_a ** 2 / (a.numel() - 1) + var_b ** 2 / (b.numel() - 1))
    p_lower = float(scipy_stats.t.sf((difference + margin) / standard_error, df))
    p_upper = float(scipy_stats.t.cdf((difference - margin) / standard_error, df))
    half_width = float(scipy_stats.t.ppf(1 - alpha, df)) * standard_error
    p = max(p_lower, p_upper)
    return {**result, "p": p, "p_lower": p_lower, "p_upper": p_upper, "df": float(df),
            "interval": (difference - half_width, difference + half_width), "equivalent": p < alpha}
