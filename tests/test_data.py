"""Datasets: the procedural training set, and the loaders for published layouts on tiny fake trees."""
import json
import logging

import numpy as np
import pytest
import soundfile
import torch

from topoaudio.data import CLASSES, ESC50, NSynth, ProceduralSounds, SpeechCommands, WordSpeakerNoise
from topoaudio.data.datasets import normalise

SR = 20000
SAMPLES = 2 * SR
WORD_HZ = {"no": 300.0, "up": 500.0, "yes": 700.0}  # each word's files are a tone at its own pitch


def write_tone(path, hz, sr=16000, seconds=1.0, amplitude=0.3):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(sr * seconds)) / sr
    soundfile.write(path, amplitude * np.sin(2 * np.pi * hz * t), sr)


def write_corrupt(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).bytes(3000))  # no audio header: fails to decode


def peak_hz(waveform, sr=SR):
    spectrum = np.abs(np.fft.rfft(np.asarray(waveform, dtype=float)))
    return np.fft.rfftfreq(len(waveform), 1 / sr)[spectrum.argmax()]


def assert_normalised(waveform):
    assert waveform.dtype == torch.float32 and waveform.shape == (SAMPLES,)
    assert torch.isfinite(waveform).all()
    assert abs(waveform.mean().item()) < 1e-5
    assert waveform.pow(2).mean().sqrt().item() == pytest.approx(0.1, rel=1e-4)


# --- Speech Commands and the word-speaker-noise mixture ----------------------------------------------

