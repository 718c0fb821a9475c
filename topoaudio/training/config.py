"""Training configuration: one dataclass, filled from defaults, a JSON file and `--key value`.

Every setting has a rule in RULES (its type and its range or choices); TrainConfig checks them all
when it is made, so defaults, JSON presets, the command line and a resumed run's saved settings are
held to the same rules before any work starts."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from topoaudio.commandline import DefaultsFormatter
from topoaudio.models import MODELS, POOLINGS, check_pooling
from topoaudio.ops.spatial_common import KINDS as SPATIAL_KINDS
from topoaudio.sheet import KINDS as SHEET_KINDS
from topoaudio.topoloss import SCHEDULE_KINDS

TOPO_CHOICES = ("none", "spatial", "topoloss")
DATASETS = ("procedural", "speech_commands", "esc50", "nsynth", "word_speaker_noise",
            "speech_music_scenes")
DEVICES = ("auto", "cpu", "cuda")
CPU_AMP = ("auto", "on", "off")
FRONTEND_IN_WORKERS = ("auto", "on", "off")


@dataclass
class TrainConfig:
    """Every knob of `torchrun train.py`. Defaults: the embedded main job (cochcnn + whole-sheet
    spatial loss on the synthesised speech and music scenes, four tasks, two CPU cores, under 15
    minutes)."""

    # model and data
    model: str = "cochcnn"
    # what the heads read over frequency and time (tokens): "" = the model's own (cochcnn max, the
    # ASTs mean), or max | mean for cochcnn and the ASTs
    pooling: str = ""
    dataset: str = "speech_music_scenes"  # multi-task: word, speaker, instrument, category
    #                 | procedural | speech_commands | esc50 | nsynth | word_speaker_noise
    data_root: str = ""
    noise_root: str = ""
    # synthesised sets' size (scenes, procedural; file datasets: their own size). Scenes are made
    # on demand, so a large set costs nothing and the default run sees each clip once
    train_size: int = 80000
    val_size: int = 384
    clip_seconds: float = 2.0
    # the cochleagram every model hears through: the exact op or the fast approximate mode
    # (docs/SCIENCE.md 2b, ~8x faster on the CPU), with its oversample (fast only). The front end
    # holds no weights. Fast by default since issue 20: two 800-step runs alike but for the front end
    # gave accuracies and map statistics within the seed spread of the exact study
    # (docs/run_logs/frontend-pair-issue20/compare.md); the GPU presets name "exact".
    frontend: str = "fast"
    oversample: float = 4.0
    # multi-task datasets: the tasks to train ([] = every task the dataset labels) and the weight of
    # each one's loss (same order as tasks; [] = 1 each). Single-task datasets take neither.
    tasks: list[str] = field(default_factory=list)
    task_weights: list[float] = field(default_factory=list)
    scene_words: int = 50  # speech_music_scenes: word classes, the first N of its word list
    scene_voices: int = 0  # speech_music_scenes: training voices (speaker classes); 0: all of them
    scene_instrument: str = "family"  # speech_music_scenes: family (16 classes) | program (121)
    # optimisation
    steps: int = 5000
    batch_size: int = 16  # global batch, split evenly across ranks
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"  # cosine | constant
    schedule_steps: int = 0  # length of the lr schedule; 0: steps. Fix it to extend a run by resuming
    warmup_steps: int = 25
    grad_clip: float = 5.0  # 0: no clipping
    seed: int = 0
    # topography
    topo: str = "spatial"  # none | spatial | topoloss
    topo_layers: list[str] = field(default_factory=lambda: ["block2", "block3", "block4"])
    sheet: str = "channel_freq"  # channel_freq | channels
    sheet_size_mm: float = 10.0
    alpha: float = 0.25  # spatial-loss weight per layer (TDANN)
    layer_weights: list[float] = field(default_factory=list)  # per-layer alpha or tau; [] = uniform
    spatial_kind: str = "relative"
    neighbourhood: int = 0  # 0: whole sheet; k >= 2: sampled neighbourhoods of (at most) k units
    neighbourhood_kind: str = "tdann"  # tdann: TDANN's square windows | knearest: k nearest a unit
    neighbourhood_width_mm: float = 4.0  # tdann: the window's side (a 4 x 4 mm window on 10 x 10 mm)
    neighbourhoods_per_step: int = 1  # loss averaged over this many draws (TDANN's per batch)
    tau: float = 25.0  # TopoLoss weight per layer
    phi: float = 2.0  # TopoLoss blur factor on both grid axes (TopoNets' factor_h = factor_w)
    factor_h: float = 0.0  # TopoLoss blur factor along the grid's rows; 0: phi
    factor_w: float = 0.0  # ... along its columns; 0: phi
    tau_schedule: str = "constant"  # constant | linear | cosine (warm-up over tau_warmup_steps)
    tau_warmup_steps: int = 0
    # bookkeeping
    out: str = ""  # run directory; default runs/<model>-<topo>-<time>
    log_every: int = 10
    eval_every: int = 500
    checkpoint_every: int = 100
    num_workers: int = 1  # DataLoader worker processes: the scenes are synthesised there
    # where the cochleagram is computed on the CPU: "on" in the DataLoader workers, beside the
    # scenes' synthesis, while the main process runs the network on the cores the workers leave
    # (issue 20: 2 cores split the step between data and network); "off" in the model, as on
    # GPUs; "auto": on when training on the CPU with num_workers >= 1. The same op on the same
    # clips either way: the cochleagrams are bit for bit the same (the network's own rounding
    # follows its thread count, which this placement sets).
    frontend_in_workers: str = "auto"
    amp: bool = True  # bf16 autocast on GPU
    # bf16 autocast on the CPU: "auto" turns it on where the CPU computes bf16 natively
    # (avx512_bf16 or AMX) and off elsewhere, and the run saves what it chose ("on" or "off"), so
    # that a resumed run computes as it began. Issue 20: ~1.2x the clips per second on 2 cores.
    cpu_amp: str = "auto"
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self) -> None:
        for name in RULES:
            setattr(self, name, check_value(name, getattr(self, name)))
        self._check_together()

    def _check_together(self) -> None:
        """Rules that join two settings."""
        check_pooling(self.model, self.pooling or None)
        if self.topo != "none":
            if not self.topo_layers:
                raise ValueError(f"topo={self.topo!r} needs at least one of topo_layers (taps of "
                                 f"{self.model}: {list(MODELS[self.model].tap_names)}); or use topo=none")
            taps = MODELS[self.model].tap_names
            unknown = [layer for layer in self.topo_layers if layer not in taps]
            if unknown:
                raise ValueError(f"topo_layers {unknown} are not taps of {self.model}; its taps are "
                                 f"{list(taps)}")
            if len(set(self.topo_layers)) != len(self.topo_layers):
                raise ValueError(f"topo_layers {self.topo_layers} names a layer twice")
        if self.frontend_in_workers == "on" and self.num_workers < 1:
            raise ValueError("frontend_in_workers=on computes the cochleagrams in the DataLoader "
                             "workers: it needs num_workers >= 1 (or frontend_in_workers auto/off)")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks {self.tasks} names a task twice")
        if self.task_weights and self.tasks and len(self.task_weights) != len(self.tasks):
            raise ValueError(f"task_weights has {len(self.task_weights)} values for "
                             f"{len(self.tasks)} tasks {self.tasks}")
        if self.layer_weights and len(self.layer_weights) != len(self.topo_layers):
            raise ValueError(f"layer_weights has {len(self.layer_weights)} values for "
                             f"{len(self.topo_layers)} topo_layers {self.topo_layers}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Rule(NamedTuple):
    """A setting's type (bool, int, float, str, or list of str or float) and a check of its value
    that returns what is wrong ("" when nothing is)."""
    kind: type
    check: Callable[[object], str] = lambda value: ""
    item: type | None = None  # for lists: the type of each item


def one_of(*choices) -> Callable[[object], str]:
    def check(value) -> str:
        return "" if value in choices else f"must be one of {list(choices)}"

    check.choices = choices  # shown by --help
    return check


def at_least(low) -> Callable[[object], str]:
    return lambda value: "" if value >= low else f"must be >= {low}"


def above(low) -> Callable[[object], str]:
    return lambda value: "" if value > low else f"must be > {low}"


def all_items(check) -> Callable[[object], str]:
    return lambda values: next((problem for problem in map(check, values) if problem), "")


def zero_or_at_least(low) -> Callable[[object], str]:
    return lambda value: "" if value == 0 or value >= low else f"must be 0 or >= {low}"


RULES: dict[str, Rule] = {
    "model": Rule(str, one_of(*MODELS)),
    "pooling": Rule(str, one_of("", *POOLINGS)),
    "dataset": Rule(str, one_of(*DATASETS)),
    "data_root": Rule(str),
    "noise_root": Rule(str),
    "train_size": Rule(int, at_least(1)),
    "val_size": Rule(int, at_least(1)),
    "clip_seconds": Rule(float, above(0)),
    "frontend": Rule(str, one_of("exact", "fast")),
    "oversample": Rule(float, at_least(1)),
    "tasks": Rule(list, all_items(lambda task: "" if task else "must not hold an empty name"), item=str),
    # a task not worth training is left out of tasks, so a weight of 0 is refused as a likely slip
    "task_weights": Rule(list, all_items(above(0)), item=float),
    # the upper bounds (the word list's and the voice list's lengths) are the dataset's to check
    "scene_words": Rule(int, at_least(2)),
    "scene_voices": Rule(int, zero_or_at_least(2)),
    "scene_instrument": Rule(str, one_of("program", "family")),
    "steps": Rule(int, at_least(1)),
    "batch_size": Rule(int, at_least(2)),  # correlations need 2 samples
    "optimizer": Rule(str, one_of("adamw", "sgd")),
    "lr": Rule(float, above(0)),
    "momentum": Rule(float, lambda v: "" if 0 <= v < 1 else "must be in [0, 1)"),
    "weight_decay": Rule(float, at_least(0)),
    "lr_schedule": Rule(str, one_of("cosine", "constant")),
    "schedule_steps": Rule(int, at_least(0)),
    "warmup_steps": Rule(int, at_least(0)),
    "grad_clip": Rule(float, at_least(0)),
    "seed": Rule(int, at_least(0)),
    "topo": Rule(str, one_of(*TOPO_CHOICES)),
    "topo_layers": Rule(list, item=str),
    "sheet": Rule(str, one_of(*SHEET_KINDS)),
    "sheet_size_mm": Rule(float, above(0)),
    "alpha": Rule(float, at_least(0)),
    "layer_weights": Rule(list, all_items(at_least(0)), item=float),
    "spatial_kind": Rule(str, one_of(*SPATIAL_KINDS)),
    "neighbourhood": Rule(int, zero_or_at_least(2)),  # a neighbourhood of 1 unit has no pairs
    "neighbourhood_kind": Rule(str, one_of("tdann", "knearest")),
    "neighbourhood_width_mm": Rule(float, above(0)),
    "neighbourhoods_per_step": Rule(int, at_least(1)),
    "tau": Rule(float, at_least(0)),
    "phi": Rule(float, at_least(1)),  # a factor below 1 upsamples: no blur
    "factor_h": Rule(float, zero_or_at_least(1)),
    "factor_w": Rule(float, zero_or_at_least(1)),
    "tau_schedule": Rule(str, one_of(*SCHEDULE_KINDS)),
    "tau_warmup_steps": Rule(int, at_least(0)),
    "out": Rule(str),
    "log_every": Rule(int, at_least(1)),
    "eval_every": Rule(int, at_least(1)),
    "checkpoint_every": Rule(int, at_least(1)),
    "num_workers": Rule(int, at_least(0)),
    "frontend_in_workers": Rule(str, one_of(*FRONTEND_IN_WORKERS)),
    "amp": Rule(bool),
    "cpu_amp": Rule(str, one_of(*CPU_AMP)),
    "device": Rule(str, one_of(*DEVICES)),
}
assert set(RULES) == {f.name for f in dataclasses.fields(TrainConfig)}, "every setting needs a rule"

# What --help says of each setting (one line; the type, choices and default are added to it), in
# the groups of TrainConfig, in its order.
HELP: dict[str, str] = {
    "model": "the network",
    "pooling": "what the heads read: max | mean over frequency and time (tokens); empty: the model's "
               "own (cochcnn max, ast mean)",
    "dataset": "what it learns from (speech_music_scenes and procedural need no files)",
    "data_root": "the dataset's directory (file datasets)",
    "noise_root": "background noise directory (word_speaker_noise)",
    "train_size": "clips in the training set (synthesised sets; file datasets have their own)",
    "val_size": "clips in the validation set (synthesised sets)",
    "clip_seconds": "clip length in seconds (at 20 kHz)",
    "frontend": "the cochleagram: the exact op or the fast approximate mode (docs/SCIENCE.md 2b)",
    "oversample": "fast front end: band oversampling (>= 1; 4: rel. RMS error 1.6e-3)",
    "tasks": "multi-task datasets: the tasks to train (none: every task the dataset labels)",
    "task_weights": "each task's loss weight, in the order of tasks (none: 1 each)",
    "scene_words": "speech_music_scenes: word classes, the first N of its word list",
    "scene_voices": "speech_music_scenes: training voices, the speaker classes (0: all of them)",
    "scene_instrument": "speech_music_scenes: instrument classes, 16 families or 121 GM programs",
    "steps": "optimiser steps",
    "batch_size": "global batch, split evenly across ranks",
    "optimizer": "the optimiser",
    "lr": "peak learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "lr_schedule": "learning-rate schedule after the warm-up",
    "schedule_steps": "length of the lr schedule (0: steps); fix it to extend a run by resuming",
    "warmup_steps": "linear learning-rate warm-up steps",
    "grad_clip": "gradient-norm clipping (0: none)",
    "seed": "seeds the weights, the batches and the sheets",
    "topo": "the topographic term: none, the spatial loss (TDANN) or TopoLoss",
    "topo_layers": "the layers it applies to (taps of the model)",
    "sheet": "cortical sheet kind (docs/SCIENCE.md section 5)",
    "sheet_size_mm": "side of a channel_freq sheet in mm",
    "alpha": "spatial-loss weight per layer",
    "layer_weights": "per-layer alpha (spatial) or tau (topoloss), in topo_layers' order (none: uniform)",
    "spatial_kind": "spatial-loss form (TDANN's relative or absolute)",
    "neighbourhood": "0: the loss over the whole sheet; k >= 2: sampled neighbourhoods of at most k units",
    "neighbourhood_kind": "sampled neighbourhoods: TDANN's square windows or the k nearest units",
    "neighbourhood_width_mm": "tdann windows: side in mm",
    "neighbourhoods_per_step": "sampled neighbourhoods averaged per step",
    "tau": "TopoLoss weight per layer",
    "phi": "TopoLoss blur factor on both grid axes",
    "factor_h": "TopoLoss blur factor along the grid's rows (0: phi)",
    "factor_w": "TopoLoss blur factor along the grid's columns (0: phi)",
    "tau_schedule": "TopoLoss weight warm-up",
    "tau_warmup_steps": "steps of the tau warm-up",
    "out": "run directory (none: runs/<model>-<topo>-<time>)",
    "log_every": "steps between log lines",
    "eval_every": "steps between validations",
    "checkpoint_every": "steps between checkpoints",
    "num_workers": "DataLoader worker processes (the scenes are synthesised there)",
    "frontend_in_workers": "CPU: compute the cochleagrams in the DataLoader workers (auto: when "
                           "training on the CPU with workers; the same cochleagrams either way)",
    "amp": "bf16 autocast on GPUs",
    "cpu_amp": "bf16 autocast on the CPU (auto: where the CPU has native bf16; the run saves on/off)",
    "device": "auto: CUDA when available",
}
GROUPS = {"model and data": "model", "optimisation": "steps", "topography": "topo", "bookkeeping": "out"}
assert set(HELP) == set(RULES), "every setting needs a line of help"
# Settings added after checkpoints of this format were first written, with the value that means
# "as before they existed": a checkpoint whose config lacks them resumes with these.
ADDED_SETTINGS = {"tasks": [], "task_weights": [], "scene_words": 50, "scene_voices": 0,
                  "frontend": "exact", "oversample": 4.0,  # runs before issue 20: the exact op
                  "cpu_amp": "off",  # runs before issue 20 computed in float32 on the CPU
                  "scene_instrument": "family", "factor_h": 0.0, "factor_w": 0.0,
                  # runs saved before TDANN's windows existed sampled the k nearest units
                  "neighbourhood_kind": "knearest", "neighbourhood_width_mm": 4.0,
                  "neighbourhoods_per_step": 1,
                  "pooling": "",  # runs before the setting: the model's own pooling
                  # where the front end ran does not change a run's numbers
                  "frontend_in_workers": "auto"}


def _typed(kind: type, value):
    """value as `kind`, or None when it is not one. No coercion from strings: a JSON "false" is not
    a bool and "3" is not an int. An int is a float (JSON writes 1.0 as 1); a bool is neither."""
    if kind is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind is int:
        return value if isinstance(value, int) else None
    if kind is float:
        return float(value) if isinstance(value, (int, float)) else None
    return value if isinstance(value, kind) else None


def check_value(name: str, value):
    """`value` of setting `name`, typed (ints become floats where floats belong), or a ValueError
    naming the setting, the value and what was expected."""
    rule = RULES[name]
    typed = _typed(rule.kind, value)
    expected = rule.kind.__name__ if rule.item is None else f"list of {rule.item.__name__}"
    if typed is not None and rule.item is not None:
        items = [_typed(rule.item, item) for item in typed]
        typed = None if any(item is None for item in items) else items
    if typed is None:
        raise ValueError(f"{name} must be of type {expected}, got {value!r} ({type(value).__name__})")
    numbers = [typed] if rule.kind is float else typed if rule.item is float else []
    if any(not math.isfinite(number) for number in numbers):
        raise ValueError(f"{name}: {value!r} is not finite")
    problem = rule.check(typed)
    if problem:
        raise ValueError(f"{name} {problem}, got {value!r}")
    return typed


def _convert(name: str, text: str):
    """A command-line string as the type of setting `name` (the range is checked later)."""
    rule = RULES[name]
    try:
        if rule.kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if rule.item is not None:
            return [rule.item(item) for item in text.split(",") if item]
        return rule.kind(text)
    except ValueError:
        expected = rule.kind.__name__ if rule.item is None else f"comma-separated {rule.item.__name__}s"
        raise ValueError(f"--{name}: cannot read {text!r} as {expected}") from None


def check_keys(keys, source: str) -> None:
    unknown = sorted(set(keys) - set(RULES))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in {source}; valid keys: "
                         + ", ".join(sorted(RULES)))


class _RaisingParser(argparse.ArgumentParser):
    """argparse whose usage errors are ValueErrors (train.py turns them into one line)."""

    def error(self, message):
        raise ValueError(message)


def command_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    """The parser of `torchrun train.py` / `topoaudio train`: --config, --resume and one option
    per setting, grouped as TrainConfig is, each with its type (or choices), default and one line.
    Values are read as text and converted by each setting's rule (parse_command)."""
    launcher = "torchrun [--nproc_per_node=K] train.py" if prog == "train.py" else prog
    parser = _RaisingParser(
        prog=prog, formatter_class=DefaultsFormatter, allow_abbrev=False,
        usage=f"{launcher} [--config FILE.json] [--resume] [--key value ...]",
        description="Train a topographic auditory model. With no arguments: cochcnn with the "
                    "whole-sheet spatial loss on the synthesised speech and music scenes, four tasks "
                    "(about 18 minutes on two CPU cores); checkpoint and metrics under runs/. Presets: "
                    "configs/*.json.",
        epilog="Every setting is also a key of the --config JSON file. Lists are comma-separated "
               "(--topo_layers block2,block3). Booleans: true/false, yes/no, 1/0.")
    run = parser.add_argument_group("run")
    run.add_argument("--config", metavar="FILE.json", default=argparse.SUPPRESS,
                     help="settings from a JSON file; the command line overrides them")
    run.add_argument("--resume", action="store_true", default=argparse.SUPPRESS,
                     help="continue the run in --out (the latest under runs/ without it) bit for bit; the "
                          "given settings may only extend it")
    group = None
    for field_ in dataclasses.fields(TrainConfig):
        title = next((name for name, first in GROUPS.items() if first == field_.name), None)
        if title is not None:
            group = parser.add_argument_group(title)
        rule = RULES[field_.name]
        default = (field_.default if field_.default_factory is dataclasses.MISSING
                   else field_.default_factory())
        group.add_argument(f"--{field_.name}", metavar=_metavar(field_.name, rule), default=argparse.SUPPRESS,
                           help=f"{HELP[field_.name]} (default: {_shown(default)})")
    return parser


