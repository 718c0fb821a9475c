"""Training configuration: one dataclass, filled from defaults, a JSON file and `--key value`."""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field

TOPO_CHOICES = ("none", "spatial", "topoloss")


@dataclass
class TrainConfig:
    """Every knob of `torchrun train.py`. Defaults: the embedded main job (cochcnn + whole-sheet
    spatial loss on procedural sounds, two CPU cores, under 15 minutes)."""

    # model and data
    model: str = "cochcnn"
    dataset: str = "procedural"  # procedural | speech_commands | esc50 | nsynth | word_speaker_noise
    data_root: str = ""
    noise_root: str = ""
    train_size: int = 4096  # procedural set size (other datasets: their own size)
    val_size: int = 384
    clip_seconds: float = 2.0
    # optimisation
    steps: int = 800
    batch_size: int = 16  # global batch, split evenly across ranks
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "cosine"  # cosine | constant
    schedule_steps: int = 0  # length of the lr schedule; 0: steps. Fix it to extend a run by resuming
    warmup_steps: int = 25
    grad_clip: float = 5.0
    seed: int = 0
    # topography
    topo: str = "spatial"  # none | spatial | topoloss
    topo_layers: list[str] = field(default_factory=lambda: ["block2", "block3", "block4"])
    sheet: str = "channel_freq"  # channel_freq | channels
    sheet_size_mm: float = 10.0
    alpha: float = 0.25  # spatial-loss weight per layer (TDANN)
    layer_weights: list[float] = field(default_factory=list)  # per-layer alpha or tau; [] = uniform
    spatial_kind: str = "relative"
    neighbourhood: int = 0  # 0: whole sheet; k > 0: TDANN-style random neighbourhood of k units
    tau: float = 25.0  # TopoLoss weight per layer
    phi: float = 2.0
    tau_schedule: str = "constant"  # constant | linear | cosine (warm-up over tau_warmup_steps)
    tau_warmup_steps: int = 0
    # bookkeeping
    out: str = ""  # run directory; default runs/<model>-<topo>-<time>
    log_every: int = 10
    eval_every: int = 400
    checkpoint_every: int = 100
    num_workers: int = 0
    amp: bool = True  # bf16 autocast on GPU
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self) -> None:
        if self.topo not in TOPO_CHOICES:
            raise ValueError(f"topo must be one of {TOPO_CHOICES}, got {self.topo!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be cosine or constant, got {self.lr_schedule!r}")
        if self.layer_weights and len(self.layer_weights) != len(self.topo_layers):
            raise ValueError(f"layer_weights has {len(self.layer_weights)} values for "
                             f"{len(self.topo_layers)} topo_layers {self.topo_layers}")
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError("need steps >= 1 and batch_size >= 2 (correlations need 2 samples)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _field_types() -> dict:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def _convert(name: str, text: str, kind):
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if typing.get_origin(kind) is list:
            (item_kind,) = typing.get_args(kind)
            return [item_kind(item) for item in text.split(",") if item]
        return kind(text)
    except ValueError:
        raise ValueError(f"--{name}: cannot read {text!r} as {getattr(kind, '__name__', kind)}") from None


def check_keys(keys, source: str) -> None:
    valid = _field_types()
    unknown = sorted(set(keys) - set(valid))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in {source}; valid keys: "
                         + ", ".join(sorted(valid)))


def parse_args(argv: list[str]) -> tuple[TrainConfig, bool]:
    """`[--config FILE] [--resume] [--key value ...]` -> (config, resume). Command-line values
    override the file, which overrides the defaults. Unknown keys are an error listing the valid
    ones."""
    values: dict = {}
    resume = False
    cli: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            raise SystemExit(usage())
        if arg == "--resume":
            resume = True
            i += 1
            continue
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; use --key value\n{usage()}")
        key, _, inline = arg[2:].partition("=")
        if inline:
            value = inline
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ValueError(f"--{key} needs a value")
            value = argv[i + 1]
            i += 2
        cli[key.replace("-", "_")] = value
    if "config" in cli:
        path = cli.pop("config")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file not found: {path}")
        with open(path) as handle:
            loaded = json.load(handle)
        check_keys(loaded, path)
        values.update(loaded)
    check_keys(cli, "the command line")
    types = _field_types()
    values.update({key: _convert(key, text, types[key]) for key, text in cli.items()})
    return TrainConfig(**values), resume


def usage() -> str:
    names = ", ".join(sorted(_field_types()))
    return ("usage: torchrun [--nproc_per_node=K] train.py [--config FILE.json] [--steps N] "
            f"[--out DIR] [--resume] [--key value ...]\nkeys: {names}")
