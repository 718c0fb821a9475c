"""Measure a model you built: the same maps, nulls, controls, brain scores and report as for
topoaudio's own checkpoints (evaluation.measure_subjects), for any nn.Module.

    from topoaudio.analysis import measure_model

    result = measure_model(net, {"conv2": "conv", "encoder.3": "tokens", "head.0": "vector"},
                           natsound165="natsound165/", out="eval/", sample_rate=16000)

What the model is given: ``input="waveform"`` (default): waveforms [B, T] at ``sample_rate`` Hz (the
probe sounds, 2 s at 20 kHz, are resampled to it); ``input="cochleagram"``: topoaudio's cochleagram
[B, 1, 211, 390] of the 20 kHz sounds (models.CochlearFrontend). Its output is ignored: layers are
read by forward hooks on the named submodules (``dict(model.named_modules())``), each laid out as
the caller says, never guessed from the output's rank:

- ``conv``: [B, C, F, T] maps; on a ``channel_freq`` sheet (the default) one unit per (channel,
  frequency row), C x F units, rows stacked along y as for topoaudio's models; on a ``channels``
  sheet one unit per channel (averaged over F and T);
- ``tokens``: [B, T, D], batch first; one unit per feature D, averaged over the T tokens;
- ``vector``: [B, D]; one unit per feature.

Tokens and vectors have no frequency axis, so their units go on a ``channels`` sheet (the grid of
sheet.grid_shape(D), 0.25 mm apart). ``positions`` {layer: [N, 2] in mm} puts a layer's units where
the caller says instead (N as the layer's units are counted above).

Controls: the untrained network is ``untrained`` (an nn.Module, or a factory called with no
arguments after ``torch.manual_seed(seed)``), or by default a copy of the model whose modules are
re-initialised by their own ``reset_parameters`` (``_reset_parameters`` for torch's attention)
after ``torch.manual_seed(seed)``; a parameter no module can reset is an error asking for a
factory, since a half-reset copy would hide what training did. Shuffled positions as always.

Every input problem is found before any sound is run: the settings, a layer the model lacks, a
model that rejects its input (one probe pass of 3 clips of noise, the probes' own path), a layer
whose output does not have its layout's shape, positions whose count or extent does not fit the
layer, an untrained control whose layers differ; each is one ValueError line naming the layer,
shape or count.
"""
from __future__ import annotations

import collections.abc
import copy
import math
import numbers
import pathlib

import torch
from torch import nn

from topoaudio.analysis.evaluation import (
    DEFAULT_N_PERMUTATIONS,
    Subject,
    count_of_shuffles,
    measure_subjects,
    usable_device,
    writable_directory,
)
from topoaudio.analysis.stimuli import SAMPLE_RATE, SECONDS
from topoaudio.analysis.topography import MAX_PATCH_GRID_CELLS
from topoaudio.data.natsound165 import NatSound165, load_natsound165
from topoaudio.models import tapped
from topoaudio.models.frontend import CochlearFrontend
from topoaudio.sheet import (
    DEFAULT_CHANNEL_FREQ_SIZE_MM,
    KINDS,
    CorticalSheet,
    channel_freq_sheet,
    channels_sheet,
)

# layout -> (its output's number of dimensions, how it reads)
LAYOUTS = {"conv": (4, "[B, C, F, T]"), "tokens": (3, "[B, T, D]"), "vector": (2, "[B, D]")}
INPUTS = ("waveform", "cochleagram")
PROBE_CLIPS = 3  # not 1 or 2, so a first dimension that is not the batch is unlikely to pass for it
PROBE_SEED = 0
PATCH_GRID_MM = 0.1  # topography.patches' default raster


