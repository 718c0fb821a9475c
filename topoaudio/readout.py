"""Linear readout of a trained model's frozen features (the paper's protocol; docs/READOUT.md).

    python -m topoaudio.readout --checkpoint CKPT --dataset NAME [--data_root DIR] [--layer L] [--out FILE]

A layer's activations [B, C, F, T] are averaged over frequency and time to [B, C], standardised with
the training part's mean and spread, and read out by a ridge classifier (one-vs-all targets +-1,
closed form) whose penalty is chosen by cross-validation on the training part only. Datasets:
esc50 (its 5 official folds: each fold is tested once by a readout trained on the other four, whose
penalty is chosen by leave-one-fold-out over those four), nsynth (instrument family; train -> test
split), speech_commands (training -> testing list), scenes (SpeechMusicScenes, train -> validation
split, one readout per task; needs no data_root). Bad input ends the command with one line on
stderr before any feature is computed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from topoaudio.commandline import OneLineParser
from topoaudio.environment import environment

PROG = "topoaudio readout"
DATASETS = ("esc50", "nsynth", "speech_commands", "scenes")
# absolute penalties on the summed squared error of standardised features (sklearn's alpha)
PENALTIES = tuple(10.0 ** k for k in range(-3, 6))
CV_FOLDS = 5


@dataclass
class Features:
    """Pooled features [n, C] (float64), labels {task: [n] int64, -1 where n/a}, groups [n] or None."""
    x: torch.Tensor
    labels: dict[str, torch.Tensor]
    groups: torch.Tensor | None = None


# --- the classifier ----------------------------------------------------------------------------------

def standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) [C] of the training features; a constant feature keeps std 1 (it stays 0)."""
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    return mean, torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))


def ridge_weights(x: torch.Tensor, labels: torch.Tensor, n_classes: int, penalties) -> list:
    """[(W [C, K], b [K])] per penalty: ridge regression of one-vs-all targets (+1 own class, -1
    others) on standardised x, with an unpenalised intercept; one eigendecomposition serves every
    penalty. x [n, C] float64, labels [n] in 0..K-1."""
    targets = -torch.ones(len(labels), n_classes, dtype=x.dtype)
    targets[torch.arange(len(labels)), labels] = 1.0
    x_mean, t_mean = x.mean(dim=0), targets.mean(dim=0)
    xc, tc = x - x_mean, targets - t_mean
    eigenvalues, vectors = torch.linalg.eigh(xc.T @ xc)
    projected = vectors.T @ (xc.T @ tc)
    out = []
    for penalty in penalties:
        weights = vectors @ (projected / (eigenvalues.clamp_min(0) + penalty)[:, None])
        out.append((weights, t_mean - x_mean @ weights))
    return out