def _metavar(name: str, rule: Rule) -> str:
    if name in ("data_root", "noise_root", "out"):
        return "DIR"
    choices = getattr(rule.check, "choices", None)
    if choices:
        return "{" + ",".join(map(str, choices)) + "}"
    if rule.item is not None:
        return f"{rule.item.__name__.upper()},..."
    return rule.kind.__name__.upper()


def _shown(default) -> str:
    if isinstance(default, list):
        return ",".join(map(str, default)) or "none"
    if isinstance(default, bool):
        return str(default).lower()
    return str(default) if default != "" else "none"


def parse_command(argv: list[str], prog: str = "train.py") -> tuple[dict, bool]:
    """`[--config FILE] [--resume] [--key value ...]` -> ({setting: value} given explicitly, in the
    file or on the command line, each checked against its rule; resume). Command-line values
    override the file. Unknown keys are an error listing the valid ones. `-h`/`--help` prints the
    help and exits with status 0. A value is the next argument whatever it looks like (`--x -1,2`),
    or follows `=`; `--some-key` is `--some_key`."""
    parser = command_parser(prog)
    joined: list[str] = []
    unknown: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help", "--resume"):
            joined.append(arg)
            i += 1
            continue
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; use --key value (see --help)")
        key, equals, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not equals:
            if i + 1 >= len(argv):
                raise ValueError(f"--{key} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        if key != "config" and key not in RULES:
            unknown.append(key)
        else:
            joined.append(f"--{key}={value}")
    if unknown:
        check_keys(unknown, "the command line")
    options = vars(parser.parse_args(joined))
    resume = bool(options.pop("resume", False))
    given: dict = {}
    if "config" in options:
        given.update(_read_json(options.pop("config")))
    given.update({key: _convert(key, text) for key, text in options.items()})
    return {key: check_value(key, value) for key, value in given.items()}, resume


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as handle:
        try:
            loaded = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} must hold a JSON object of settings, got {type(loaded).__name__}")
    check_keys(loaded, path)
    try:
        return {key: check_value(key, value) for key, value in loaded.items()}
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def parse_args(argv: list[str]) -> tuple[TrainConfig, bool]:
    """`[--config FILE] [--resume] [--key value ...]` -> (config, resume): the given settings over
    the defaults."""
    given, resume = parse_command(argv)
    return TrainConfig(**given), resume


def usage(prog: str = "train.py") -> str:
    """The usage line and every setting, as --help prints them."""
    return command_parser(prog).format_help()