def measure_model(model: nn.Module, layers, natsound165, out, *, sample_rate: int | None = None,
                  input: str = "waveform", sheet=None, positions: dict | None = None, untrained=None,
                  seed: int = 0, name: str | None = None, device="cpu", shuffles: int = 100,
                  permutations: int = DEFAULT_N_PERMUTATIONS,
                  sheet_size_mm: float = DEFAULT_CHANNEL_FREQ_SIZE_MM) -> dict:
    """Measure `model` at `layers` beside its controls; writes out/run0/*.png, out/metrics.json
    and out/report.md (complete, or not at all) and returns {"runs", "summary", "baselines",
    "report"} as ``evaluation.evaluate_checkpoints`` does.

    layers: {name: layout} with layouts "conv" | "tokens" | "vector", or names (a list, or a
    comma-separated string) each "name" (conv) or "name:layout". natsound165: the NH2015 directory
    or a loaded NatSound165. sample_rate: the rate the model's waveforms are at (required for
    input="waveform"). sheet: a kind for every layer ("channel_freq" or "channels"), {layer: kind},
    or None (channel_freq for conv layers, channels for tokens and vectors). positions: {layer:
    [N, 2] in mm}. untrained: the untrained control (module or factory; default: reset_parameters
    on a copy). seed: seeds the untrained control, the channel_freq sheets' jitter and the nulls.
    name: the report's label (default: the model's class name). The model is put in eval mode and
    moved to `device` for the measurement; its train/eval mode is restored afterwards.
    """
    shuffles = count_of_shuffles(shuffles)
    permutations = count_of_shuffles(permutations, "permutations")
    device = usable_device(device)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    prepare, rate = input_path(input, sample_rate, model)
    layouts = layer_layouts(layers)
    missing_layers(model, layouts)
    kinds = sheet_kinds(sheet, layouts)
    positions = dict(positions or {})
    unknown = sorted(set(positions) - set(layouts))
    if unknown:
        raise ValueError(f"positions are given for {unknown}, which are not among the layers measured "
                         f"{list(layouts)}")
    out = writable_directory(out)

    was_training = model.training
    try:
        model.eval()
        outputs = probe(model, layouts, prepare, device, "model")
        sheets = build_layer_sheets(outputs, layouts, kinds, positions, seed, sheet_size_mm)
        twin, how = untrained_control(model, untrained, seed)
        twin_outputs = probe(twin, layouts, prepare, device, "untrained control")
        for layer in layouts:
            if tuple(twin_outputs[layer].shape[1:]) != tuple(outputs[layer].shape[1:]):
                raise ValueError(f"layer {layer!r}: the untrained control gives "
                                 f"{_shape(twin_outputs[layer])}, the model {_shape(outputs[layer])}")
        natsound = (natsound165 if isinstance(natsound165, NatSound165)
                    else load_natsound165(natsound165))
        label = name or type(model).__name__
        info = {"checkpoint": None, "source": label, "model": type(model).__name__, "topo": None,
                "seed": int(seed), "sheet": kinds, "val_accuracy": None, "input": input,
                "sample_rate": rate,
                "layouts": {layer: f"{layout} {_shape(outputs[layer])}" for layer, layout in layouts.items()},
                "positions": {layer: "given" if layer in positions else "built" for layer in layouts},
                "untrained_control": how}
        readers = {layer: _reader(layout) for layer, layout in layouts.items()}
        subject = Subject(model, sheets, lambda: twin, info, int(seed), f"{label}, seed {seed}",
                          prepare, readers)
        return measure_subjects([subject], natsound, out, device, shuffles, permutations, desc="models")
    finally:
        model.train(was_training)


def input_path(kind: str, sample_rate, model: nn.Module):
    """(prepare: 20 kHz waveforms [B, T] -> the model's input, the model's sample rate) for an
    input kind; a rate the model says it does not take is refused here."""
    if kind not in INPUTS:
        raise ValueError(f"input must be one of {list(INPUTS)}, got {kind!r}")
    if kind == "cochleagram":
        if sample_rate not in (None, SAMPLE_RATE):
            raise ValueError(f"input='cochleagram' is topoaudio's cochleagram of {SAMPLE_RATE} Hz sounds; "
                             f"sample_rate={sample_rate!r} does not apply (leave it out)")
        frontends: dict = {}

        def cochleagram(waveforms):
            if waveforms.device not in frontends:
                frontends[waveforms.device] = CochlearFrontend().to(waveforms.device)
            return frontends[waveforms.device](waveforms)

        return cochleagram, SAMPLE_RATE
    if sample_rate is None:
        raise ValueError("sample_rate is required for input='waveform': the rate, in Hz, of the waveforms "
                         "the model takes")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    own = getattr(model, "sample_rate", None)
    if isinstance(own, numbers.Integral) and not isinstance(own, bool) and own != sample_rate:
        raise ValueError(f"the model says it takes {own} Hz (its sample_rate attribute), but "
                         f"sample_rate={sample_rate} was given")
    rate = int(sample_rate)
    if rate == SAMPLE_RATE:
        return None, rate

    def resampled(waveforms):
        import torchaudio

        return torchaudio.functional.resample(waveforms, SAMPLE_RATE, rate)

    return resampled, rate


