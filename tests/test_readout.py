"""Linear readout (topoaudio/readout.py): the ridge classifier and its cross-validated penalty on
planted features, and the whole command on tiny fake ESC-50 / NSynth / Speech Commands layouts
whose classes are tones of class-specific frequency (near 100 %) or carry shuffled labels (near
chance), with an untrained tiny checkpoint."""
import json

import numpy as np
import pytest
import soundfile
import torch

from topoaudio import readout
from topoaudio.training import train
from topoaudio.training.config import TrainConfig

SR = 16000
CLASS_HZ = (300.0, 1200.0, 4800.0)  # planted: each class a tone of its own frequency
TINY = dict(dataset="procedural", num_workers=0,
            clip_seconds=0.5, train_size=16, val_size=4, batch_size=4, steps=1, warmup_steps=0,
            log_every=1, eval_every=1000, checkpoint_every=1000, topo="none")


def write_tone(path, hz, rng, seconds=0.6):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(SR * seconds)) / SR
    tone = np.sin(2 * np.pi * hz * (1 + 0.02 * rng.standard_normal()) * t + rng.uniform(0, 6.3))
    soundfile.write(path, 0.3 * tone + 0.01 * rng.standard_normal(len(t)), SR)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "none"
    train(TrainConfig(**TINY, out=str(out)))
    return str(out / "checkpoint.pt")


def esc50(root, shuffle: bool, per_class_and_fold: int = 2):
    rng = np.random.default_rng(0)
    (root / "meta").mkdir(parents=True)
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    entries = [(fold, target, k) for fold in range(1, 6) for target in range(3)
               for k in range(per_class_and_fold)]
    labels = [target for _, target, _ in entries]
    if shuffle:
        labels = list(rng.permutation(labels))
    for (fold, target, k), label in zip(entries, labels, strict=True):
        name = f"{fold}-{target}{k}-A-{label}.wav"
        write_tone(root / "audio" / name, CLASS_HZ[target], rng)
        rows.append(f"{name},{fold},{label},class{label},False,{target}{k},A")
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


# --- the classifier on features ----------------------------------------------------------------------