def predict(x: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return (x @ weights + bias).argmax(dim=1)


def cv_folds(n: int, groups: torch.Tensor | None, folds: int, seed: int) -> list[torch.Tensor]:
    """Held-out masks: one per group (leave-one-group-out) or `folds` random folds."""
    if groups is not None:
        return [groups == g for g in torch.unique(groups)]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fold_of = torch.empty(n, dtype=torch.long)
    fold_of[order] = torch.arange(n) % folds
    return [fold_of == k for k in range(min(folds, n))]


def choose_penalty(x, labels, n_classes, penalties, groups=None, folds=CV_FOLDS, seed=0):
    """(best penalty, mean cross-validated accuracy per penalty). Each fold standardises with its
    own training part. Ties go to the larger penalty (the simpler readout)."""
    scores = torch.zeros(len(penalties), dtype=torch.float64)
    used = 0
    for held in cv_folds(len(labels), groups, folds, seed):
        if held.all() or not held.any():
            continue
        mean, std = standardiser(x[~held])
        fitted = ridge_weights((x[~held] - mean) / std, labels[~held], n_classes, penalties)
        test = (x[held] - mean) / std
        for i, (weights, bias) in enumerate(fitted):
            scores[i] += (predict(test, weights, bias) == labels[held]).double().mean()
        used += 1
    if used == 0:
        raise ValueError("cross-validation needs at least two folds with training items")
    scores /= used
    best = max(range(len(penalties)), key=lambda i: (round(float(scores[i]), 12), penalties[i]))
    return penalties[best], scores.tolist()


def readout(train_x, train_y, test_x, test_y, penalties=PENALTIES, groups=None, folds=CV_FOLDS,
            seed=0) -> dict:
    """Fit on the training part (penalty by CV on it alone), score on the test part.

    train_x [n, C], train_y [n] (-1: no label, dropped), likewise test. Returns accuracy, chance (the
    test accuracy of always answering the commonest training class), uniform chance (1 / classes),
    the chosen penalty, the CV accuracy per penalty, n_train, n_test, n_classes."""
    keep, keep_test = train_y >= 0, test_y >= 0
    train_x, train_y = train_x[keep].double(), train_y[keep]
    test_x, test_y = test_x[keep_test].double(), test_y[keep_test]
    groups = None if groups is None else groups[keep]
    if len(train_y) < 2 or len(test_y) < 1:
        raise ValueError(f"a readout needs >= 2 labelled training and >= 1 test items, got "
                         f"{len(train_y)} and {len(test_y)}")
    classes, dense = torch.unique(train_y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"the training labels hold one class ({int(classes[0])}): nothing to read out")
    penalty, cv_scores = choose_penalty(train_x, dense, len(classes), penalties, groups, folds, seed)
    mean, std = standardiser(train_x)
    [(weights, bias)] = ridge_weights((train_x - mean) / std, dense, len(classes), [penalty])
    predicted = classes[predict((test_x - mean) / std, weights, bias)]
    commonest = classes[torch.bincount(dense).argmax()]
    return {"accuracy": float((predicted == test_y).double().mean()),
            "chance": float((test_y == commonest).double().mean()),
            "uniform_chance": 1 / len(classes), "penalty": penalty,
            # an end of the grid may mean the best penalty lies beyond it (widen --penalties)
            "penalty_at_grid_edge": penalty in (min(penalties), max(penalties)),
            "cv_accuracy": dict(zip(map(str, penalties), cv_scores, strict=True)),
            "n_train": len(train_y), "n_test": len(test_y), "n_classes": len(classes)}


def fold_readout(features: Features, task: str, penalties=PENALTIES, seed=0) -> dict:
    """ESC-50's protocol: each group (fold) tested once by a readout trained on the others, its
    penalty chosen by leave-one-group-out among those. Accuracy: the mean over test folds."""
    per_fold = {}
    for g in torch.unique(features.groups).tolist():
        test = features.groups == g
        per_fold[str(g)] = readout(features.x[~test], features.labels[task][~test], features.x[test],
                                   features.labels[task][test], penalties, features.groups[~test],
                                   seed=seed)
    values = list(per_fold.values())

    def mean(key):
        return sum(v[key] for v in values) / len(values)

    return {"accuracy": mean("accuracy"), "chance": mean("chance"),
            "uniform_chance": mean("uniform_chance"),
            "accuracy_sd_over_folds": float(torch.tensor([v["accuracy"] for v in values]).std()),
            "penalty": {fold: v["penalty"] for fold, v in per_fold.items()},
            "n_train": values[0]["n_train"], "n_test": sum(v["n_test"] for v in values),
            "n_classes": max(v["n_classes"] for v in values), "folds": per_fold}


# --- features ----------------------------------------------------------------------------------------

@torch.no_grad()
def pooled_features(model, layer: str, dataset, *, batch_size: int = 16, device="cpu",
                    desc: str = "features", groups: torch.Tensor | None = None) -> Features:
    """The layer's activations averaged over frequency and time, [n, C] float64, for every item of
    `dataset` (items (waveform, label int) or (waveform, {task: label}))."""
    from topoaudio.models import tapped

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    chunks, labels = [], {}
    with tapped(model, [layer]) as taps:
        for waveform, target in tqdm(loader, desc=desc, unit="batch", file=sys.stderr):
            model(waveform.to(device))
            activation = taps[layer]
            if activation.dim() < 3:
                raise ValueError(f"layer {layer!r} gives shape {tuple(activation.shape)}; a readout "
                                 "layer must give [B, C, F, T] or [B, C, T]")
            chunks.append(activation.flatten(2).mean(dim=2).double().cpu())
            target = target if isinstance(target, dict) else {"label": target}
            for task, values in target.items():
                labels.setdefault(task, []).append(torch.as_tensor(values).long())
    return Features(torch.cat(chunks), {task: torch.cat(v) for task, v in labels.items()}, groups)


def _subset(dataset, limit: int, seed: int):
    """At most `limit` items, drawn at random (0: all)."""
    if not limit or len(dataset) <= limit:
        return dataset
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit]
    return torch.utils.data.Subset(dataset, sorted(index.tolist()))


def dataset_parts(name: str, data_root: str, seconds: float, args) -> dict:
    """{part: dataset} of a benchmark, each checked (layout, files) before any feature is computed:
    esc50 -> folds "1".."5"; the others -> "train", "test"."""
    from topoaudio import data

    if name == "esc50":
        return {str(k): data.ESC50(data_root, folds=(k,), seconds=seconds) for k in range(1, 6)}
    if name == "nsynth":
        return {"train": _subset(data.NSynth(data_root, "train", seconds=seconds), args.max_items, 0),
                "test": _subset(data.NSynth(data_root, "test", seconds=seconds), args.max_items, 1)}
    if name == "speech_commands":
        return {"train": _subset(data.SpeechCommands(data_root, "training", seconds=seconds),
                                 args.max_items, 0),
                "test": _subset(data.SpeechCommands(data_root, "testing", seconds=seconds),
                                args.max_items, 1)}
    scenes = data.SpeechMusicScenes
    return {"train": scenes(args.scenes_train, seed=args.seed, split="train", seconds=seconds),
            "test": scenes(args.scenes_test, seed=args.seed, split="validation", seconds=seconds)}