def layer_layouts(layers) -> dict[str, str]:
    """{layer: layout} from a dict, a list of "name" / "name:layout", or one comma-separated string."""
    if isinstance(layers, str):
        layers = [part.strip() for part in layers.split(",") if part.strip()]
    if isinstance(layers, collections.abc.Mapping):
        pairs = [(str(name), layout) for name, layout in layers.items()]
    elif isinstance(layers, collections.abc.Iterable):
        pairs = []
        for item in layers:
            if not isinstance(item, str):
                raise ValueError(f"a layer is named by a string 'name' or 'name:layout', got {item!r}")
            name, _, layout = item.partition(":")
            pairs.append((name.strip(), layout.strip() or "conv"))
    else:
        raise ValueError(f"layers must be a dict {{name: layout}} or a list of names, got "
                         f"{type(layers).__name__}")
    if not pairs:
        raise ValueError("no layer to measure: name at least one submodule of the model")
    names = [name for name, _ in pairs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"layer(s) {twice} named twice")
    for name, layout in pairs:
        if layout not in LAYOUTS:
            raise ValueError(f"layer {name!r}: layout {layout!r} is not one of {list(LAYOUTS)} "
                             f"({', '.join(f'{k} {v[1]}' for k, v in LAYOUTS.items())})")
    return dict(pairs)


def missing_layers(model: nn.Module, layouts: dict) -> None:
    """A ValueError naming the layers `model` has no submodule for (and some it has)."""
    modules = dict(model.named_modules())
    missing = [name for name in layouts if not name or name not in modules]
    if missing:
        available = [name for name in modules if name]
        more = f", ... ({len(available)} in all)" if len(available) > 12 else ""
        shown = ", ".join(available[:12]) + more
        raise ValueError(f"the model ({type(model).__name__}) has no layer {', '.join(map(repr, missing))}; "
                         f"its submodules are: {shown or 'none'}")


def sheet_kinds(sheet, layouts: dict) -> dict[str, str]:
    """{layer: sheet kind}; tokens and vectors only on channels sheets."""
    default = {layer: "channel_freq" if layout == "conv" else "channels" for layer, layout in layouts.items()}
    if sheet is None:
        return default
    if isinstance(sheet, str):
        kinds = {layer: sheet for layer in layouts}
    elif isinstance(sheet, collections.abc.Mapping):
        unknown = sorted(set(sheet) - set(layouts))
        if unknown:
            raise ValueError(f"sheet kinds are given for {unknown}, which are not among the layers "
                             f"measured {list(layouts)}")
        kinds = {**default, **sheet}
    else:
        raise ValueError(f"sheet must be a kind {list(KINDS)} or {{layer: kind}}, got {sheet!r}")
    for layer, kind in kinds.items():
        if kind not in KINDS:
            raise ValueError(f"layer {layer!r}: sheet kind {kind!r} is not one of {list(KINDS)}")
        if kind == "channel_freq" and layouts[layer] != "conv":
            raise ValueError(f"layer {layer!r} is laid out as {layouts[layer]} "
                             f"{LAYOUTS[layouts[layer]][1]}: its units have no frequency rows for a "
                             "channel_freq sheet; put it on a channels sheet (or give its positions)")
    return kinds


