"""Can the word task of SpeechMusicScenes be solved from the long-term spectrum? (issue 11)

A linear classifier (multinomial logistic regression, weight decay picked on a fifth of the training
clips) on each speech clip's time-averaged cochleagram (211 numbers, no timing) is trained on the train
split and tested on the validation split (held-out voices). The issue requires <= 50 % with >= 40
word classes.

    OMP_NUM_THREADS=1 python bench/scenes_probe.py --train 4000 --validation 1000 --words 50
"""
from __future__ import annotations

import argparse
import time

import torch

from topoaudio.data import SpeechMusicScenes
from topoaudio.ops import cochleagram


def spectra(split: str, count: int, words: int, seed: int,
            batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-averaged cochleagrams [count, 211] and word labels [count] of the first `count` speech clips
    (every third item is speech)."""
    dataset = SpeechMusicScenes(3 * count, seed=seed, split=split, words=words)
    features, labels = [], []
    for start in range(0, count, batch):
        items = [dataset[3 * k] for k in range(start, min(count, start + batch))]
        waveforms = torch.stack([waveform for waveform, _ in items])
        with torch.no_grad():
            features.append(cochleagram(waveforms).mean(dim=-1).double())
        labels += [target["word"] for _, target in items]
    return torch.cat(features), torch.tensor(labels)


def fit(x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float) -> torch.nn.Linear:
    model = torch.nn.Linear(x.shape[1], classes).double()
    optimiser = torch.optim.LBFGS(model.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + weight_decay * model.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return model


def accuracy(model: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=4000, help="speech clips from the train split")
    parser.add_argument("--validation", type=int, default=1000, help="speech clips from the validation split")
    parser.add_argument("--words", type=int, default=50, help="word classes (>= 40 for the issue's test)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    x_train, y_train = spectra("train", args.train, args.words, args.seed)
    x_val, y_val = spectra("validation", args.validation, args.words, args.seed)
    synthesis = time.perf_counter() - start
    mean, std = x_train.mean(0), x_train.std(0) + 1e-12  # standardised with training statistics only
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    cut = len(x_train) * 4 // 5
    scores = {}
    for weight_decay in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1):
        model = fit(x_train[:cut], y_train[:cut], args.words, weight_decay)
        scores[weight_decay] = accuracy(model, x_train[cut:], y_train[cut:])
    best = max(scores, key=scores.get)
    model = fit(x_train, y_train, args.words, best)
    train_accuracy, val_accuracy = accuracy(model, x_train, y_train), accuracy(model, x_val, y_val)
    print("held-out-fifth accuracy by weight decay: "
          + ", ".join(f"{wd:g}: {acc:.3f}" for wd, acc in scores.items()))
    print(f"linear probe on time-averaged cochleagrams, word task ({args.words} words): "
          f"train {train_accuracy:.3f}, validation (held-out voices) {val_accuracy:.3f}, "
          f"chance {1 / args.words:.3f}; {args.train} + {args.validation} clips, weight decay {best:g}, "
          f"synthesis + cochleagrams {synthesis:.0f} s")
    return val_accuracy


if __name__ == "__main__":
    main()
