"""The baseline a user runs today for a topographic term: TDANN's sampled spatial loss.

docs/SCIENCE.md section 3: TDANN evaluates the spatial-correlation loss on one random neighbourhood
of at most 500 units per layer per step, building the 500 x 500 correlation, distance and
similarity matrices in plain PyTorch. Here the neighbourhood is the k units nearest a random unit
of the sheet, and the loss on it is `topoaudio.ops.reference.spatial_loss`, our plain definition
that builds those N x N matrices (with our zero-variance rule where TDANN's gradient is NaN). The
fused op on the same units is the `fused` option, for the cost of sampling alone.
"""
from __future__ import annotations

import torch

import topoaudio.ops as ops

NEIGHBOURHOOD = 500


def neighbourhood(positions: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of the k units nearest a unit drawn at random (all units when there are fewer)."""
    centre = positions[int(torch.randint(len(positions), (1,), generator=generator))]
    k = min(k, len(positions))
    return torch.topk((positions - centre).norm(dim=1), k, largest=False).indices


class SampledSpatialTerm:
    """sum over layers of alpha x SL(one random k-unit neighbourhood), one draw per layer per call.
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
            index = neighbourhood(positions.cpu(), self.k, self.generator).to(responses.device)
            responses, positions = responses[:, index], positions[index]
            if self.fused:
                value = ops.spatial_loss(responses, positions, kind=self.kind)
            else:
                value = ops.reference.spatial_loss(responses, positions, kind=self.kind)
            total = total.to(value.device) + self.alpha * value
        return total
