"""Datasets for training, chosen by config.dataset, and batching."""
from __future__ import annotations

import torch

from .config import DATASETS, TrainConfig


def build_datasets(config: TrainConfig):
    """(train, validation) datasets; each item is (waveform [T] float32 at 20 kHz, label)."""
    from topoaudio import data

    seconds = config.clip_seconds
    if config.dataset == "procedural":
        return (data.ProceduralSounds(config.train_size, seed=config.seed, seconds=seconds),
                data.ProceduralSounds(config.val_size, seed=config.seed + 7919, seconds=seconds))
    if not config.data_root:
        raise ValueError(f"dataset {config.dataset!r} reads files: pass --data_root DIR")
    if config.dataset == "speech_commands":
        return (data.SpeechCommands(config.data_root, subset="training", seconds=seconds),
                data.SpeechCommands(config.data_root, subset="validation", seconds=seconds))
    if config.dataset == "esc50":
        return (data.ESC50(config.data_root, folds=(1, 2, 3, 4), seconds=seconds),
                data.ESC50(config.data_root, folds=(5,), seconds=seconds))
    if config.dataset == "nsynth":
        return (data.NSynth(config.data_root, split="train", seconds=seconds),
                data.NSynth(config.data_root, split="valid", seconds=seconds))
    if config.dataset == "word_speaker_noise":
        if not config.noise_root:
            raise ValueError("word_speaker_noise mixes speech with background sounds: pass --noise_root DIR")
        return (data.WordSpeakerNoise(config.data_root, config.noise_root, config.train_size,
                                      seed=config.seed, seconds=seconds),
                data.WordSpeakerNoise(config.data_root, config.noise_root, config.val_size,
                                      seed=config.seed + 7919, subset="validation", seconds=seconds))
    raise ValueError(f"unknown dataset {config.dataset!r}; choose one of {DATASETS}")


def collate(items) -> tuple[torch.Tensor, torch.Tensor]:
    waveforms = torch.stack([torch.as_tensor(waveform, dtype=torch.float32) for waveform, _ in items])
    labels = torch.tensor([int(label) for _, label in items], dtype=torch.long)
    return waveforms, labels
