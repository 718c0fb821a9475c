"""Measure models (topoaudio's checkpoints or your own): maps, smoothness, patches, brain
predictivity, controls, and a report.

    topoaudio evaluate --checkpoint CKPT [--checkpoint CKPT2 ...] --natsound165 DIR --out DIR
    topoaudio evaluate --model package.module:factory --layers a,b:tokens,c:vector --sample_rate HZ \\
                       --natsound165 DIR --out DIR          (any nn.Module; also path/to/file.py:factory)
    python -m topoaudio.evaluate ...   (the same)

DIR is a copy of the NH2015 natural sounds (the public natsound165 repository of Norman-Haignere,
Kanwisher & McDermott 2015). --model names a function (or class) that returns the model to
measure, its weights loaded, called with no arguments; --layers names its submodules, each "name"
(a conv map [B, C, F, T]) or "name:tokens" ([B, T, D]) or "name:vector" ([B, D]). Bad input of any
kind ends the command with one line on stderr, before any sound is run.
"""
from __future__ import annotations

import argparse
import sys

from topoaudio.commandline import OneLineParser, positive_int

PROG = "topoaudio evaluate"
SHEET_KINDS = ("channel_freq", "channels")  # topoaudio.sheet.KINDS, without importing torch for --help
MODEL_OPTIONS = ("layers", "sample_rate", "input", "untrained", "positions", "seed", "name")

__all__ = ["OneLineParser", "main", "positive_int"]  # readout imports OneLineParser from here


def parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=" ".join(__doc__.split("\n\n")[0].split()),
                           epilog="Exactly one of --checkpoint and --model.")
    what = parser.add_argument_group("what to measure")
    what.add_argument("--checkpoint", action="append", metavar="CKPT",
                      help="a training checkpoint (repeat for several seeds or settings)")
    what.add_argument("--model", metavar="MODULE:FACTORY",
                      help="your own model: package.module:factory or path/to/file.py:factory, a callable "
                           "returning the nn.Module to measure")
    what.add_argument("--layers", metavar="NAME[:LAYOUT],...",
                      help="--model: layers to read (submodule names), each laid out as conv [B, C, F, T] "
                           "(the default), tokens [B, T, D] or vector [B, D]")
    what.add_argument("--sample_rate", type=positive_int, metavar="HZ",
                      help="--model: the rate of the waveforms it takes (required with --input waveform)")
    what.add_argument("--input", choices=("waveform", "cochleagram"), default="waveform",
                      help="--model: what it is given: waveforms [B, T], or topoaudio's cochleagrams "
                           "[B, 1, 211, 390] of 20 kHz sounds")
    what.add_argument("--untrained", metavar="MODULE:FACTORY",
                      help="--model: builds its untrained control (default: a copy re-initialised by "
                           "each module's reset_parameters)")
    what.add_argument("--positions", metavar="FILE",
                      help="--model: unit positions in mm, {layer: [N, 2]} in a .npz or .pt file "
                           "(default: the sheet kind's own layout)")
    what.add_argument("--seed", type=int, default=0,
                      help="--model: seeds its untrained control, its sheets' jitter and the nulls")
    what.add_argument("--name", help="--model: its label in the report (default: the --model spec)")
    data = parser.add_argument_group("sounds and output")
    data.add_argument("--natsound165", required=True, metavar="DIR",
                      help="directory with wav/, category_labels.csv and components.mat")
    data.add_argument("--out", required=True, metavar="DIR",
                      help="directory for figures, metrics.json, report.md")
    how = parser.add_argument_group("how")
    how.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    how.add_argument("--shuffles", type=positive_int, default=100,
                     help="shuffles for the smoothness null (at least 1)")
    how.add_argument("--permutations", type=positive_int, default=None,
                     help="permutations for Moran's I, the primary statistic (default 999; at least "
                          "1; with n, the smallest p is 1 / (n + 1))")
    how.add_argument("--sheet", metavar="KIND | LAYER=KIND,...", default=None,
                     help=f"sheet kind ({', '.join(SHEET_KINDS)}). Checkpoints: lays runs trained without "
                          "sheets of their own (topo none or topoloss) on this kind (default: the kind in "
                          "their config). --model: for every layer, or per layer (default: channel_freq "
                          "for conv layers, channels for tokens and vectors)")
    return parser