@torch.no_grad()
def probe(model: nn.Module, layouts: dict, prepare, device, who: str) -> dict:
    """{layer: output} of one pass of PROBE_CLIPS clips of seeded noise (2 s at 20 kHz, through
    `prepare` as every probe sound goes), each output checked against its layout."""
    noise = 0.1 * torch.randn(PROBE_CLIPS, int(SAMPLE_RATE * SECONDS),
                              generator=torch.Generator().manual_seed(PROBE_SEED))
    model = model.to(device)
    noise = noise.to(device)
    inputs = noise if prepare is None else prepare(noise)
    what = ("waveforms" if prepare is None or inputs.dim() == 2 else "cochleagrams")
    try:
        with tapped(model, list(layouts)) as features:
            model(inputs)
    except Exception as error:  # noqa: BLE001 - whatever the user's model raises becomes one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        rate = f" ({SECONDS:g} s at {inputs.shape[-1] / SECONDS:.0f} Hz)" if what == "waveforms" else ""
        raise ValueError(f"the {who} rejected {what} {_shape(inputs)}{rate}: {type(error).__name__}"
                         f"{': ' + reason if reason else ''}") from None
    for name, layout in layouts.items():
        layer = repr(name) if who == "model" else f"{name!r} of the {who}"
        if name not in features:
            raise ValueError(f"layer {layer} did not run in the {who}'s forward pass")
        output = features[name]
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"layer {layer} returns a {type(output).__name__}, not a tensor; name a "
                             "submodule that returns one tensor")
        dims, form = LAYOUTS[layout]
        if output.dim() != dims:
            others = [kind for kind, (d, _) in LAYOUTS.items() if d == output.dim()]
            hint = f" (is it {others[0]}?)" if others else ""
            raise ValueError(f"layer {layer} gives {_shape(output)}, which a {layout} layout {form} "
                             f"cannot hold{hint}")
        if output.shape[0] != PROBE_CLIPS:
            raise ValueError(f"layer {layer} gives {_shape(output)} for {PROBE_CLIPS} clips: a {layout} "
                             f"layout {form} needs the batch first")
        if output.numel() == 0:
            raise ValueError(f"layer {layer} gives an empty output {_shape(output)}")
        if not output.is_floating_point():
            raise ValueError(f"layer {layer} gives {output.dtype} values, not floating point")
        if not torch.isfinite(output).all():
            raise ValueError(f"layer {layer} gives {int((~torch.isfinite(output)).sum())} NaN or infinite "
                             f"values of {output.numel()} for noise")
    return {layer: features[layer].detach() for layer in layouts}


def build_layer_sheets(outputs: dict, layouts: dict, kinds: dict, positions: dict, seed: int,
                       size_mm: float) -> dict:
    """{layer: CorticalSheet}: the kind's own layout, or the given positions (checked)."""
    sheets = {}
    for index, (layer, layout) in enumerate(layouts.items()):
        shape = tuple(outputs[layer].shape)
        channels, freqs = (shape[1], shape[2]) if layout == "conv" else (shape[-1], None)
        kind = kinds[layer]
        if layer in positions:
            given = _positions(layer, positions[layer], layout, shape, kind)
            sheets[layer] = CorticalSheet(layer, kind, given, channels,
                                          freqs if kind == "channel_freq" else None, {"positions": "given"})
        elif kind == "channel_freq":
            sheets[layer] = channel_freq_sheet(layer, channels, freqs, size_mm=size_mm, seed=seed + index)
        else:
            sheets[layer] = channels_sheet(layer, channels)
    return sheets


def _positions(layer: str, values, layout: str, shape: tuple, kind: str) -> torch.Tensor:
    try:
        given = torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"positions of layer {layer!r} are not numbers: {error}") from None
    if layout == "conv":
        units = {"channel_freq": (shape[1] * shape[2], f"C x F = {shape[1]} x {shape[2]}"),
                 "channels": (shape[1], f"C = {shape[1]}")}
    else:
        units = {"channels": (shape[-1], f"D = {shape[-1]}")}
    expected, how = units[kind]
    if given.dim() != 2 or given.shape[1] != 2:
        raise ValueError(f"positions of layer {layer!r} must be [N, 2] (x, y in mm), got {_shape(given)}")
    if given.shape[0] != expected:
        other = "; ".join(f"{n} on a {k} sheet ({h})" for k, (n, h) in units.items() if k != kind)
        raise ValueError(f"positions of layer {layer!r} hold {given.shape[0]} units, but its {layout} "
                         f"output {_shape_of(shape)} has {expected} on a {kind} sheet ({how})"
                         + (f"; {other}" if other else ""))
    if not torch.isfinite(given).all():
        raise ValueError(f"positions of layer {layer!r} hold {int((~torch.isfinite(given)).sum())} NaN or "
                         "infinite values")
    span = given.amax(dim=0) - given.amin(dim=0)
    cells = math.prod(int(s / PATCH_GRID_MM) + 1 for s in span.tolist())
    if cells > MAX_PATCH_GRID_CELLS:
        raise ValueError(f"positions of layer {layer!r} span {span[0]:.4g} x {span[1]:.4g}: positions are "
                         f"in mm, and patches are found on a {PATCH_GRID_MM} mm grid ({cells} cells, at "
                         f"most {MAX_PATCH_GRID_CELLS})")
    return given


