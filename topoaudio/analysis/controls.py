"""Controls every evaluation reports beside the trained model (docs/SCIENCE.md section 8).

- the untrained network: the same architecture initialised from the same seed, measured on the
  same sheets, so what the architecture and the sheet give for free is seen next to what training
  adds;
- shuffled positions: the trained model's own responses on its sheet with the units' positions
  permuted once by a fixed seed, so every map statistic can be read against a sheet on which the
  model's responses have no spatial arrangement;
- iso-frequency bands: on ``channel_freq`` sheets a unit's frequency row sets its y position by
  construction, so tonotopy is also measured within the bands (``topography.within_band``).
"""
from __future__ import annotations

import torch

from topoaudio.models import build_model
from topoaudio.sheet import CorticalSheet

# Any fixed number would do; fixed so that every evaluation shuffles a sheet the same way.
POSITION_SHUFFLE_SEED = 12_345


def untrained_twin(config: dict) -> torch.nn.Module:
    """The network a training run with this config started from, in eval mode.

    Training seeds torch with config["seed"] immediately before ``build_model`` (training/loop.py),
    so the same two calls rebuild its initial weights; the global RNG is left as it was. The head
    is built with one class: it is created after every tapped layer, so its size does not change
    their initialisation, and analysis never reads it (tests/test_analysis_controls.py checks the
    weights against a run trained with a vanishing learning rate). In eval mode its batch norms
    use their initial running statistics (mean 0, variance 1), as the run did before its first step.
    """
    for key in ("model", "seed"):
        if key not in config:
            raise ValueError(f"cannot rebuild the untrained network: the config has no {key!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config["seed"])
        model = build_model(config["model"], 1)
    return model.eval()


def shuffled_positions(positions: torch.Tensor, seed: int = POSITION_SHUFFLE_SEED) -> torch.Tensor:
    """positions [N, 2] with rows permuted by a fixed-seed permutation: unit i moves to where unit
    perm[i] sat, so a map keeps its values and its histogram but loses its arrangement."""
    generator = torch.Generator().manual_seed(seed)
    return positions[torch.randperm(positions.shape[0], generator=generator)]


def frequency_bands(sheet: CorticalSheet) -> torch.Tensor | None:
    """[N] frequency-row index of each unit of a ``channel_freq`` sheet (unit f C + c sits in row f),
    or None for a ``channels`` sheet, whose layout builds in no frequency axis."""
    if sheet.kind != "channel_freq":
        return None
    return torch.arange(sheet.n_units) // sheet.n_channels
