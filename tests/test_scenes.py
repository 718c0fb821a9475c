"""SpeechMusicScenes (issue 11): determinism, label balance, speaker hold-out, SNR, inventory, and a
clear error when the synthesis packages are missing. Tiny sizes: a clip takes ~15 ms."""
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from topoaudio.data import SpeechMusicScenes, music, speech
from topoaudio.data.procedural import _unit_rms
from topoaudio.data.scenes import CATEGORIES, ENVIRONMENT_KINDS


def test_same_seed_split_index_gives_the_same_clip_whatever_came_before():
    first = SpeechMusicScenes(12)
    expected = [first[i] for i in range(3)]  # speech, music, environment
    again = SpeechMusicScenes(12)
    again[7], again[5], again[4]  # other words, instruments and textures in between
    for i in (2, 1, 0):
        waveform, target = again[i]
        assert torch.equal(waveform, expected[i][0]) and target == expected[i][1]


def test_different_index_split_or_seed_gives_a_different_clip():
    train = SpeechMusicScenes(12)
    assert not torch.equal(train[0][0], train[3][0])
    assert not torch.equal(train[0][0], SpeechMusicScenes(12, split="validation")[0][0])
    assert not torch.equal(train[1][0], SpeechMusicScenes(12, seed=1)[1][0])


def test_dataloader_workers_give_the_same_clips():
    dataset = SpeechMusicScenes(6)
    direct = torch.stack([dataset[i][0] for i in range(6)])
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2)
    batches = list(loader)
    assert torch.equal(torch.cat([waveforms for waveforms, _ in batches]), direct)
    assert batches[0][1]["category"].tolist() == [0, 1, 2]  # the default collate stacks the dict


def test_clips_are_float32_demeaned_rms_0_1():
    dataset = SpeechMusicScenes(3, seconds=1.5, sr=16000)
    for i in range(3):
        waveform, _ = dataset[i]
        assert waveform.dtype == torch.float32 and waveform.shape == (24000,)
        assert torch.isfinite(waveform).all()
        assert abs(float(waveform.double().mean())) < 1e-6
        assert float(waveform.double().pow(2).mean().sqrt()) == pytest.approx(0.1, rel=1e-4)


def test_categories_words_and_instruments_are_balanced():
    dataset = SpeechMusicScenes(300, words=20)
    targets = [dataset.target(dataset.info(i)) for i in range(300)]
    assert Counter(t["category"] for t in targets) == {0: 100, 1: 100, 2: 100}
    words = Counter(t["word"] for t in targets if t["category"] == 0)
    assert set(words) == set(range(20)) and set(words.values()) == {5}
    instruments = Counter(t["instrument"] for t in targets if t["category"] == 1)
    assert max(instruments.values()) - min(instruments.values()) <= 1
    families = SpeechMusicScenes(300, instrument="family")
    counts = Counter(families.target(families.info(i))["instrument"] for i in range(1, 300, 3))
    assert set(counts) == set(range(music.N_FAMILIES)) and max(counts.values()) - min(counts.values()) <= 1
    kinds = Counter(dataset.info(i)["foreground"]["kind"] for i in range(2, 300, 3))
    assert set(kinds) == set(ENVIRONMENT_KINDS) and max(kinds.values()) - min(kinds.values()) <= 1


def test_targets_say_which_tasks_apply():
    dataset = SpeechMusicScenes(30)
    for i in range(30):
        target = dataset.target(dataset.info(i))
        assert set(target) == set(dataset.tasks)
        category = CATEGORIES[target["category"]]
        assert (target["word"] >= 0) == (target["speaker"] >= 0) == (category == "speech")
        assert (target["instrument"] >= 0) == (category == "music")
        for task, value in target.items():
            assert -1 <= value < dataset.tasks[task]


def test_no_voice_or_voice_variant_is_in_both_splits():
    assert not set(speech.TRAIN_VOICES) & set(speech.HELD_OUT_VOICES)
    assert not {v.variant for v in speech.TRAIN_VOICES} & {v.variant for v in speech.HELD_OUT_VOICES}
    train, validation = SpeechMusicScenes(300), SpeechMusicScenes(300, split="validation")
    train_names = {train.info(i)["foreground"]["voice_name"] for i in range(0, 300, 3)}
    validation_plans = [validation.info(i)["foreground"] for i in range(0, 300, 3)]
    assert not train_names & {p["voice_name"] for p in validation_plans}
    assert {validation.voices[p["voice"]] for p in validation_plans} <= set(speech.HELD_OUT_VOICES)
    assert all(validation.target(validation.info(i))["speaker"] == -1 for i in range(0, 300, 3))
    few = SpeechMusicScenes(300, voices=10)
    assert {few.target(few.info(i))["speaker"] for i in range(0, 300, 3)} <= set(range(10))


def test_snr_stays_in_range_and_is_the_mixing_ratio():
    dataset = SpeechMusicScenes(300)
    snrs = np.array([dataset.snr_db(i) for i in range(300)])
    assert snrs.min() >= -5 and snrs.max() <= 15
    assert snrs.min() < -3 and snrs.max() > 13  # the whole range is used
    for i in (0, 1, 2):  # rebuild items from their two sources: the waveform is that mixture
        plan = dataset.info(i)
        foreground, background = (_unit_rms(dataset._render(plan[p])) for p in ("foreground", "background"))
        assert np.mean(foreground ** 2) == pytest.approx(np.mean(background ** 2), rel=1e-9)  # both unit RMS
        mix = lfilter([1.0, -plan["tilt"]], [1.0], foreground + background * 10 ** (-plan["snr_db"] / 20))
        mix -= mix.mean()
        np.testing.assert_allclose(dataset[i][0].numpy(), 0.1 * mix / np.sqrt(np.mean(mix ** 2)), atol=1e-6)


