"""The topographic term of the objective: response-based spatial loss on cortical sheets, or the
weight-based TopoLoss, per chosen layer.

The spatial loss runs on whole sheets, or, with ``neighbourhood`` > 0, on sampled neighbourhoods:
``tdann`` is TDANN's sampling (Margalit et al. 2024; github.com/neuroailab/TDANN,
``precompute_neighborhoods`` + ``collapse_and_trim_neighborhoods``, as its position script calls
them): a square window of ``neighbourhood_width_mm`` whose centre is drawn uniformly from the
positions' bounding box shrunk by half a width (so the window stays on the sheet), thinned at random
to a common size: TDANN's int(5th percentile of window sizes), at least 25 and at most the
``neighbourhood`` limit (TDANN: 500); windows with fewer units are skipped, as TDANN drops them.
TDANN draws 20,000 windows once and picks one per step; here each step draws a fresh window from the
same distribution. ``knearest``: the k units nearest a random unit (the earlier sampling of this
project). Both average the loss over ``neighbourhoods_per_step`` independent draws, as TDANN's
``neighborhoods_per_batch`` does.
"""
from __future__ import annotations

import zlib

import torch
from torch import nn

from topoaudio.checkpoint import sheets_for
from topoaudio.ops import spatial_loss
from topoaudio.ops.spatial_common import positions_on
from topoaudio.ops.tdann_windows import (  # the sampler, public in topoaudio.ops
    _sheet_windows,  # noqa: F401 (tests/test_tdann_window_cache.py reads it here)
    nearest_neighbourhood,
    tdann_neighbourhood,
    tdann_neighbourhood_size,
)
from topoaudio.sheet import CorticalSheet
from topoaudio.topoloss import TopoLoss, tau_schedule

from .config import TrainConfig

NEIGHBOURHOOD_KINDS = ("tdann", "knearest")


def _output_weights(module: nn.Module) -> nn.Module:
    """The conv/linear whose output channels are the tapped layer's units: the layer itself, or
    the last weighted module of a block (a ResNet stage ends with its last bottleneck's conv3)."""
    weighted = [m for m in module.modules() if getattr(m, "weight", None) is not None
                and m.weight.dim() >= 2]
    if not weighted:
        raise ValueError(f"{type(module).__name__} has no conv or linear weight for TopoLoss")
    return weighted[-1]