def untrained_control(model: nn.Module, untrained, seed: int) -> tuple[nn.Module, str]:
    """(the untrained network in eval mode, how it was made). `untrained`: an nn.Module, a factory
    (called after torch.manual_seed(seed)), or None: a copy of `model` with every module
    re-initialised by its own reset_parameters after torch.manual_seed(seed)."""
    if isinstance(untrained, nn.Module):
        return untrained.eval(), f"given ({type(untrained).__name__})"
    if untrained is not None:
        if not callable(untrained):
            raise ValueError(f"untrained must be an nn.Module or a factory that builds one, got "
                             f"{type(untrained).__name__}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            twin = untrained()
        if not isinstance(twin, nn.Module):
            raise ValueError(f"the untrained factory returned a {type(twin).__name__}, not an nn.Module")
        label = getattr(untrained, "__qualname__", type(untrained).__name__)
        return twin.eval(), f"built by {label}, seed {seed}"
    unresettable = _unresettable(model)
    if unresettable:
        shown = ", ".join(unresettable[:5]) + (f", ... ({len(unresettable)} in all)"
                                               if len(unresettable) > 5 else "")
        raise ValueError(f"cannot re-initialise the untrained control: parameter(s) {shown} belong to "
                         "modules without reset_parameters; pass untrained= a factory that builds the "
                         "untrained network (command line: --untrained package.module:factory)")
    try:
        twin = copy.deepcopy(model).cpu()
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"cannot copy the model for its untrained control ({type(error).__name__}: "
                         f"{error}); pass untrained= a factory that builds the untrained network") from None
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in twin.modules():
            reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
            if callable(reset):
                reset()
    return twin.eval(), f"the model re-initialised by reset_parameters, seed {seed}"


def _unresettable(model: nn.Module) -> list[str]:
    """Names of the parameters that no module holding them (itself or an enclosing one) can reset."""
    covered = set()
    for module in model.modules():
        if callable(getattr(module, "reset_parameters", None)) or callable(
                getattr(module, "_reset_parameters", None)):
            covered.update(id(p) for p in module.parameters())
    return [name for name, p in model.named_parameters() if id(p) not in covered]


def _reader(layout: str):
    if layout == "tokens":  # [B, T, D] -> [B, D, T]: a channels sheet averages what follows the unit
        return lambda output: output.transpose(1, 2)
    return lambda output: output


def _shape(tensor) -> str:
    return _shape_of(tuple(tensor.shape))


def _shape_of(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def read_positions(path) -> dict:
    """{layer: [N, 2]} from a .npz (one array per layer, named by it) or a .pt file holding a dict
    (read with weights_only=True)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"positions file {path} not found")
    if path.suffix == ".npz":
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as data:
                return {name: torch.from_numpy(data[name]) for name in data.files}
        except (OSError, ValueError) as error:
            raise ValueError(f"positions file {path} is not a readable .npz: {error}") from None
    if path.suffix in (".pt", ".pth"):
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - torch.load raises many kinds
            raise ValueError(f"positions file {path} cannot be read: {str(error).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"positions file {path} must hold a dict {{layer: [N, 2]}}, got "
                             f"{type(loaded).__name__}")
        return loaded
    raise ValueError(f"positions file {path}: expected .npz or .pt, got {path.suffix or 'no suffix'}")