def planted(n, classes=3, dims=12, shift=3.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    x = torch.randn(n, dims, generator=generator, dtype=torch.float64)
    x[:, :classes] += shift * torch.nn.functional.one_hot(labels, classes)
    return x * torch.linspace(0.01, 100, dims, dtype=torch.float64), labels  # scales: standardising matters


def test_separable_features_are_read_out_and_random_labels_stay_at_chance():
    x, y = planted(300)
    result = readout.readout(x[:200], y[:200], x[200:], y[200:])
    assert result["accuracy"] > 0.95
    assert result["n_train"] == 200 and result["n_test"] == 100 and result["n_classes"] == 3
    assert result["chance"] == pytest.approx(1 / 3, abs=0.02)
    shuffled = y[torch.randperm(300, generator=torch.Generator().manual_seed(1))]
    x, _ = planted(1200, seed=2)
    null = readout.readout(x[:600], shuffled.repeat(4)[:600], x[600:], shuffled.repeat(4)[600:1200])
    # 600 test items: chance 1/3 with a standard error of 0.019
    assert abs(null["accuracy"] - 1 / 3) < 4 * 0.019


def test_unlabelled_items_are_dropped_and_unknown_test_classes_count_as_errors():
    x, y = planted(90)
    y_train, y_test = y[:60].clone(), y[60:].clone()
    y_train[:6] = -1
    result = readout.readout(x[:60], y_train, x[60:], y_test)
    assert result["n_train"] == 54 and result["n_test"] == 30


def test_penalty_is_chosen_on_the_training_part_only():
    """Many noisy features, few items: cross-validation must prefer a large penalty; the test part
    (labels permuted) cannot change the choice."""
    generator = torch.Generator().manual_seed(3)
    y = torch.arange(40) % 2
    x = torch.randn(40, 60, generator=generator, dtype=torch.float64)
    x[:, 0] += 2.0 * y
    first = readout.readout(x[:30], y[:30], x[30:], y[30:])
    second = readout.readout(x[:30], y[:30], x[30:], y[30:].flip(0))
    assert first["penalty"] == second["penalty"] >= 1.0
    assert set(first["cv_accuracy"]) == {str(p) for p in readout.PENALTIES}


def test_ridge_weights_solve_the_normal_equations():
    x, y = planted(50, dims=5)
    [(weights, bias)] = readout.ridge_weights(x, y, 3, [2.0])
    targets = 2 * torch.nn.functional.one_hot(y, 3).double() - 1
    residual = x @ weights + bias - targets
    # gradient of |residual|^2 + 2 |W|^2 vanishes (intercept unpenalised)
    torch.testing.assert_close(x.T @ residual + 2.0 * weights, torch.zeros_like(weights), atol=1e-8,
                               rtol=0)
    torch.testing.assert_close(residual.sum(dim=0), torch.zeros(3, dtype=torch.float64), atol=1e-8,
                               rtol=0)


@pytest.mark.parametrize("train_y, message", [
    (torch.zeros(10, dtype=torch.long), "one class"),
    (torch.full((10,), -1), ">= 2 labelled training"),
])
def test_readout_refuses_what_it_cannot_fit(train_y, message):
    with pytest.raises(ValueError, match=message):
        readout.readout(torch.randn(10, 3), train_y, torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


# --- the command on fake layouts ---------------------------------------------------------------------

def test_esc50_folds_planted_tones_near_100_percent(checkpoint, tmp_path):
    root = esc50(tmp_path / "ESC-50", shuffle=False)
    out = tmp_path / "esc50.json"
    result = readout.main(["--checkpoint", checkpoint, "--dataset", "esc50", "--data_root", str(root),
                           "--layer", "block3", "--out", str(out)])
    label = result["results"]["label"]
    assert label["accuracy"] >= 0.9, label
    assert set(label["folds"]) == {"1", "2", "3", "4", "5"}
    assert all(fold["n_train"] == 24 and fold["n_test"] == 6 for fold in label["folds"].values())
    written = json.loads(out.read_text())
    assert written["results"]["label"]["accuracy"] == label["accuracy"]
    assert written["environment"]["torch_threads"] == torch.get_num_threads()
    assert result["layer"] == "block3" and result["n_features"] == 96


def test_esc50_shuffled_labels_stay_near_chance(checkpoint, tmp_path):
    root = esc50(tmp_path / "ESC-50", shuffle=True, per_class_and_fold=4)
    result = readout.main(["--checkpoint", checkpoint, "--dataset", "esc50", "--data_root", str(root)])
    label = result["results"]["label"]
    # 60 test items over 5 folds, chance ~1/3 (standard error ~0.06)
    assert label["accuracy"] < label["uniform_chance"] + 0.25, label


def test_nsynth_and_speech_commands_use_their_official_splits(checkpoint, tmp_path):
    rng = np.random.default_rng(5)
    nsynth = tmp_path / "nsynth"
    for split, count in (("train", 6), ("test", 2)):
        examples = {}
        for family in range(3):
            for k in range(count):
                note = f"f{family}_{split}_{k}"
                write_tone(nsynth / f"nsynth-{split}" / "audio" / f"{note}.wav", CLASS_HZ[family], rng)
                examples[note] = {"instrument_family": family, "instrument_family_str": f"fam{family}"}
        (nsynth / f"nsynth-{split}" / "examples.json").write_text(json.dumps(examples))
    result = readout.main(["--checkpoint", checkpoint, "--dataset", "nsynth", "--data_root", str(nsynth)])
    family = result["results"]["label"]
    assert (family["n_train"], family["n_test"]) == (18, 6) and family["accuracy"] >= 0.8, family

    speech = tmp_path / "speech_commands"
    testing = []
    for word, hz in zip(("no", "up", "yes"), CLASS_HZ, strict=True):
        for k in range(8):
            write_tone(speech / word / f"spk{k}_nohash_0.wav", hz, rng)
        testing += [f"{word}/spk6_nohash_0.wav", f"{word}/spk7_nohash_0.wav"]
    (speech / "testing_list.txt").write_text("\n".join(testing) + "\n")
    (speech / "validation_list.txt").write_text("no/spk5_nohash_0.wav\n")
    result = readout.main(["--checkpoint", checkpoint, "--dataset", "speech_commands", "--data_root",
                           str(speech), "--max_items", "100"])
    words = result["results"]["label"]
    assert (words["n_train"], words["n_test"]) == (17, 6) and words["accuracy"] >= 0.8, words


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "esc50", "--data_root", "/nonexistent"], "--data_root '/nonexistent' is not a directory"),
    (["--dataset", "esc50", "--layer", "head"], "--layer 'head' is not a tap of cochcnn"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--dataset", "esc50", "--penalties", "0"], "must be > 0"),
])
def test_bad_input_is_one_line_before_any_feature(argv, message, checkpoint, tmp_path, capsys):
    root = esc50(tmp_path / "ESC-50", shuffle=False, per_class_and_fold=1)
    argv = [a if a != "DATA" else str(root) for a in argv]
    if "--data_root" not in argv:
        argv += ["--data_root", str(root)]
    with pytest.raises(SystemExit) as stop:
        readout.main(["--checkpoint", checkpoint, *argv])
    assert message in str(stop.value.code) + capsys.readouterr().err
    assert "\n" not in str(stop.value.code)


