"""Sounds and datasets. `builtin` synthesises a demo sound and `procedural` a whole labelled training set
from a seed (no files, no network); `scenes` mixes words (speech.py, espeak-ng), General MIDI music
(music.py, a SoundFont) and textures into multi-task scenes from installed packages; `datasets` reads
published datasets from a directory you name."""
from .builtin import demo_sound
from .datasets import (
    ESC50,
    AudioFileDataset,
    AudioFileError,
    NSynth,
    SpeechCommands,
    WordSpeakerNoise,
    load_clip,
    read_audio,
)
from .procedural import CLASSES, ProceduralSounds
from .scenes import SpeechMusicScenes

__all__ = ["demo_sound", "CLASSES", "ProceduralSounds", "AudioFileDataset", "AudioFileError",
           "SpeechCommands", "ESC50", "NSynth", "WordSpeakerNoise", "load_clip", "read_audio",
           "SpeechMusicScenes"]
