"""The topographic term of the objective: response-based spatial loss on cortical sheets, or the
weight-based TopoLoss, per chosen layer."""
from __future__ import annotations

import zlib

import torch
from torch import nn

from topoaudio.checkpoint import sheets_for
from topoaudio.ops import spatial_loss
from topoaudio.sheet import CorticalSheet
from topoaudio.topoloss import TopoLoss, tau_schedule

from .config import TrainConfig


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
        else:
            weights = zip(self.layers, self._weights(), strict=True)
            taus = {layer: config.tau * weight for layer, weight in weights}
            self.topoloss = TopoLoss({layer: _output_weights(names[layer]) for layer in self.layers},
                                     tau=taus, phi=config.phi)
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
            if not bool(torch.isfinite(features[layer]).all()):
                # A diverged forward: the op would refuse these features (its own check stays, for
                # other callers). A NaN term instead lets the loop's all-reduced loss check stop
                # every rank at this step, naming this layer; raising here on one rank would leave
                # the others waiting in a collective.
                terms[layer] = torch.full((), float("nan"), device=self.device)
                total = total + terms[layer]
                continue
            responses = sheet.responses(features[layer])
            positions = sheet.positions.to(responses.device)
            if config.neighbourhood > 0:
                responses, positions = self._neighbourhood(responses, positions, layer, step)
            value = config.alpha * weight * spatial_loss(responses, positions, kind=config.spatial_kind)
            terms[layer] = value.detach()
            total = total + value
        return total, terms

    def _weights(self) -> list[float]:
        return list(self.config.layer_weights) or [1.0] * len(self.config.topo_layers)

    def _neighbourhood(self, responses, positions, layer, step):
        """TDANN's sampling: the k units nearest a random unit, drawn from (seed, step, layer)."""
        # crc32, not hash(): str hashes are salted per process, which would break exact resume
        layer_code = zlib.crc32(layer.encode())
        generator = torch.Generator().manual_seed((self.config.seed * 1_000_003 + step) * 4099 + layer_code)
        centre = positions[int(torch.randint(len(positions), (1,), generator=generator))]
        k = min(self.config.neighbourhood, len(positions))
        nearest = torch.topk((positions - centre).norm(dim=1), k, largest=False).indices
        return responses[:, nearest], positions[nearest]

    def state_dict(self) -> dict:
        return {layer: sheet.state_dict() for layer, sheet in self.sheets.items()}

    def load_state_dict(self, state: dict) -> None:
        for layer, sheet_state in state.items():
            self.sheets[layer] = CorticalSheet.from_state_dict(sheet_state)
