"""Where a scenes model's validation errors fall: category and instrument-family accuracy by what
the clip holds (foreground, background kind, SNR), from a training checkpoint.

    python docs/run_logs/diagnose_scenes.py CHECKPOINT > diagnosis.md

Rebuilds the run's validation set (held-out voices, the run's seed and settings), predicts every
clip with the run's model, and reads each clip's plan (`SpeechMusicScenes.info`: no synthesis) to
say which clips the errors come from. Prints markdown tables and the instrument confusion pairs.
"""
from __future__ import annotations

import argparse
import collections

import torch

from topoaudio.checkpoint import load_trained
from topoaudio.data.scenes import SpeechMusicScenes
from topoaudio.training.config import TrainConfig
from topoaudio.training.data import collate

SNR_BINS = ((-5, 0), (0, 5), (5, 10), (10, 15))
FAMILIES = ("piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble",
            "brass", "reed", "pipe", "synth lead", "synth pad", "synth effects", "ethnic",
            "percussive", "drum kits")


def predictions(model, dataset, batch_size=32):
    out = collections.defaultdict(list)
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            waveforms, _ = collate(items)
            for task, logits in model(waveforms).items():
                out[task] += logits.argmax(-1).tolist()
    return out


def background_of(plan) -> str:
    kind = plan["background"]["kind"]
    return {"speech": "a word (distractor)", "music": "music (distractor)"}.get(kind, "a texture")


def table(rows, title):
    lines = [f"| {title} | clips | correct | accuracy |", "|---|---:|---:|---:|"]
    for key in sorted(rows):
        n, k = rows[key]
        lines.append(f"| {key} | {n} | {k} | {100 * k / n:.1f} % |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    args = parser.parse_args()
    model, _, saved = load_trained(args.checkpoint)
    config = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
    dataset = SpeechMusicScenes(config.val_size, seed=config.seed, split="validation",
                                seconds=config.clip_seconds, words=config.scene_words,
                                voices=config.scene_voices or None,
                                instrument=config.scene_instrument)
    predicted = predictions(model, dataset)
    by_category, by_instrument, confusions = {}, {}, collections.Counter()
    for i in range(len(dataset)):
        plan = dataset.info(i)
        category = plan["category_name"]
        snr = next(f"{lo} to {hi} dB" for lo, hi in SNR_BINS if plan["snr_db"] < hi or hi == 15)
        key = f"{category}, over {background_of(plan)}, SNR {snr}"
        n, k = by_category.get(key, (0, 0))
        by_category[key] = (n + 1, k + int(predicted["category"][i] == plan["category"]))
        if plan["category"] == 1:
            truth = dataset[i][1]["instrument"]
            guess = predicted["instrument"][i]
            key = f"over {background_of(plan)}, SNR {snr}"
            n, k = by_instrument.get(key, (0, 0))
            by_instrument[key] = (n + 1, k + int(guess == truth))
            if guess != truth:
                confusions[(truth, guess)] += 1
    print(f"# Validation errors of {args.checkpoint}\n")
    print(f"{len(dataset)} held-out clips, seed {config.seed}, {config.steps} steps.\n")
    print(table(by_category, "category: clip") + "\n")
    print(table(by_instrument, "instrument family: music clip") + "\n")
    print("Most frequent instrument confusions (true family -> predicted; GM family = program // 8: "
          f"{', '.join(f'{i} {name}' for i, name in enumerate(FAMILIES))}):\n")
    for (truth, guess), count in confusions.most_common(10):
        print(f"- {truth} -> {guess}: {count}")


if __name__ == "__main__":
    main()
