"""Ridge regression with the penalty chosen per target by efficient leave-one-out (SCIENCE.md section 7).

The fit follows Tuckute et al. 2023: X and Y are centred with their train means and the penalty alpha
is picked, separately for every target, as the grid value with the lowest leave-one-out (LOO) mean
squared error on the train sounds. Everything comes from one thin SVD of the centred train X,
Xc = U diag(s) V^T, so all targets and all alphas are scored with a few batched matrix products.

Centring is handled exactly, not approximated. Ridge on centred data with a free intercept is the
linear smoother  yhat = 1 ybar + Xc w,  whose hat matrix is  H = 11^T / n + U diag(s^2 / (s^2 + alpha)) U^T
(the ones vector is orthogonal to the columns of U because every column of Xc sums to zero). The
penalty is a fixed quadratic form that never touches the intercept, so the usual identity
e_i = (y_i - yhat_i) / (1 - H_ii) gives the residual of a refit without sound i *including*
re-centring on the remaining n - 1 sounds. The 1/n term is what accounts for the centring; tests check
this against an explicit loop of n refits.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# 10**k for k = -8..8, relative to the data's own scale (see default_alphas)
ALPHA_EXPONENTS = torch.arange(-8, 9)


@dataclass
class RidgeFit:
    """A fitted multi-target ridge model stored in the SVD basis of the centred train features.

    weights = basis @ coef is [n_features, n_targets]; keeping the factors instead lets prediction for
    tens of thousands of targets cost [n_test, rank] @ [rank, n_targets] rather than touching
    [n_features, n_targets] weights.
    """

    x_mean: torch.Tensor  # [n_features] train mean of X
    y_mean: torch.Tensor  # [n_targets] train mean of Y
    basis: torch.Tensor  # [n_features, rank] right singular vectors V of the centred train X
    coef: torch.Tensor  # [rank, n_targets] weights expressed in that basis
    alphas: torch.Tensor  # [n_alphas] the grid that was searched
    best_alpha: torch.Tensor  # [n_targets] the grid value chosen for each target
    loo_mse: torch.Tensor  # [n_alphas, n_targets] LOO mean squared error of every grid value

    @property
    def weights(self) -> torch.Tensor:
        """[n_features, n_targets]"""
        return self.basis @ self.coef

    @property
    def intercept(self) -> torch.Tensor:
        """[n_targets]: prediction = X @ weights + intercept."""
        return self.y_mean - (self.x_mean @ self.basis) @ self.coef

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        """X [n_sounds, n_features] -> [n_sounds, n_targets]."""
        X = X.to(self.basis.dtype)
        return ((X - self.x_mean) @ self.basis) @ self.coef + self.y_mean


def default_alphas(singular_values: torch.Tensor) -> torch.Tensor:
    """The default grid: 10**k, k = -8..8, times the mean squared non-zero singular value of the
    centred train X (its total variance times n / rank). Scaling makes the grid invariant to the units
    of the features, so k = 0 is a penalty of the size of a typical eigenvalue of Xc^T Xc.

    singular_values [rank] -> alphas [17]
    """
    scale = singular_values.square().mean() if singular_values.numel() else singular_values.new_ones(())
    if scale <= 0:
        scale = singular_values.new_ones(())
    return scale * (10.0 ** ALPHA_EXPONENTS.to(singular_values))


def _centred_svd(X: torch.Tensor):
    """Thin SVD of X centred by its column means, dropping numerically zero singular values.

    X [n_sounds, n_features] -> x_mean [n_features], U [n_sounds, rank], s [rank], V [n_features, rank]
    """
    x_mean = X.mean(0)
    U, s, Vh = torch.linalg.svd(X - x_mean, full_matrices=False)
    # centring removes one dimension, so s[-1] is ~1e-15 * s[0]; keeping it would add a column of U
    # that is rounding noise and can even point along the ones vector.
    tol = s[:1].clamp_min(0) * max(X.shape) * torch.finfo(X.dtype).eps
    rank = int((s > tol).sum()) if s.numel() else 0
    return x_mean, U[:, :rank], s[:rank], Vh[:rank].T


def _loo_mse(U: torch.Tensor, s: torch.Tensor, Yc: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """LOO mean squared error of every alpha for every target.

    U [n, rank], s [rank], Yc [n, n_targets] (centred), alphas [n_alphas] -> [n_alphas, n_targets]

    The LOO residuals of alpha are  M_alpha @ Yc  with the [n, n] matrix
    M_alpha = diag(1 / (1 - H_ii)) (I - H + 11^T / n)  (on centred Yc the 11^T / n part of H drops out).
    Stacking the n_alphas matrices makes the whole search one [n_alphas * n, n] @ [n, n_targets] product.
    """
    n = U.shape[0]
    shrink = alphas[:, None] / (s.square() + alphas[:, None])  # [n_alphas, rank] = 1 - filter factor
    # I - U diag(1 - shrink) U^T is formed as (I - U U^T) + U diag(shrink) U^T: for tiny alphas with
    # rank = n - 1 both parts are computed without subtracting nearly equal numbers.
    outside = torch.eye(n, dtype=U.dtype, device=U.device) - U @ U.T  # [n, n]
    residual_maker = outside + (U * shrink[:, None, :]) @ U.T  # [n_alphas, n, n]
    # 1 - H_ii = (1 - 1/n - sum_k U_ik^2) + sum_k U_ik^2 shrink_k, split the same way
    U2 = U.square()
    one_minus_h = ((1.0 - 1.0 / n) - U2.sum(1)).clamp_min(0) + shrink @ U2.T  # [n_alphas, n]
    loo_maker = residual_maker / one_minus_h[:, :, None]
    loo_residuals = (loo_maker.reshape(-1, n) @ Yc).reshape(len(alphas), n, -1)  # [n_alphas, n, n_targets]
    return loo_residuals.square_().mean(1)


def fit_ridge_loo(X_train, Y_train, alphas=None, dtype: torch.dtype = torch.float64) -> RidgeFit:
    """Ridge regression of every column of Y_train on X_train, alpha picked per column by efficient LOO.

    X_train [n_sounds, n_features]; Y_train [n_sounds, n_targets] (or [n_sounds], treated as one
    target); alphas: absolute penalties [n_alphas], all > 0, or None for default_alphas of this X.
    Ties in the LOO error go to the smallest alpha. Computes in `dtype` (float64 by default).
    """
    X = torch.as_tensor(X_train).to(dtype)
    Y = torch.as_tensor(Y_train).to(device=X.device, dtype=dtype)
    if Y.dim() == 1:
        Y = Y[:, None]
    if X.dim() != 2 or Y.dim() != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"expected X [n_sounds, n_features] and Y [n_sounds, n_targets] with the same "
                         f"n_sounds, got {tuple(X.shape)} and {tuple(Y.shape)}")
    if X.shape[0] < 3:
        raise ValueError(f"leave-one-out needs at least 3 train sounds, got {X.shape[0]}")
    x_mean, U, s, V = _centred_svd(X)
    if alphas is None:
        alphas = default_alphas(s)
    alphas = torch.as_tensor(alphas).to(device=X.device, dtype=dtype).reshape(-1)
    if alphas.numel() == 0 or not bool((alphas > 0).all()):
        raise ValueError("alphas must be a non-empty set of positive penalties")
    y_mean = Y.mean(0)
    Yc = Y - y_mean
    loo_mse = _loo_mse(U, s, Yc, alphas)
    best = torch.nan_to_num(loo_mse, nan=torch.inf).argmin(0)  # [n_targets]
    best_alpha = alphas[best]
    # w = V diag(s / (s^2 + alpha_t)) U^T y_t for each target t, broadcast over targets
    coef = (s[:, None] / (s.square()[:, None] + best_alpha[None, :])) * (U.T @ Yc)
    return RidgeFit(x_mean, y_mean, V, coef, alphas, best_alpha, loo_mse)


def ridge_loo(X_train, Y_train, alphas=None, dtype: torch.dtype = torch.float64):
    """Ridge with per-target alpha by efficient LOO (see fit_ridge_loo).

    X_train [n_sounds, n_features], Y_train [n_sounds, n_targets] ->
    (weights [n_features, n_targets], best_alpha [n_targets], intercept [n_targets]);
    predictions are X @ weights + intercept.
    """
    fit = fit_ridge_loo(X_train, Y_train, alphas, dtype)
    return fit.weights, fit.best_alpha, fit.intercept
