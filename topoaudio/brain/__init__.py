"""Brain predictivity of model features (SCIENCE.md section 7): cross-validated ridge with efficient
leave-one-out alpha, noise-corrected voxel R^2, component R^2, RSA, and loaders for the NH2015 data."""
from .io import load_components, load_voxels
from .predictivity import predict_components, split_indices
from .ridge import RidgeFit, default_alphas, fit_ridge_loo, ridge_loo
from .rsa import dissimilarity_matrix, rsa
from .stats import corrected_r2, pearson, reliability, repetition_pair_correlations, spearman_brown
from .voxels import best_layer, voxel_predictivity

__all__ = [
    "RidgeFit", "best_layer", "corrected_r2", "default_alphas", "dissimilarity_matrix", "fit_ridge_loo",
    "load_components", "load_voxels", "pearson", "predict_components", "reliability",
    "repetition_pair_correlations", "ridge_loo", "rsa", "spearman_brown", "split_indices",
    "voxel_predictivity",
]
