"""Measure trained models: maps, smoothness, patches, brain predictivity, and a report.

    python -m topoaudio.evaluate --checkpoint CKPT [--checkpoint CKPT2 ...] --natsound165 DIR --out DIR
    topoaudio evaluate ...   (the same, as a console script)
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="topoaudio evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="a training checkpoint (repeat for several seeds or settings)")
    parser.add_argument("--natsound165", required=True,
                        help="directory with wav/, category_labels.csv and components.mat")
    parser.add_argument("--out", required=True, help="directory for figures, metrics.json, report.md")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shuffles", type=int, default=100, help="shuffles for the smoothness null")
    args = parser.parse_args(argv)
    from topoaudio.analysis.evaluation import evaluate_checkpoints

    try:
        result = evaluate_checkpoints(args.checkpoint, args.natsound165, args.out, args.device, args.shuffles)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"topoaudio evaluate: {error}")
    print(f"report: {result['report']}")
    return result


if __name__ == "__main__":
    main()