@pytest.fixture
def speech_root(tmp_path):
    """3 words x 3 speakers at 16 kHz, one stereo 22.05 kHz clip, one corrupt clip, two noise files."""
    root = tmp_path / "speech_commands"
    for word, hz in WORD_HZ.items():
        for speaker in ("aaaa1111", "bbbb2222", "cccc3333"):
            write_tone(root / word / f"{speaker}_nohash_0.wav", hz)
    t = np.arange(22050) / 22050
    stereo = np.stack([0.3 * np.sin(2 * np.pi * WORD_HZ["no"] * t), np.zeros_like(t)], axis=1)
    soundfile.write(root / "no" / "dddd4444_nohash_1.wav", stereo, 22050)
    write_corrupt(root / "up" / "eeee5555_nohash_0.wav")
    (root / "validation_list.txt").write_text("yes/bbbb2222_nohash_0.wav\nno/bbbb2222_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("up/cccc3333_nohash_0.wav\n")
    noise = root / "_background_noise_"
    noise.mkdir()
    rng = np.random.default_rng(1)
    soundfile.write(noise / "white_noise.wav", 0.2 * rng.standard_normal(3 * 16000), 16000)
    soundfile.write(noise / "brown_noise.wav", np.cumsum(rng.standard_normal(3 * SR)) * 0.01, SR)
    return root


def test_speech_commands_subsets_follow_the_list_files(speech_root):
    subsets = {name: SpeechCommands(speech_root, name) for name in SpeechCommands.SUBSETS}
    relative = {name: {f"{p.parent.name}/{p.name}" for p, _ in ds.items} for name, ds in subsets.items()}
    assert relative["validation"] == {"yes/bbbb2222_nohash_0.wav", "no/bbbb2222_nohash_0.wav"}
    assert relative["testing"] == {"up/cccc3333_nohash_0.wav"}
    every_clip = {f"{p.parent.name}/{p.name}" for p in speech_root.glob("[!_]*/*.wav")}
    assert relative["training"] == every_clip - relative["validation"] - relative["testing"]
    assert len(every_clip) == 11
    for ds in subsets.values():
        assert ds.classes == ("no", "up", "yes")  # sorted words, no _background_noise_
        assert all(ds.classes[label] == path.parent.name for path, label in ds.items)
    with pytest.raises(ValueError, match="subset"):
        SpeechCommands(speech_root, "train")


def test_speech_commands_items_are_mono_resampled_padded_and_normalised(speech_root):
    ds = SpeechCommands(speech_root, "training")
    stereo = [i for i, (path, _) in enumerate(ds.items) if path.name.startswith("dddd")]
    for index, (path, label) in enumerate(ds.items):
        if path.name.startswith("eeee"):
            continue  # the corrupt one
        waveform, got_label = ds[index]
        assert got_label == label
        assert_normalised(waveform)
        # resampled, not merely relabelled: a 16 kHz tone read as 20 kHz would sit 25% higher
        assert peak_hz(waveform) == pytest.approx(WORD_HZ[ds.classes[label]], abs=2)
        # a 1 s clip is centred in 2 s of zeros (demeaning shifts the padding only negligibly)
        assert waveform[:9000].abs().max() < 1e-3 and waveform[-9000:].abs().max() < 1e-3
        assert waveform[10500:29500].abs().min() < 0.01 < waveform[10500:29500].abs().max()
    assert stereo and ds.speaker(stereo[0]) == "dddd4444"


def test_corrupt_file_is_skipped_counted_and_logged(speech_root, caplog):
    ds = SpeechCommands(speech_root, "training")
    bad = next(i for i, (path, _) in enumerate(ds.items) if path.name.startswith("eeee"))
    assert bad + 1 < len(ds)
    with caplog.at_level(logging.WARNING, logger="topoaudio.data.datasets"):
        waveform, label = ds[bad]
    assert "eeee5555_nohash_0.wav" in caplog.text
    following_waveform, following_label = ds[bad + 1]
    torch.testing.assert_close(waveform, following_waveform)  # the next readable item stands in
    assert label == following_label
    assert ds.skipped == [ds.items[bad][0]]
    for index in range(len(ds)):  # a full epoch runs; the bad file is not retried or recounted
        assert_normalised(ds[index][0])
    assert ds.skipped == [ds.items[bad][0]]
    assert SpeechCommands(speech_root, "training").find_unreadable() == [ds.items[bad][0]]
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    assert sum(batch.shape[0] for batch, _ in loader) == len(ds)


def test_nan_samples_and_cancelling_channels_are_refused_by_every_loader(tmp_path, caplog):
    """load_clip refuses what would become a blank or a noise clip, naming the file and why; a
    dataset skips such a file like one that does not decode."""
    from topoaudio.data import AudioFileDataset, AudioFileError, load_clip

    t = np.arange(16000) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    good, nan, antiphase, infinite = (tmp_path / f"{name}.wav" for name in ("good", "nan", "anti", "inf"))
    soundfile.write(good, np.stack([tone, 0.5 * tone], axis=1), 16000)  # stereo that adds up
    with_nan, with_inf = tone.copy(), tone.copy()
    with_nan[100], with_inf[5:7] = np.nan, np.inf
    soundfile.write(nan, with_nan, 16000, subtype="FLOAT")
    soundfile.write(infinite, with_inf, 16000, subtype="FLOAT")
    soundfile.write(antiphase, np.stack([tone, -tone], axis=1), 16000, subtype="PCM_16")
    for path, reason in [(nan, "1 of its 16000 samples is NaN or infinite"),
                         (infinite, "2 of its 16000 samples are NaN or infinite"),
                         (antiphase, "its 2 channels cancel when mixed to mono")]:
        with pytest.raises(AudioFileError) as refused:
            load_clip(path)
        assert str(refused.value).startswith(f"{path}: {reason}")
    assert_normalised(load_clip(good))
    ds = AudioFileDataset([(good, 0), (nan, 1), (antiphase, 2)], ("a", "b", "c"))
    with caplog.at_level(logging.WARNING, logger="topoaudio.data.datasets"):
        torch.testing.assert_close(ds[1][0], ds[0][0])  # the next readable item stands in
    assert "nan.wav (1 of its 16000 samples is NaN or infinite)" in caplog.text
    assert AudioFileDataset(ds.items, ds.classes).find_unreadable() == [nan, antiphase]


def test_mixture_has_the_drawn_snr_and_is_deterministic(speech_root):
    noise_root = speech_root / "_background_noise_"
    mix = WordSpeakerNoise(speech_root, noise_root, size=12, snr_db=(-5, 15), seed=3)
    again = WordSpeakerNoise(speech_root, noise_root, size=12, snr_db=(-5, 15), seed=3)
    snrs, noise_files = [], set()
    for index in reversed(range(len(mix))):  # reverse order: items must not depend on access order
        item = mix.item(index)
        waveform, label = mix[index]
        assert_normalised(waveform)
        torch.testing.assert_close(waveform, item["speech"] + item["noise"])
        measured = 10 * np.log10(item["speech"].pow(2).mean().item() / item["noise"].pow(2).mean().item())
        assert measured == pytest.approx(item["snr_db"], abs=0.01)
        assert -5 <= item["snr_db"] <= 15
        assert label == item["label"] == mix.classes.index(item["speech_path"].parent.name)
        assert mix.speaker(index) == item["speaker"] == item["speech_path"].name.split("_nohash_")[0]
        assert peak_hz(item["speech"]) == pytest.approx(WORD_HZ[mix.classes[label]], abs=2)
        torch.testing.assert_close(again[index][0], waveform, rtol=0, atol=0)
        snrs.append(item["snr_db"])
        noise_files.add(item["noise_path"].name)
    assert np.ptp(snrs) > 5  # SNRs really are drawn, not fixed
    assert noise_files == {"white_noise.wav", "brown_noise.wav"}
    assert [p.name for p in mix.skipped] == ["eeee5555_nohash_0.wav"]  # 12 items visit every clip
    other_seed = WordSpeakerNoise(speech_root, noise_root, size=12, seed=4)
    assert not torch.equal(other_seed[0][0], mix[0][0])


def test_pure_noise_mixture_when_speech_is_silent(tmp_path, speech_root):
    noise = tmp_path / "noise" / "nested"
    noise.mkdir(parents=True)
    soundfile.write(noise / "hum.wav", 0.5 * np.sin(2 * np.pi * 1234 * np.arange(SR) / SR), SR)
    silent = tmp_path / "silent"
    (silent / "zero").mkdir(parents=True)
    soundfile.write(silent / "zero" / "ffff6666_nohash_0.wav", np.zeros(16000), 16000)
    (silent / "validation_list.txt").write_text("")
    (silent / "testing_list.txt").write_text("")
    mix = WordSpeakerNoise(silent, tmp_path / "noise", size=2, snr_db=(0, 0))  # found recursively
    item = mix.item(0)
    assert_normalised(item["waveform"])
    assert item["speech"].abs().max() == 0 and item["label"] == 0
    assert peak_hz(item["waveform"]) == pytest.approx(1234, abs=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no .wav files under"):
        WordSpeakerNoise(speech_root, empty, size=2)
    with pytest.raises(ValueError, match="size"):
        WordSpeakerNoise(speech_root, tmp_path / "noise", size=0)


# --- ESC-50 and NSynth -------------------------------------------------------------------------------

@pytest.fixture
def esc50_root(tmp_path):
    """Six 5 s clips at 44.1 kHz over folds 1-3 and three targets, plus one corrupt and one silent clip.
    Each clip plays 1 kHz, then (1.5 s to 3.5 s) its target's tone, then 3 kHz: a centre crop of 2 s
    keeps only the middle tone."""
    root = tmp_path / "ESC-50"
    (root / "meta").mkdir(parents=True)
    (root / "audio").mkdir()
    names = {0: "dog", 1: "rain", 2: "clock_tick"}
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    sr = 44100
    t = np.arange(5 * sr) / sr
    for k, (fold, target) in enumerate([(1, 0), (1, 1), (2, 2), (2, 0), (3, 1), (3, 2)]):
        middle = 1500 + 500 * target
        hz = np.where(t < 1.5, 1000, np.where(t < 3.5, middle, 3000))
        filename = f"{fold}-{k}-A-{target}.wav"
        soundfile.write(root / "audio" / filename, 0.3 * np.sin(2 * np.pi * hz * t), sr)
        rows.append(f"{filename},{fold},{target},{names[target]},False,{k},A")
    write_corrupt(root / "audio" / "2-99-A-1.wav")
    rows.append("2-99-A-1.wav,2,1,rain,False,99,A")
    soundfile.write(root / "audio" / "3-98-A-0.wav", np.zeros(sr), sr)
    rows.append("3-98-A-0.wav,3,0,dog,False,98,A")
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


def test_esc50_folds_targets_and_centre_crop(esc50_root):
    fold1 = ESC50(esc50_root, folds=(1,))
    assert [p.name for p, _ in fold1.items] == ["1-0-A-0.wav", "1-1-A-1.wav"]
    assert fold1.labels == [0, 1]
    assert fold1.classes == ("dog", "rain", "clock_tick")
    for index in range(len(fold1)):
        waveform, label = fold1[index]
        assert_normalised(waveform)
        assert peak_hz(waveform) == pytest.approx(1500 + 500 * label, abs=2)  # only the middle tone
    everything = ESC50(esc50_root)
    assert len(everything) == 8 and sorted(set(everything.labels)) == [0, 1, 2]
    assert all(int(p.name.split("-")[0]) in (2, 3) for p, _ in ESC50(esc50_root, folds=[2, 3]).items)
    with pytest.raises(ValueError, match="folds"):
        ESC50(esc50_root, folds=(0, 6))


def test_esc50_corrupt_and_silent_clips(esc50_root):
    ds = ESC50(esc50_root, folds=(2, 3))
    names = [p.name for p, _ in ds.items]
    bad, silent = names.index("2-99-A-1.wav"), names.index("3-98-A-0.wav")
    torch.testing.assert_close(ds[bad][0], ds[(bad + 1) % len(ds)][0])
    assert [p.name for p in ds.skipped] == ["2-99-A-1.wav"]
    waveform, label = ds[silent]
    assert label == 0 and waveform.shape == (SAMPLES,) and waveform.abs().max() == 0  # zeros, not NaN
    assert normalise(torch.zeros(10)).abs().max() == 0


@pytest.fixture
def nsynth_root(tmp_path):
    """Three 4 s NSynth notes at 16 kHz in nsynth-valid."""
    root = tmp_path / "nsynth"
    notes = {"bass_synthetic_033-022-050": (0, "bass", 2, "synthetic", 22),
             "guitar_acoustic_010-060-100": (3, "guitar", 0, "acoustic", 60),
             "vocal_electronic_003-069-127": (10, "vocal", 1, "electronic", 69)}
    examples = {}
    for note, (family, family_str, source, source_str, pitch) in notes.items():
        write_tone(root / "nsynth-valid" / "audio" / f"{note}.wav", 440 * 2 ** ((pitch - 69) / 12), seconds=4)
        examples[note] = {"note_str": note, "instrument_family": family, "instrument_family_str": family_str,
                          "instrument_source": source, "instrument_source_str": source_str, "pitch": pitch,
                          "velocity": 100, "sample_rate": 16000, "qualities": [0] * 10}
    (root / "nsynth-valid" / "examples.json").write_text(json.dumps(examples))
    return root


def test_nsynth_targets(nsynth_root):
    families = NSynth(nsynth_root, split="valid")
    assert families.labels == [0, 3, 10]
    assert len(families.classes) == 11
    assert (families.classes[0], families.classes[3], families.classes[10]) == ("bass", "guitar", "vocal")
    for index in range(len(families)):
        assert_normalised(families[index][0])
    sources = NSynth(nsynth_root, split="valid", target="instrument_source")
    assert sources.labels == [2, 0, 1] and sources.classes == ("acoustic", "electronic", "synthetic")
    pitches = NSynth(nsynth_root, split="valid", target="pitch")
    assert pitches.labels == [22, 60, 69] and pitches.classes[69] == "69"
    waveform, label = pitches[2]
    assert peak_hz(waveform) == pytest.approx(440, abs=2)
    with pytest.raises(ValueError, match="qualities"):
        NSynth(nsynth_root, split="valid", target="qualities")
    with pytest.raises(ValueError, match="split"):
        NSynth(nsynth_root, split="validation")


def test_missing_roots_name_the_path_and_the_layout(tmp_path, speech_root, esc50_root, nsynth_root):
    nowhere = tmp_path / "nowhere"
    for make, layout in [(lambda: SpeechCommands(nowhere), "Speech Commands"),
                         (lambda: ESC50(nowhere), "ESC-50"),
                         (lambda: NSynth(nowhere), "NSynth"),
                         (lambda: WordSpeakerNoise(nowhere, speech_root, 4), "Speech Commands"),
                         (lambda: WordSpeakerNoise(speech_root, nowhere, 4), "recursively")]:
        with pytest.raises(FileNotFoundError, match=layout) as error:
            make()
        assert str(nowhere) in str(error.value)
    (speech_root / "testing_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match="testing_list.txt"):
        SpeechCommands(speech_root)
    (esc50_root / "meta" / "esc50.csv").unlink()
    with pytest.raises(FileNotFoundError, match="esc50.csv"):
        ESC50(esc50_root)
    with pytest.raises(FileNotFoundError, match="nsynth-train"):
        NSynth(nsynth_root)  # only nsynth-valid exists


# --- the procedural training set ---------------------------------------------------------------------

def test_procedural_items_are_normalised_and_labels_balanced():
    ds = ProceduralSounds(3 * len(CLASSES), seed=5)
    assert ds.classes == CLASSES and ds.sr == SR and 10 <= len(CLASSES) <= 16
    labels = []
    for index in range(len(ds)):
        waveform, label = ds[index]
        assert_normalised(waveform)
        labels.append(label)
    assert np.bincount(labels).tolist() == [3] * len(CLASSES)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_procedural_items_are_a_function_of_seed_and_index():
    ds = ProceduralSounds(40, seed=7)
    later = ds[29][0]
    for index in (3, 17, 29):  # different access order, and a fresh instance
        torch.testing.assert_close(ProceduralSounds(40, seed=7)[index][0], ds[index][0], rtol=0, atol=0)
    torch.testing.assert_close(ds[29][0], later, rtol=0, atol=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False)
    first_batch = next(iter(loader))[0]
    torch.testing.assert_close(first_batch[5], ds[5][0], rtol=0, atol=0)
    assert not torch.equal(ProceduralSounds(40, seed=8)[3][0], ds[3][0])
    # same class, different index: a different draw of the nuisance parameters
    assert abs(torch.nn.functional.cosine_similarity(ds[3][0], ds[3 + len(CLASSES)][0], dim=0)) < 0.9


def test_procedural_other_rates_lengths_and_bad_arguments():
    low_rate = ProceduralSounds(len(CLASSES), sr=8000, seconds=0.7)  # formants clamped below Nyquist
    for index in range(len(low_rate)):
        waveform, _ = low_rate[index]
        assert waveform.shape == (5600,) and torch.isfinite(waveform).all()
        assert waveform.pow(2).mean().sqrt().item() == pytest.approx(0.1, rel=1e-4)
    assert ProceduralSounds(1, sr=16000, seconds=1 / 3)[0][0].shape == (5333,)
    for bad in [dict(size=0), dict(size=2.5), dict(size=1, sr=0), dict(size=1, seconds=0),
                dict(size=1, seconds=-1.0)]:
        with pytest.raises(ValueError):
            ProceduralSounds(**bad)


def band_statistics(waveform):
    """Mean and standard deviation over 20 ms frames of ~20 log-spaced log band energies (100 Hz to
    10 kHz at 20 kHz): [2 * bands]."""
    frames = waveform[: len(waveform) // 400 * 400].reshape(-1, 400) * np.hanning(400)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    band_starts = np.unique(np.geomspace(2, 200, 24).astype(int))
    bands = np.log(np.add.reduceat(power, band_starts, axis=1)[:, :-1] + 1e-10)  # last band: above 10 kHz
    return np.concatenate([bands.mean(0), bands.std(0)])


def test_procedural_classes_are_distinguishable():
    """A nearest-class-mean classifier on band statistics, fitted on one seed and tested on another,
    must beat chance (1/15) by far: it would not if classes were the same sound under another name."""
    count = len(CLASSES)
    train, test = ProceduralSounds(10 * count, seed=1), ProceduralSounds(10 * count, seed=2)
    train_x = np.stack([band_statistics(train[i][0].numpy()) for i in range(len(train))])
    test_x = np.stack([band_statistics(test[i][0].numpy()) for i in range(len(test))])
    train_y, test_y = np.arange(len(train)) % count, np.arange(len(test)) % count
    centre, scale = train_x.mean(0), train_x.std(0) + 1e-9
    means = np.stack([((train_x - centre) / scale)[train_y == k].mean(0) for k in range(count)])
    distances = ((((test_x - centre) / scale)[:, None] - means[None]) ** 2).sum(-1)
    accuracy = (distances.argmin(1) == test_y).mean()
    assert accuracy > 0.3
    speech = [k for k, name in enumerate(CLASSES) if name.startswith("speech")]
    words = np.isin(test_y, speech)
    word_accuracy = (np.array(speech)[distances[words][:, speech].argmin(1)] == test_y[words]).mean()
    assert word_accuracy > 0.36  # words differ from each other, not just from music and noise (chance 0.2)


# --- bad metadata and skipped files ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../outside.wav", "/etc/passwd", "sub/../../outside.wav"])
def test_metadata_naming_files_outside_the_dataset_is_refused(esc50_root, nsynth_root, name):
    outside = esc50_root.parent / "outside.wav"
    write_tone(outside, 440.0)
    csv_path = esc50_root / "meta" / "esc50.csv"
    csv_path.write_text(csv_path.read_text() + f"{name},1,0,dog,False,1,A\n")
    with pytest.raises(ValueError, match=f"esc50.csv names '{name}', which is not a file inside"):
        ESC50(esc50_root, folds=(1,))
    examples_path = nsynth_root / "nsynth-valid" / "examples.json"
    examples = json.loads(examples_path.read_text())
    note = name[:-len(".wav")] if name.endswith(".wav") else name
    examples[note] = next(iter(examples.values()))
    examples_path.write_text(json.dumps(examples))
    with pytest.raises(ValueError, match="examples.json names .*, which is not a file inside"):
        NSynth(nsynth_root, split="valid")


def test_training_logs_how_many_unreadable_files_were_skipped(speech_root, tmp_path, capsys):
    """The corrupt training clip is found by a DataLoader worker; the count still reaches the log."""
    from topoaudio.training import train
    from topoaudio.training.config import TrainConfig

    config = TrainConfig(dataset="speech_commands", data_root=str(speech_root), clip_seconds=0.5,
                         batch_size=4, steps=2, topo="none", warmup_steps=1, num_workers=1,
                         log_every=1, eval_every=1000, checkpoint_every=1000, out=str(tmp_path / "run"))
    train(config)  # 8 training clips, 2 steps of 4: one epoch, which reaches the corrupt clip
    with open(tmp_path / "run" / "metrics.jsonl") as handle:
        records = [json.loads(line) for line in handle]
    skipped = [record for record in records if "skipped_files" in record]
    assert skipped == [{"step": 2, "skipped_files": {"train": 1, "validation": 0}}]
    assert "skipped unreadable audio files (named in the warnings above): train 1, validation 0" \
        in capsys.readouterr().out
