"""The baseline a user runs today for a topographic term: TDANN's sampled spatial loss.

docs/SCIENCE.md section 3: TDANN evaluates the spatial-correlation loss on one random neighbourhood
of at most 500 units per layer per step, building the 500 x 500 correlation, distance and
similarity matrices in plain PyTorch. Here the neighbourhood is TDANN's own: a 4 mm square window
whose centre stays off the sheet's edges, thinned at random to the sheet's common size (the 5th
percentile of window counts, at most 500), as `topoaudio.training.topography` implements it
(docs/LOSS_FIDELITY.md); the loss on it is `topoaudio.ops.reference.spatial_loss`, our plain
definition that builds those N x N matrices (with our zero-variance rule where TDANN's gradient is
NaN). The fused op on the same units is the `fused` option, for the cost of sampling alone.
"""
from __future__ import annotations

import torch

import topoaudio.ops as ops
from topoaudio.training import topography

NEIGHBOURHOOD = 500
WINDOW_MM = 4.0
_SIZES: dict = {}


def neighbourhood(positions: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of one TDANN neighbourhood of at most k units (the sheet's common size, found once
    per positions tensor and k)."""
    key = (id(positions), positions.data_ptr(), k)
    if key not in _SIZES:
        _SIZES[key] = topography.tdann_neighbourhood_size(positions, WINDOW_MM, k, generator)
    return topography.tdann_neighbourhood(positions, WINDOW_MM, _SIZES[key], generator)


class SampledSpatialTerm:
    """sum over layers of alpha x SL(one TDANN neighbourhood of <= k units), one draw per layer per call.
    `sheets` maps layer -> CorticalSheet (the same sheets the whole-sheet term uses)."""

    def __init__(self, sheets: dict, alpha: float, *, k: int = NEIGHBOURHOOD, kind: str = "relative",
                 fused: bool = False, seed: int = 0):
        self.sheets, self.alpha, self.k, self.kind, self.fused = sheets, alpha, k, kind, fused
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, features: dict) -> torch.Tensor:
        total = torch.zeros(())
        for layer, sheet in self.sheets.items():
            responses = sheet.responses(features[layer])
            positions = sheet.positions.to(responses.device)
            index = neighbourhood(sheet.positions.cpu(), self.k, self.generator).to(responses.device)
            responses, positions = responses[:, index], positions[index]
            if self.fused:
                value = ops.spatial_loss(responses, positions, kind=self.kind)
            else:
                value = ops.reference.spatial_loss(responses, positions, kind=self.kind)
            total = total.to(value.device) + self.alpha * value
        return total