def main(argv=None) -> dict:
    command = parser()
    args = command.parse_args(argv)
    if (args.checkpoint is None) == (args.model is None):
        command.error("give exactly one of --checkpoint (topoaudio's runs) and --model (your own)")
    from topoaudio.analysis.evaluation import DEFAULT_N_PERMUTATIONS

    permutations = args.permutations or DEFAULT_N_PERMUTATIONS
    try:
        if args.checkpoint is not None:
            given = [f"--{name}" for name in MODEL_OPTIONS
                     if getattr(args, name) != command.get_default(name)]
            if given:
                command.error(f"{', '.join(given)} apply only to --model")
            if args.sheet is not None and args.sheet not in SHEET_KINDS:
                command.error(f"--sheet: with --checkpoint one of {', '.join(SHEET_KINDS)}, "
                              f"got {args.sheet!r}")
            from topoaudio.analysis.evaluation import evaluate_checkpoints

            result = evaluate_checkpoints(args.checkpoint, args.natsound165, args.out, args.device,
                                          args.shuffles, permutations, args.sheet)
        else:
            if not args.layers:
                command.error("--model needs --layers: the submodules to read")
            from topoaudio.analysis.any_model import measure_model, read_positions

            model = build(args.model, "--model")
            untrained = build(args.untrained, "--untrained", call=False) if args.untrained else None
            result = measure_model(model, args.layers, args.natsound165, args.out,
                                   sample_rate=args.sample_rate, input=args.input,
                                   sheet=sheet_option(args.sheet, command), untrained=untrained,
                                   positions=read_positions(args.positions) if args.positions else None,
                                   seed=args.seed, name=args.name or args.model, device=args.device,
                                   shuffles=args.shuffles, permutations=permutations)
    except (ValueError, OSError) as error:  # OSError: FileNotFoundError, permissions, a full disk
        sys.exit(f"{PROG}: {' '.join(str(error).split()) or type(error).__name__}")
    print(f"report: {result['report']}")
    return result


def sheet_option(text: str | None, command):
    """--sheet for --model: a kind, or LAYER=KIND,... ({layer: kind})."""
    if text is None or "=" not in text:
        return text
    kinds = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        layer, equals, kind = part.rpartition("=")
        if not equals or not layer:
            command.error(f"--sheet: expected LAYER=KIND,..., got {part!r}")
        kinds[layer.strip()] = kind.strip()
    return kinds


def build(spec: str, option: str, call: bool = True):
    """The object `spec` names ("package.module:attr" or "path/to/file.py:attr"), called with no
    arguments when `call`; a ValueError naming the option and what went wrong otherwise."""
    import importlib
    import importlib.util
    import pathlib

    module_name, colon, attribute = spec.rpartition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"{option} {spec!r}: expected package.module:factory or path/to/file.py:factory")
    try:
        if module_name.endswith(".py"):
            path = pathlib.Path(module_name)
            if not path.is_file():
                raise FileNotFoundError(f"{option} {spec!r}: {path} not found")
            loaded = importlib.util.spec_from_file_location(f"_topoaudio_user_{path.stem}", path)
            module = importlib.util.module_from_spec(loaded)
            sys.modules[loaded.name] = module  # dataclasses and pickling look modules up by name
            loaded.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (FileNotFoundError, ValueError):
        raise
    except Exception as error:  # noqa: BLE001 - the user's module may raise anything on import
        raise ValueError(f"{option} {spec!r}: importing {module_name} failed: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}") from None
    target = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{option} {spec!r}: {module_name} has no {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{option} {spec!r}: {attribute} is a {type(target).__name__}, not a factory")
    if not call:
        return target
    try:
        return target()
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"{option} {spec!r}: calling {attribute}() failed: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}") from None


if __name__ == "__main__":
    main()
