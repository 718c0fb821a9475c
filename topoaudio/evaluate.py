"""Measure trained models: maps, smoothness, patches, brain predictivity, controls, and a report.

    python -m topoaudio.evaluate --checkpoint CKPT [--checkpoint CKPT2 ...] --natsound165 DIR --out DIR
    topoaudio evaluate ...   (the same, as a console script)

DIR is a copy of the NH2015 natural sounds (the public natsound165 repository of Norman-Haignere,
Kanwisher & McDermott 2015). Bad input of any kind ends the command with one line on stderr, before
any measurement starts.
"""
from __future__ import annotations

import argparse
import sys

PROG = "topoaudio evaluate"
SHEET_KINDS = ("channel_freq", "channels")  # topoaudio.sheet.KINDS, without importing torch for --help


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other error of the command."""

    def error(self, message):
        sys.exit(f"{self.prog}: {message} (see --help)")


def positive_int(text: str) -> int:
    value = int(text)  # argparse turns the ValueError into "invalid positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def main(argv=None) -> dict:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="a training checkpoint (repeat for several seeds or settings)")
    parser.add_argument("--natsound165", required=True,
                        help="directory with wav/, category_labels.csv and components.mat")
    parser.add_argument("--out", required=True, help="directory for figures, metrics.json, report.md")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--shuffles", type=positive_int, default=100,
                        help="shuffles for the smoothness null (at least 1)")
    parser.add_argument("--permutations", type=positive_int, default=None,
                        help="permutations for Moran's I, the primary statistic (default 999; at least "
                             "1; with n, the smallest p is 1 / (n + 1))")
    parser.add_argument("--sheet", choices=SHEET_KINDS, default=None,
                        help="lay checkpoints trained without sheets of their own (topo none or topoloss) "
                             "on this kind of sheet (default: the kind in their config)")
    args = parser.parse_args(argv)
    from topoaudio.analysis.evaluation import DEFAULT_N_PERMUTATIONS, evaluate_checkpoints

    try:
        result = evaluate_checkpoints(args.checkpoint, args.natsound165, args.out, args.device, args.shuffles,
                                      args.permutations or DEFAULT_N_PERMUTATIONS, args.sheet)
    except (ValueError, OSError) as error:  # OSError: FileNotFoundError, permissions, a full disk
        sys.exit(f"{PROG}: {' '.join(str(error).split()) or type(error).__name__}")
    print(f"report: {result['report']}")
    return result


if __name__ == "__main__":
    main()