def run(checkpoint_path: str, dataset: str, data_root: str = "", layer: str | None = None, *,
        args=None, device: str = "cpu", penalties=PENALTIES) -> dict:
    """The whole benchmark for one checkpoint: {checkpoint, dataset, layer, results: {task: ...}}."""
    from topoaudio.checkpoint import load_trained

    args = args or parse([f"--checkpoint={checkpoint_path}", f"--dataset={dataset}"])
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset != "scenes" and not os.path.isdir(data_root or ""):
        raise FileNotFoundError(f"--data_root {data_root!r} is not a directory (the {dataset} layout)")
    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(f"checkpoint not found: {checkpoint_path}")
    model, _, config = load_trained(checkpoint_path)
    taps = list(getattr(model, "tap_names", ()))
    layer = layer or taps[-1]
    if layer not in taps:
        raise ValueError(f"--layer {layer!r} is not a tap of {config['model']}; its taps are {taps}")
    seconds = float(config.get("clip_seconds", 2.0))
    parts = dataset_parts(dataset, data_root, seconds, args)
    model.to(device)
    features = {part: pooled_features(model, layer, ds, batch_size=args.batch_size, device=device,
                                      desc=f"{dataset} {part}")
                for part, ds in parts.items()}
    results = {}
    if dataset == "esc50":
        joined = Features(torch.cat([f.x for f in features.values()]),
                          {"label": torch.cat([f.labels["label"] for f in features.values()])},
                          torch.cat([torch.full((len(f.x),), int(p)) for p, f in features.items()]))
        results["label"] = fold_readout(joined, "label", penalties, args.seed)
    else:
        train, test = features["train"], features["test"]
        for task in train.labels:
            if not bool((test.labels[task] >= 0).any()) or not bool((train.labels[task] >= 0).any()):
                results[task] = {"skipped": "no labelled items in the training or test part"}
                continue
            results[task] = readout(train.x, train.labels[task], test.x, test.labels[task], penalties,
                                    seed=args.seed)
    return {"checkpoint": checkpoint_path, "dataset": dataset, "layer": layer,
            "pooling": "mean over frequency and time", "classifier": "ridge (one-vs-all +-1, CV penalty)",
            "n_features": int(next(iter(features.values())).x.shape[1]), "results": results,
            "environment": environment()}


# --- command line ------------------------------------------------------------------------------------

def _positive(kind):
    def convert(text):
        value = kind(text)
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return convert


def parse(argv) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint")
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="what to read out")
    parser.add_argument("--data_root", default="", help="the dataset's directory (not for scenes)")
    parser.add_argument("--layer", default=None, help="a tap of the model (default: its last)")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch_size", type=_positive(int), default=16, help="clips per forward pass")
    parser.add_argument("--penalties", type=_positive(float), nargs="+", default=list(PENALTIES),
                        help="ridge penalties to cross-validate")
    parser.add_argument("--max_items", type=int, default=0,
                        help="nsynth / speech_commands: at most this many items per split, drawn at "
                             "random (0: all)")
    parser.add_argument("--scenes_train", type=_positive(int), default=600,
                        help="scenes: clips to train the readout on")
    parser.add_argument("--scenes_test", type=_positive(int), default=300,
                        help="scenes: clips to test it on")
    parser.add_argument("--seed", type=int, default=0, help="CV folds, subsets and scenes")
    args = parser.parse_args(argv)
    if args.max_items < 0:
        parser.error(f"--max_items must be >= 0, got {args.max_items}")
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    if args.out:  # where the results go, before any work (evaluate's --out check, for a file)
        from topoaudio.analysis.evaluation import writable_file

        try:
            writable_file(args.out)
        except ValueError as error:
            sys.exit(f"{PROG}: --out {args.out}: {error}")
    if args.dataset == "scenes":
        from topoaudio.data import scenes
        try:  # the scenes' synthesisers are separate packages: name them before any work
            scenes.check_packages()
        except ImportError as error:
            sys.exit(f"{PROG}: --dataset scenes: {error}")
    try:
        result = run(args.checkpoint, args.dataset, args.data_root, args.layer, args=args,
                     device=args.device, penalties=tuple(args.penalties))
    except (ValueError, OSError, RuntimeError) as error:
        sys.exit(f"{PROG}: {' '.join(str(error).split()) or type(error).__name__}")
    for task, res in result["results"].items():
        if "skipped" in res:
            print(f"{args.dataset} {task}: skipped ({res['skipped']})")
        else:
            print(f"{args.dataset} {task}: accuracy {res['accuracy']:.3f} (chance {res['chance']:.3f}, "
                  f"1/classes {res['uniform_chance']:.3f}), penalty {res['penalty']}, "
                  f"n train {res['n_train']}, n test {res['n_test']}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)
    return result


if __name__ == "__main__":
    main()
