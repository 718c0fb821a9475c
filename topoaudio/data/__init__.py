"""Sounds and datasets. `builtin` synthesises a demo sound and `procedural` a whole labelled training set
from a seed (no files, no network); `datasets` reads published datasets from a directory you name."""
from .builtin import demo_sound
from .datasets import ESC50, AudioFileDataset, NSynth, SpeechCommands, WordSpeakerNoise, load_clip
from .procedural import CLASSES, ProceduralSounds

__all__ = ["demo_sound", "CLASSES", "ProceduralSounds", "AudioFileDataset", "SpeechCommands", "ESC50",
           "NSynth", "WordSpeakerNoise", "load_clip"]
