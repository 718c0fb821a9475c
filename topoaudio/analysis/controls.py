"""Controls every evaluation reports beside the trained model (docs/SCIENCE.md section 8).

- the untrained network: the same architecture initialised from the same seed, measured on the
  same sheets, so what the architecture and the sheet give for free is seen next to what training
  adds;
- shuffled positions: the trained model's own responses on its sheet with the units' positions
  permuted once by a fixed seed, so every map statistic can be read against a sheet on which the
  model's responses have no spatial arrangement;
- iso-frequency bands: on ``channel_freq`` sheets a unit's frequency row sets its y position by
  construction, so tonotopy is also measured within the bands (``topography.within_band``);
- the layout null: on ``channel_freq`` sheets channel c has one place in every (overlapping) row,
  so a channel's units neighbour each other across rows and any map in which channels differ
  (every network's, trained or not) has neighbours alike by construction. ``layout_null_test``
  asks instead whether the arrangement of the channels on the sheet matters: Moran's I against
  permutations of the channels' places, one permutation for every row, which keep what the
  layout builds in and remove only the arrangement.
"""
from __future__ import annotations

import torch

from topoaudio.analysis.topography import _nearest_neighbours
from topoaudio.brain.stats import permutation_p
from topoaudio.models import build_model, frontend_of
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
        model = build_model(config["model"], 1, **frontend_of(config))  # the run's front end
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


def layout_null_test(values, positions, n_channels: int, k: int = 8, n_permutations: int = 999,
                     seed: int = 0) -> dict:
    """Moran's I (k nearest units, w = 1) of a channel_freq map (values [F * C], unit f C + c)
    against ``n_permutations`` permutations of the channels: in each, channel c's values in every
    row move together to channel perm[c]'s units. A map whose structure comes from the sheet's
    layout (a channel's units share a place in every row) keeps it under these permutations, so only
    an arrangement of channels in which neighbouring channels are alike is significant.

    Silent (non-finite) units move with their channel, so the statistic is Moran's I over the pairs
    of the fixed knn graph whose two units both have a value (the same definition for the
    observed map and for every permutation). Returns {"morans_i", "null_mean", "null_sd", "z",
    "p" (two-sided), "n_permutations"}; NaN throughout for a constant map or a single channel."""
    values = torch.as_tensor(values).detach().to(torch.float64).reshape(-1).cpu()
    positions = torch.as_tensor(positions).detach().to(torch.float64).cpu()
    n_units = values.numel()
    if n_channels < 1 or n_units % n_channels:
        raise ValueError(f"{n_units} units are not rows of {n_channels} channels")
    nan = float("nan")
    result = {"n_permutations": int(n_permutations)}
    finite = values.isfinite()
    if (n_channels < 2 or int(finite.sum()) < 3
            or float(values[finite].max() - values[finite].min()) == 0):
        return {**result, "morans_i": nan, "null_mean": nan, "null_sd": nan, "z": nan, "p": nan}
    neighbours = _nearest_neighbours(positions, min(k, n_units - 1))            # [N, k]

    def moran_of(maps: torch.Tensor) -> torch.Tensor:
        """Masked I of maps [S, N] (NaN: no value) on the fixed knn graph."""
        present = maps.isfinite()
        count = present.sum(dim=1, keepdim=True)
        filled = torch.where(present, maps, 0.0)
        centred = torch.where(present, filled - filled.sum(dim=1, keepdim=True) / count, 0.0)
        pair = present[:, :, None] & present[:, neighbours]                       # [S, N, k]
        cross = (centred[:, :, None] * centred[:, neighbours] * pair).sum(dim=(1, 2))
        return count[:, 0] / pair.sum(dim=(1, 2)) * cross / centred.square().sum(dim=1)

    rows = values.reshape(-1, n_channels)                                         # [F, C]
    generator = torch.Generator().manual_seed(seed)
    observed = float(moran_of(values[None, :])[0])
    chunk = max(1, 2_000_000 // (n_units * neighbours.shape[1]))
    null = torch.cat([
        moran_of(torch.stack([rows[:, torch.randperm(n_channels, generator=generator)].reshape(-1)
                              for _ in range(min(chunk, n_permutations - done))]))
        for done in range(0, n_permutations, chunk)])
    null = null[null.isfinite()]
    null_sd = float(null.std()) if null.numel() > 1 else nan
    return {**result, "morans_i": observed, "null_mean": float(null.mean()), "null_sd": null_sd,
            "z": (observed - float(null.mean())) / null_sd if null_sd > 0 else nan,
            "p": permutation_p(observed, null)}
