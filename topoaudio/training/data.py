"""Datasets for training, chosen by config.dataset, and batching."""
from __future__ import annotations

import torch

from .config import DATASETS, TrainConfig

SCENE_SETTINGS = ("scene_words", "scene_voices", "scene_instrument")


def build_datasets(config: TrainConfig):
    """(train, validation) datasets; each item is (waveform [T] float32 at 20 kHz, label), the label
    an int, or for multi-task datasets {task: int class, -1 where the task does not apply}."""
    from topoaudio import data

    seconds = config.clip_seconds
    if config.dataset == "speech_music_scenes":
        return _speech_music_scenes(config)
    changed = [name for name in SCENE_SETTINGS if getattr(config, name) != getattr(TrainConfig, name)]
    if changed:
        raise ValueError(f"{', '.join(changed)} set the speech_music_scenes dataset, not "
                         f"{config.dataset!r}: leave them at their defaults")
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


def _speech_music_scenes(config: TrainConfig):
    # imported here: the scenes need espeak and a SoundFont player, the other datasets do not
    from topoaudio.data.scenes import SpeechMusicScenes

    options = dict(seconds=config.clip_seconds, words=config.scene_words,
                   voices=config.scene_voices or None, instrument=config.scene_instrument)
    try:
        # the split (held-out speakers and renderings), not the seed, separates validation from
        # training
        # The speaker task's classes are the training voices: held-out voices cannot measure it,
        # so validation adds val_size / 3 new clips of the training voices, labelled only with
        # the speaker (as many clips as the held-out part has spoken ones).
        held_out = SpeechMusicScenes(config.val_size, seed=config.seed, split="validation", **options)
        speakers = SpeechMusicScenes(max(1, config.val_size // 3), seed=config.seed,
                                     split="speaker_validation", **options)
        return (SpeechMusicScenes(config.train_size, seed=config.seed, split="train", **options),
                torch.utils.data.ConcatDataset([held_out, speakers]))
    except ImportError as error:  # a setting this machine cannot run: one line, like device=cuda
        raise ValueError(f"dataset speech_music_scenes: {error}") from None


def collate(items) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]:
    """(waveforms [B, T], labels [B]) or, for multi-task items, (waveforms, {task: labels [B]})."""
    waveforms = torch.stack([torch.as_tensor(waveform, dtype=torch.float32) for waveform, _ in items])
    targets = [target for _, target in items]
    if not isinstance(targets[0], dict):
        return waveforms, torch.tensor([int(label) for label in targets], dtype=torch.long)
    tasks = list(targets[0])
    odd = next((target for target in targets
                if not isinstance(target, dict) or set(target) != set(tasks)), None)
    if odd is not None:
        raise ValueError(f"a batch mixes targets {targets[0]!r} and {odd!r}: every item of a "
                         "multi-task dataset must label the same tasks")
    return waveforms, {task: torch.tensor([int(target[task]) for target in targets], dtype=torch.long)
                       for task in tasks}


class FrontendCollate:
    """collate, then the model's front end (without gradient): the DataLoader's collate_fn when
    the cochleagrams are computed in its workers (frontend_in_workers, issue 20). There the front
    end runs beside the scenes' synthesis, one thread per worker, while the main process runs only
    the network: on 2 cores, data and network each fill one. Batches are (cochleagrams
    [B, 1, C, frames], labels); the model's front end passes them on (CochlearFrontend.precomputed)."""

    def __init__(self, frontend: torch.nn.Module):
        self.frontend = frontend

    def __call__(self, items):
        waveforms, labels = collate(items)
        with torch.no_grad():
            return self.frontend(waveforms), labels