class TopographicLosses:
    """Call with the tapped features of a forward pass and the step: (total, {layer: value})."""

    def __init__(self, config: TrainConfig, model: nn.Module, device, clip_samples: int):
        self.config = config
        self.device = device
        self.sheets: dict[str, CorticalSheet] = {}
        self.topoloss = None
        self.neighbourhood_sizes: dict[str, int] = {}
        if config.topo == "none":
            self.layers: list[str] = []
            return
        self.layers = list(config.topo_layers)
        names = dict(model.named_modules())
        unknown = [layer for layer in self.layers if layer not in names]
        if unknown:
            raise ValueError(f"topo_layers {unknown} are not layers of {config.model}; its taps are "
                             f"{list(getattr(model, 'tap_names', []))}")
        if config.topo == "spatial":
            self.sheets = sheets_for(config.to_dict(), model, clip_samples)
            self.layers = list(self.sheets)
            self.neighbourhood_sizes = self._neighbourhood_sizes()
        else:
            weights = zip(self.layers, self._weights(), strict=True)
            taus = {layer: config.tau * weight for layer, weight in weights}
            # factor 0 in the config: phi on that axis
            self.topoloss = TopoLoss({layer: _output_weights(names[layer]) for layer in self.layers},
                                     tau=taus, phi=config.phi, factor_h=config.factor_h or None,
                                     factor_w=config.factor_w or None)
            self.layers = []  # TopoLoss reads weights, not activations

    def __call__(self, features: dict, step: int):
        config = self.config
        if config.topo == "topoloss":
            scale = tau_schedule(step, config.steps, kind=config.tau_schedule,
                                 warmup_steps=config.tau_warmup_steps)
            total, per_layer = self.topoloss()
            return scale * total, {name: scale * value for name, value in per_layer.items()}
        terms = {}
        total = torch.zeros((), device=self.device)
        if config.topo == "none":
            return total, terms
        for (layer, sheet), weight in zip(self.sheets.items(), self._weights(), strict=True):
            responses = sheet.responses(features[layer])
            # Checked on the responses, not the features: a NaN or inf in the features reaches their
            # mean over time, and the responses are what the op reads (the features are 24-49x
            # larger in the default run: checking them took ~2 % of its training step).
            if not bool(torch.isfinite(responses).all()):
                # A diverged forward: the op would refuse these responses (its own check stays, for
                # other callers). A NaN term instead lets the loop's all-reduced loss check stop
                # every rank at this step, naming this layer; raising here on one rank would leave
                # the others waiting in a collective.
                terms[layer] = torch.full((), float("nan"), device=self.device)
                total = total + terms[layer]
                continue
            positions = positions_on(sheet.positions, responses.device)
            if config.neighbourhood > 0:
                value = config.alpha * weight * self._sampled_loss(responses, positions, layer, step)
            else:
                value = config.alpha * weight * spatial_loss(responses, positions,
                                                             kind=config.spatial_kind)
            terms[layer] = value.detach()
            total = total + value
        return total, terms

    def _weights(self) -> list[float]:
        return list(self.config.layer_weights) or [1.0] * len(self.config.topo_layers)

    def _generator(self, layer: str, step: int | None) -> torch.Generator:
        """Draws are a function of (seed, step, layer), so a resumed run draws the same units."""
        # crc32, not hash(): str hashes are salted per process, which would break exact resume
        layer_code = zlib.crc32(layer.encode())
        step_code = -1 if step is None else step  # the sheet's one-off draws (TDANN's size)
        return torch.Generator().manual_seed(((self.config.seed * 1_000_003 + step_code) * 4099
                                              + layer_code) % 2 ** 63)

    def _neighbourhood_sizes(self) -> dict[str, int]:
        config = self.config
        if config.neighbourhood == 0 or config.neighbourhood_kind != "tdann":
            return {}
        sizes = {}
        for layer, sheet in self.sheets.items():
            try:
                sizes[layer] = tdann_neighbourhood_size(sheet.positions, config.neighbourhood_width_mm,
                                                        config.neighbourhood, self._generator(layer, None))
            except ValueError as error:
                raise ValueError(f"layer {layer!r} ({sheet.n_units} units): {error}") from None
        return sizes

    def _sampled_loss(self, responses, positions, layer, step) -> torch.Tensor:
        """Mean spatial loss over neighbourhoods_per_step neighbourhoods of the configured kind."""
        config = self.config
        generator = self._generator(layer, step)
        # draws read the sheet's own (CPU) positions: no device-to-host copy per step
        sheet_positions = self.sheets[layer].positions
        values = []
        for _ in range(config.neighbourhoods_per_step):
            if config.neighbourhood_kind == "tdann":
                index = tdann_neighbourhood(sheet_positions, config.neighbourhood_width_mm,
                                            self.neighbourhood_sizes[layer], generator)
            else:
                index = nearest_neighbourhood(sheet_positions.cpu(), config.neighbourhood, generator)
            index = index.to(responses.device)
            # a new positions tensor every draw: nothing cached on it would be used again, so no
            # lattice detection (the tiles, exact for any positions)
            values.append(spatial_loss(responses[:, index], positions[index], kind=config.spatial_kind,
                                       lattice=False))
        return torch.stack(values).mean() if len(values) > 1 else values[0]

    def state_dict(self) -> dict:
        return {layer: sheet.state_dict() for layer, sheet in self.sheets.items()}

    def load_state_dict(self, state: dict) -> None:
        for layer, sheet_state in state.items():
            self.sheets[layer] = CorticalSheet.from_state_dict(sheet_state)