def test_at_least_200_words_and_100_voices_that_all_speak():
    assert len(speech.WORDS) >= 200 and len(set(speech.WORDS)) == len(speech.WORDS)
    assert len(set(speech.TRAIN_VOICES)) >= 100 and SpeechMusicScenes.TASKS["speaker"] >= 100
    speech.check_installation()  # every variant is in the installed espeak-ng data
    for voice in speech.TRAIN_VOICES[::40] + speech.HELD_OUT_VOICES[::20]:
        word = speech.speak("morning", voice)
        assert 0.2 < len(word) / 20000 < 1.5 and np.sqrt(np.mean(word ** 2)) > 0.01


def test_espeak_and_soundfont_renderings_do_not_depend_on_history():
    voice = speech.TRAIN_VOICES[5]
    first = speech.speak("water", voice)
    speech.speak("thunder", speech.HELD_OUT_VOICES[3], pitch_shift=4)
    np.testing.assert_array_equal(speech.speak("water", voice), first)
    assert not np.array_equal(speech.speak("water", voice, pitch_shift=-4)[:len(first)], first[:len(first)])
    note = music.play(40, np.random.default_rng(1))
    music.play(music.PERCUSSION, np.random.default_rng(2))
    np.testing.assert_array_equal(music.play(40, np.random.default_rng(1)), note)


def test_klatt_voices_speak_the_same_word_the_same_way_every_time():
    # espeak-ng's Klatt synthesiser draws noise from the C library's rand(): without a seed per
    # word, these voices' words changed with each rendering, so scene items were not a function of
    # their index and a resumed run read other clips than a straight one
    voices = [v for v in speech.TRAIN_VOICES + speech.HELD_OUT_VOICES
              if v.variant in ("caleb", "Reed", "klatt", "klatt4", "announcer")][:5]
    assert len(voices) == 5
    for voice in voices:
        first = speech.speak("rabbit", voice, pitch_shift=-3, rate_scale=1.08)
        speech.speak("shadow", voice)
        np.testing.assert_array_equal(speech.speak("rabbit", voice, pitch_shift=-3, rate_scale=1.08),
                                      first)


def test_a_scene_is_the_same_clip_when_rendered_again():
    dataset = SpeechMusicScenes(80000)
    for index in (51540, 34935):  # spoken by caleb and Reed (Klatt voices) in the default run
        assert dataset.info(index)["foreground"]["kind"] == "speech"
        first = dataset[index][0]
        assert torch.equal(dataset[index][0], first)


def test_every_instrument_family_and_sound_effects_make_sound():
    for label in list(range(0, music.N_MELODIC, 8)) + [music.PERCUSSION]:
        assert np.sqrt(np.mean(music.play(label, np.random.default_rng(label), n=20000) ** 2)) > 1e-3
    effect, program = music.sound_effect(np.random.default_rng(0), n=20000)
    assert program in music.SOUND_EFFECTS and np.sqrt(np.mean(effect ** 2)) > 1e-4


def test_tasks_follow_the_options():
    dataset = SpeechMusicScenes(3, words=40, voices=10, instrument="family")
    assert dataset.tasks == dataset.TASKS == {"word": 40, "speaker": 10, "instrument": 16, "category": 3}
    assert SpeechMusicScenes.TASKS == {"word": 50, "speaker": len(speech.TRAIN_VOICES), "instrument": 121,
                                       "category": 3}
    assert SpeechMusicScenes(3, words=None).tasks["word"] == len(speech.WORDS)


@pytest.mark.parametrize("options, message", [
    ({"split": "test"}, "split must be one of"),
    ({"words": 1}, "words must be an integer in"),
    ({"words": 221}, "words must be an integer in"),
    ({"voices": 500}, "voices must be an integer in"),
    ({"instrument": "timbre"}, "instrument must be"),
    ({"seconds": 0.1}, "seconds must be in"),
    ({"sr": 100}, "sr must be"),
])
def test_bad_options_are_refused_before_work(options, message):
    with pytest.raises(ValueError, match=message):
        SpeechMusicScenes(3, **options)
    with pytest.raises(IndexError):
        SpeechMusicScenes(3)[3]


@pytest.mark.parametrize("package", ["espeakng_loader", "tinysoundfont", "pretty_midi"])
def test_missing_package_names_what_to_install(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(ImportError) as error:
        SpeechMusicScenes(3)
    text = str(error.value)
    assert "pip install espeakng-loader pretty-midi" in text
    assert "pip install --no-deps tinysoundfont" in text and "requirements.txt" in text


def test_scene_demo_writes_wavs_labels_and_pictures(tmp_path):
    import json

    import soundfile

    from topoaudio import demo

    with open(demo.main(["--scene", "--out", str(tmp_path)])) as handle:
        labels = json.load(handle)
    assert labels["tasks"] == SpeechMusicScenes.TASKS and len(labels["clips"]) == 6
    dataset = SpeechMusicScenes(6)
    for index, clip in enumerate(labels["clips"]):
        waveform, rate = soundfile.read(tmp_path / clip["wav"], dtype="float32")
        assert rate == 20000
        np.testing.assert_array_equal(waveform, dataset[index][0].numpy())
        assert clip["target"] == dataset[index][1]
        assert (tmp_path / clip["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "speech '" in labels["clips"][0]["description"]
