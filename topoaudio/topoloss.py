"""TopoLoss (TopoNets, Deb et al. ICLR 2025; docs/SCIENCE.md section 4): a weight-based
topographic loss. Output channels sit on the grid_shape(C_out) grid; the loss asks each channel's
weight vector to point the same way as a blurred copy of the weight sheet. Cost O(#weights), no
activations needed.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from .sheet import grid_shape

SCHEDULE_KINDS = ("constant", "linear", "cosine")
INTERPOLATIONS = ("bilinear", "nearest")


def topoloss_layer(weight: torch.Tensor, phi: float = 2.0, *, factor_h: float | None = None,
                   factor_w: float | None = None, interpolation: str = "bilinear") -> torch.Tensor:
    """L = 1 - mean over grid cells of cos(W_cell, B(W)_cell); a 0-dim tensor. TopoNets' loss
    (toponets/topoloss, ``laplacian_pyramid_loss``), value and gradient as its own code computes them
    (tests/test_topoloss_toponets.py, against numbers its code produced).

    weight: [C_out, C_in, kh, kw], [C_out, C_in, k] or [out, in], reshaped to [C_out, E] and laid
    on the h x w grid (channel c at row c // w, column c % w). B(.) is TopoNets' blur: a
    downsample by ``F.interpolate(scale_factor=(1 / factor_h, 1 / factor_w))`` -- floor(h / factor_h)
    x floor(w / factor_w) cells, source coordinates mapped with the factor itself, not with the ratio
    of the sizes -- then an upsample back to h x w. ``phi`` sets both factors; ``factor_h`` /
    ``factor_w`` override it per axis. interpolation: "bilinear" (TopoNets' default) or "nearest".
    float16/bfloat16 weights are computed in float32 (bilinear interpolation of half tensors is not
    supported everywhere).

    Example: ``topoloss_layer(torch.randn(1024, 8), phi=3.0)`` blurs the 32 x 32 grid through 10 x 10.
    """
    rows, height, width = _weight_rows(weight, "weight")
    factor_h, factor_w = blur_factors(height, width, phi, factor_h, factor_w)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    # F.interpolate refuses align_corners for "nearest"; for "bilinear" None means False
    corners = {"align_corners": False} if interpolation == "bilinear" else {}
    image = rows.reshape(height, width, -1).permute(2, 0, 1).unsqueeze(0)
    # recompute_scale_factor=False: the kernel maps coordinates by the given factor, as TopoNets'
    # call (which leaves it at None, the same path) does; True would map by the ratio of sizes
    coarse = F.interpolate(image, scale_factor=(1 / factor_h, 1 / factor_w), mode=interpolation,
                           recompute_scale_factor=False, **corners)
    blurred = F.interpolate(coarse, size=(height, width), mode=interpolation, **corners)
    # cells as rows [h * w, E], the layout TopoNets takes the cosine in (same reduction order)
    blurred_rows = blurred[0].permute(1, 2, 0).reshape(height * width, -1)
    return 1 - F.cosine_similarity(rows, blurred_rows, dim=-1).mean()


def blur_factors(height: int, width: int, phi: float = 2.0, factor_h: float | None = None,
                 factor_w: float | None = None) -> tuple[float, float]:
    """(factor_h, factor_w) for an h x w grid: each given factor, else phi; ValueError when a factor
    is not a finite number >= 1 or leaves no cell along its axis (floor(size * (1 / factor)) = 0,
    TopoNets' `factor <= size` in the arithmetic F.interpolate uses)."""
    factors = []
    for axis, size, factor in (("factor_h", height, factor_h), ("factor_w", width, factor_w)):
        name = axis if factor is not None else "phi"
        factor = phi if factor is None else factor
        if isinstance(factor, bool) or not (isinstance(factor, numbers.Real) and math.isfinite(factor)
                                            and factor >= 1):
            raise ValueError(f"{name} (the blur's downsampling factor) must be a finite number >= 1, "
                             f"got {factor!r}")
        if int(size * (1 / float(factor))) < 1:
            raise ValueError(f"{name}={factor} leaves no cell of the grid's {size} "
                             f"{'rows' if axis == 'factor_h' else 'columns'} (TopoNets needs "
                             f"{name} <= {size}); the {height} x {width} grid has {height * width} "
                             "channels")
        factors.append(float(factor))
    return factors[0], factors[1]


def weight_roughness(weight: torch.Tensor) -> float:
    """Mean over grid-neighbour pairs (right and down) of |u_i - u_j|^2, u = unit-norm weight vectors.

    In [0, 4]: 0 for a sheet of parallel vectors, about 2 for random ones; lower = smoother.
    weight: [C_out, ...] with C_out >= 2.
    """
    with torch.no_grad():
        sheet = _weight_sheet(weight, "weight")[0]
        if sheet.shape[1] * sheet.shape[2] < 2:
            raise ValueError("weight_roughness needs at least 2 output channels to have neighbours")
        # Zero vectors stay zero rather than becoming NaN.
        unit = F.normalize(sheet, dim=0)
        right = (unit[:, :, 1:] - unit[:, :, :-1]).pow(2).sum(dim=0).flatten()
        down = (unit[:, 1:, :] - unit[:, :-1, :]).pow(2).sum(dim=0).flatten()
        return torch.cat([right, down]).mean().item()


def tau_schedule(step: int, total_steps: int, *, kind: str = "constant", warmup_steps: int = 0,
                 decay: bool = False) -> float:
    """Multiplier in [0, 1] for the TopoLoss weight tau at ``step`` (0-based).

    Before ``warmup_steps``: a ramp from 0 to 1 (linear: step / warmup; cosine: half-cosine;
    constant: 0, i.e. the loss switches on at warmup_steps). Afterwards 1, or with ``decay`` a
    linear/cosine fall from 1 at warmup_steps to 0 at total_steps. Steps past total_steps keep the
    final value, so a loop that overruns by one step does not fail.
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
    total_steps = _check_int("total_steps", total_steps, minimum=1)
    warmup_steps = _check_int("warmup_steps", warmup_steps, minimum=0)
    step = _check_int("step", step, minimum=0)
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must not exceed total_steps ({total_steps})")
    if decay and kind == "constant":
        raise ValueError("decay=True needs kind 'linear' or 'cosine' to say how to decay")
    if step < warmup_steps:
        progress = step / warmup_steps
        return {"constant": 0.0, "linear": progress,
                "cosine": (1 - math.cos(math.pi * progress)) / 2}[kind]
    if not decay:
        return 1.0
    decay_steps = total_steps - warmup_steps
    progress = 1.0 if decay_steps == 0 else min(1.0, (step - warmup_steps) / decay_steps)
    return 1 - progress if kind == "linear" else (1 + math.cos(math.pi * progress)) / 2


# The default weight of every layer: 25, the project's training default (TrainConfig.tau) and
# one of the four values TopoAudio trained with (tau in {5, 25, 50, 100}; docs/SCIENCE.md
# section 4). TopoNets sweeps its own weight widely per model; no single value is "the" paper's.
DEFAULT_TAU = 25.0


class TopoLoss(nn.Module):
    """(1 / n_layers) sum_l tau_l L_l over named layers (SCIENCE.md section 4).

    layers: a dict name -> module with a 2D+ ``.weight`` (Conv1d/2d/3d, Linear) or a 2D+
    Parameter, or a list / tuple of them (named "0", "1", ... in order; the same total as the
    dict). The modules are referenced, not registered, so this loss adds no parameters or state of
    its own to a model that holds it. tau: one float for all layers (default ``DEFAULT_TAU``, 25),
    a dict with one float per layer, or for a list of layers a list of floats in its order.
    schedule: optional ``step -> multiplier`` (e.g. a functools.partial of ``tau_schedule``)
    applied to every tau when ``forward`` gets a step; without a step, full strength.
    phi, factor_h, factor_w, interpolation: the blur, as in ``topoloss_layer`` (checked against
    every layer's grid here, before any step). ``TopoLoss.from_layers(model, ["conv1", ...])``
    attaches it to a model by layer name.

    Example::

        >>> import torch
        >>> from topoaudio.topoloss import TopoLoss
        >>> convs = [torch.nn.Conv2d(1, 16, 3), torch.nn.Conv2d(16, 32, 3)]
        >>> total, per_layer = TopoLoss(convs)()       # tau 25 on each layer
        >>> sorted(per_layer)
        ['0', '1']
    """

    def __init__(self, layers, tau: float | dict[str, float] = DEFAULT_TAU,
                 phi: float = 2.0, *, factor_h: float | None = None, factor_w: float | None = None,
                 interpolation: str = "bilinear", schedule=None):
        super().__init__()
        if isinstance(layers, (list, tuple)):
            names = [str(i) for i in range(len(layers))]
            if isinstance(tau, (list, tuple)):
                if len(tau) != len(layers):
                    raise ValueError(f"tau lists {len(tau)} values for {len(layers)} layers")
                tau = dict(zip(names, tau, strict=True))
            layers = dict(zip(names, layers, strict=True))
        elif isinstance(tau, (list, tuple)):
            raise ValueError("a list of taus needs a list of layers; with a dict of layers give "
                             "tau as a dict name -> tau")
        if not isinstance(layers, dict) or not layers:
            raise ValueError("layers must be a non-empty dict of name -> module or parameter, or a "
                             f"non-empty list of modules, got {type(layers).__name__}")
        for name, layer in layers.items():
            if isinstance(layer, _UNSUPPORTED):
                raise ValueError(f"TopoLoss layer {name!r} ({type(layer).__name__}) is not supported: "
                                 "its weight rows are not its output units; name a Conv or Linear")
            _, height, width = _weight_rows(_weight_of(name, layer), name)
            try:
                blur_factors(height, width, phi, factor_h, factor_w)
            except ValueError as error:
                raise ValueError(f"TopoLoss layer {name!r}: {error}") from None
        self.tau = _taus(tau, list(layers))
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        if schedule is not None and not callable(schedule):
            raise ValueError(f"schedule must be callable step -> multiplier, got {schedule!r}")
        self.phi = float(phi)
        self.factor_h = None if factor_h is None else float(factor_h)
        self.factor_w = None if factor_w is None else float(factor_w)
        self.interpolation = interpolation
        self.schedule = schedule
        # A plain dict: nn.Module would otherwise register the model's layers as our submodules.
        self._layers = dict(layers)

    @classmethod
    def from_layers(cls, model: nn.Module, layers, tau: float | dict[str, float] = DEFAULT_TAU,
                    phi: float = 2.0, **kwargs) -> TopoLoss:
        """TopoLoss on the named layers of `model` (names as in ``model.named_modules()``, e.g.
        "conv1", "blocks.2"; one name or a list), as TopoNets' ``LaplacianPyramid.from_layer``.

        A named conv or linear is used as is; a block (e.g. an nn.Sequential or a ResNet stage)
        contributes its last module with a 2D+ weight, whose output channels are the block's units
        (``output_weight_module``). ValueError naming the layer for a name the model lacks or a
        layer with no usable weight. Keyword arguments go to ``TopoLoss``.

        Example::

            >>> import torch
            >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), torch.nn.ReLU(),
            ...                             torch.nn.Conv2d(16, 32, 3))
            >>> loss = TopoLoss.from_layers(model, ["0", "2"], tau=5.0)
            >>> total, per_layer = loss()
            >>> total.backward()                          # gradients reach model[0], model[2]
        """
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names or not all(isinstance(name, str) for name in names):
            raise ValueError(f"layers must be a layer name or a non-empty list of names, got {layers!r}")
        modules = dict(model.named_modules())
        chosen = {}
        for name in names:
            if name not in modules:
                raise ValueError(f"model ({type(model).__name__}) has no layer {name!r}; its layers "
                                 f"are {_layer_list(modules)}")
            chosen[name] = output_weight_module(modules[name], name)
        return cls(chosen, tau, phi, **kwargs)

    def forward(self, step: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """(total, per_layer): total a 0-dim tensor for backward; per_layer the raw L_l as floats."""
        multiplier = 1.0 if step is None or self.schedule is None else float(self.schedule(step))
        total = 0.0
        per_layer = {}
        for name, layer in self._layers.items():
            loss = topoloss_layer(_weight_of(name, layer), self.phi, factor_h=self.factor_h,
                                  factor_w=self.factor_w, interpolation=self.interpolation)
            per_layer[name] = loss.detach().item()
            total = total + self.tau[name] * loss
        return total * (multiplier / len(self._layers)), per_layer

    def extra_repr(self) -> str:
        factors = "" if self.factor_h is None and self.factor_w is None else \
            f", factor_h={self.factor_h}, factor_w={self.factor_w}"
        layers = {name: _describe(layer) for name, layer in self._layers.items()}
        schedule = "" if self.schedule is None else f", schedule={self.schedule!r}"
        return (f"layers={layers}, tau={self.tau}, phi={self.phi}{factors}, "
                f"interpolation={self.interpolation!r}{schedule}")


# Modules whose 2D+ weight does not hold one row per output unit: a transposed conv stores
# [C_in, C_out, ...], an embedding one row per token.
_UNSUPPORTED = (nn.modules.conv._ConvTransposeNd, nn.Embedding, nn.EmbeddingBag)


def output_weight_module(module: nn.Module, name: str = "layer") -> nn.Module:
    """The module whose ``weight`` [C_out, ...] holds the units of layer `name`: the module itself
    when it has a 2D+ weight, else its last submodule with one (a block's last conv or linear, as
    training taps a ResNet stage). ValueError naming the layer and its type when there is none, or
    when it is a kind whose weight rows are not output units (transposed convs, embeddings)."""
    own = getattr(module, "weight", None)
    candidates = [module] if isinstance(own, torch.Tensor) and own.dim() >= 2 else [
        m for m in module.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)
        and m.weight.dim() >= 2]
    if not candidates:
        raise ValueError(f"TopoLoss layer {name!r} ({type(module).__name__}) has no conv or linear "
                         "weight [C_out, C_in, ...] in it")
    chosen = candidates[-1]
    if isinstance(chosen, _UNSUPPORTED):
        raise ValueError(f"TopoLoss layer {name!r} ({type(chosen).__name__}) is not supported: its "
                         "weight rows are not its output units; name a Conv or Linear layer")
    return chosen


def _layer_list(modules: dict, limit: int = 12) -> str:
    names = [name for name in modules if name]
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "") if names else "none"


def _describe(layer) -> str:
    weight = layer if isinstance(layer, torch.Tensor) else getattr(layer, "weight", None)
    shape = "x".join(str(size) for size in weight.shape) if isinstance(weight, torch.Tensor) else "?"
    kind = "Parameter" if isinstance(layer, torch.Tensor) else type(layer).__name__
    return f"{kind}[{shape}]"


def _weight_rows(weight, name: str) -> tuple[torch.Tensor, int, int]:
    """weight [C_out, ...] -> (rows [C_out, E], h, w): row c is the grid cell (c // w, c % w)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{name} must be a tensor [C_out, C_in, ...] with 2+ dims, got {got}")
    if not weight.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {weight.dtype}")
    if weight.dtype in (torch.float16, torch.bfloat16):
        weight = weight.float()
    height, width = grid_shape(weight.shape[0])
    return weight.reshape(weight.shape[0], -1), height, width


def _weight_sheet(weight, name: str) -> torch.Tensor:
    """weight [C_out, ...] -> image [1, E, h, w] on the grid_shape(C_out) grid, row-major."""
    rows, height, width = _weight_rows(weight, name)
    return rows.reshape(height, width, -1).permute(2, 0, 1).unsqueeze(0)


def _weight_of(name: str, layer) -> torch.Tensor:
    weight = layer if isinstance(layer, torch.Tensor) else getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        got = f"shape {tuple(weight.shape)}" if isinstance(weight, torch.Tensor) else "no weight tensor"
        raise ValueError(f"TopoLoss layer {name!r} ({type(layer).__name__}) needs a 2D+ weight "
                         f"[C_out, C_in, ...], got {got}")
    return weight


def _taus(tau, names: list[str]) -> dict[str, float]:
    taus = dict(tau) if isinstance(tau, dict) else {name: tau for name in names}
    if set(taus) != set(names):
        raise ValueError(f"tau must name exactly the layers {sorted(names)}, got {sorted(taus)}")
    for name, value in taus.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 <= value < math.inf):
            raise ValueError(f"tau for layer {name!r} must be a finite number >= 0, got {value!r}")
    return {name: float(taus[name]) for name in names}


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)
