"""The speaker task measured (issue 21): its classes are the training voices, which the held-out
validation voices cannot measure, so validation adds new clips spoken by the training voices that
label only the speaker."""
import torch

from topoaudio.data import SpeechMusicScenes, speech
from topoaudio.training.config import TrainConfig
from topoaudio.training.data import build_datasets
from topoaudio.training.loop import validation_accuracy


def test_speaker_clips_are_new_renderings_by_training_voices_labelled_only_by_speaker():
    clips = SpeechMusicScenes(9, split="speaker_validation", words=10)
    train = SpeechMusicScenes(9, words=10)
    for i in range(9):
        plan = clips.info(i)
        assert plan["category_name"] == "speech"  # every clip speaks, unlike the 1 in 3 elsewhere
        voice = plan["foreground"]["voice"]
        assert clips.voices[voice] is speech.TRAIN_VOICES[voice]
        target = clips[i][1]
        assert target == {"word": -1, "speaker": voice, "instrument": -1, "category": -1}
    assert not torch.equal(clips[0][0], train[0][0])  # same index, another rendering
    held_out = SpeechMusicScenes(3, split="validation", words=10)
    assert held_out[0][1]["speaker"] == -1 and held_out.voices is speech.HELD_OUT_VOICES


def test_validation_measures_every_task_of_the_scenes():
    config = TrainConfig(train_size=30, val_size=6, scene_words=10)
    _, validation = build_datasets(config)
    assert len(validation) == 6 + 2
    targets = [validation[i][1] for i in range(len(validation))]
    assert all(t["speaker"] == -1 for t in targets[:6])  # held-out voices: no speaker class
    assert all(t["speaker"] >= 0 and t["word"] == -1 and t["category"] == -1 for t in targets[6:])

    class Constant(torch.nn.Module):  # predicts class 0 for every task
        def forward(self, waveforms):
            return {task: torch.nn.functional.one_hot(torch.zeros(len(waveforms), dtype=torch.long),
                                                      n).float()
                    for task, n in validation.datasets[0].tasks.items()}

    accuracy = validation_accuracy(Constant(), validation, torch.device("cpu"))
    assert set(accuracy) == {"word", "speaker", "instrument", "category"}
    assert accuracy["speaker"] is not None
    expected = sum(t["speaker"] == 0 for t in targets[6:]) / 2
    assert accuracy["speaker"] == expected