def test_a_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(SystemExit, match="checkpoint not found"):
        readout.main(["--checkpoint", str(tmp_path / "none.pt"), "--dataset", "scenes"])


def test_scenes_read_out_each_task_and_skip_one_without_test_labels(checkpoint, tmp_path):
    result = readout.main(["--checkpoint", checkpoint, "--dataset", "scenes", "--scenes_train", "30",
                           "--scenes_test", "12", "--out", str(tmp_path / "scenes.json")])
    results = result["results"]
    # the validation split speaks with held-out voices: no speaker classes to test
    assert "skipped" in results["speaker"]
    assert results["category"]["n_train"] == 30 and results["category"]["n_test"] == 12
    assert results["word"]["n_train"] == 10  # every third scene is speech
    assert 0 <= results["category"]["accuracy"] <= 1


def test_scenes_without_their_packages_are_a_clear_error(checkpoint, monkeypatch):
    from topoaudio.data import scenes

    def missing():
        raise ImportError("espeak-ng is not installed: pip install espeakng-loader pretty-midi")

    monkeypatch.setattr(scenes, "check_packages", missing)
    with pytest.raises(SystemExit, match="--dataset scenes: espeak-ng is not installed: pip install"):
        readout.main(["--checkpoint", checkpoint, "--dataset", "scenes"])


def test_a_penalty_at_the_end_of_the_grid_is_flagged():
    x, y = planted(120)
    assert readout.readout(x[:80], y[:80], x[80:], y[80:], penalties=(1e5,))["penalty_at_grid_edge"]
    # many noisy features and few items: cross-validation picks an inner penalty of a wide grid
    generator = torch.Generator().manual_seed(4)
    y = torch.arange(60) % 2
    x = torch.randn(60, 40, generator=generator, dtype=torch.float64)
    x[:, :3] += 1.5 * y[:, None]
    inner = readout.readout(x[:45], y[:45], x[45:], y[45:], penalties=(1e-9, 1e-3, 10.0, 1e3, 1e12))
    assert inner["penalty"] in (1e-3, 10.0, 1e3) and not inner["penalty_at_grid_edge"], inner["cv_accuracy"]


@pytest.mark.parametrize("where, message", [
    ("/proc/x.json", "output directory /proc cannot be created or written"),
    ("DIR", "is a directory; name a file"),
    ("FILE/x.json", "is an existing file, not a directory"),
])
def test_a_bad_out_is_one_line_before_any_work(where, message, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the readout ran before --out was checked")

    monkeypatch.setattr(readout, "run", no_work)
    (tmp_path / "FILE").write_text("")
    out = where.replace("DIR", str(tmp_path)).replace("FILE", str(tmp_path / "FILE"))
    with pytest.raises(SystemExit) as stop:
        readout.main(["--checkpoint", "ckpt.pt", "--dataset", "scenes", "--out", out])
    assert str(stop.value.code).startswith(f"topoaudio readout: --out {out}: ")
    assert message in str(stop.value.code) and "\n" not in str(stop.value.code)


def test_out_in_a_new_directory_is_made(tmp_path, monkeypatch):
    monkeypatch.setattr(readout, "run", lambda *args, **kwargs: {"results": {}})
    out = tmp_path / "new" / "dir" / "r.json"
    readout.main(["--checkpoint", "ckpt.pt", "--dataset", "scenes", "--out", str(out)])
    assert json.loads(out.read_text()) == {"results": {}}
