"""The evaluation command end to end on tiny trained checkpoints and the real natsound165 set, and
its errors on bad input."""
import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import scipy.io
import torch
from conftest import shared_dir

from topoaudio import checkpoint
from topoaudio import evaluate as evaluate_command
from topoaudio.data.natsound165 import load_natsound165
from topoaudio.training import train
from topoaudio.training.config import TrainConfig

TINY = dict(clip_seconds=0.5, train_size=32, val_size=8, batch_size=4, steps=2, warmup_steps=1,
            log_every=1, eval_every=1000, checkpoint_every=1000)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    paths = []
    for topo in ("spatial", "none"):
        for seed in (0, 1):
            out = root / f"{topo}{seed}"
            train(TrainConfig(**TINY, topo=topo, seed=seed, out=str(out)))
            paths.append(str(out / "checkpoint.pt"))
    return paths


def test_natsound165_loads_by_name():
    sounds = load_natsound165(shared_dir() / "natsound165")
    assert sounds.waveforms.shape == (165, 40000) and sounds.components.shape == (165, 6)
    assert sounds.categories.count("Music") == 24 and sounds.categories.count("EngSpeech") == 10
    rms = sounds.waveforms.pow(2).mean(dim=1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, 0.1), atol=1e-4)


def test_evaluate_writes_maps_metrics_and_a_report(checkpoints, tmp_path):
    result = evaluate_command.main(["--natsound165", str(shared_dir() / "natsound165"), "--out",
                                    str(tmp_path), "--shuffles", "5"]
                                   + [arg for path in checkpoints for arg in ("--checkpoint", path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["runs"]) == 4
    layer = metrics["runs"][0]["layers"]["block2"]
    assert layer["n_units"] == 48 * 27
    assert set(layer["component_r2"]) == {"lowfreq", "highfreq", "envsounds", "pitch", "speech", "music"}
    assert all(0.0 <= value <= 1.0 for value in layer["component_r2"].values())
    assert -1.0 <= layer["tonotopy"]["morans_i"] <= 1.0
    comparison = metrics["summary"]["block3/tonotopy/smoothness"]
    assert comparison["compared"] == ["none", "spatial"] and 0.0 <= comparison["p"] <= 1.0
    assert comparison["p"] <= comparison["p_holm"] <= 1.0
    from topoaudio.analysis.evaluation import summarise

    constant = [{"topo": topo, "layers": metrics["runs"][0]["layers"]} for topo in ("a", "a", "b", "b")]
    assert summarise(constant)["block2/music_patches"]["welch_t"] is None  # no spread: undefined
    report = (tmp_path / "report.md").read_text()
    assert "Welch" in report and "Holm p" in report and "run3/block4_music_vs_speech.png" in report
    for name in ("tonotopy", "am_rate", "music_vs_speech"):
        png = tmp_path / "run0" / f"block4_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["report"].endswith("report.md")
    # docs/results_tables.py turns the same metrics.json into RESULTS.md's tables
    tables = results_tables()
    per_run = tables.per_run_table(metrics["runs"])
    assert per_run.count("| spatial |") == 3 * 2 and per_run.count("| none |") == 3 * 2
    comparison = tables.comparison_table(metrics["summary"], ["block2", "block3", "block4"])
    row = next(line for line in comparison.splitlines() if line.startswith("| block3 | tonotopy smoothness"))
    t_page = float(row.split("|")[5])
    assert t_page == pytest.approx(-metrics["summary"]["block3/tonotopy/smoothness"]["welch_t"], abs=0.01)


def results_tables():
    import importlib.util

    path = pathlib.Path(__file__).resolve().parents[1] / "docs" / "results_tables.py"
    spec = importlib.util.spec_from_file_location("results_tables", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_holm_adjustment_by_hand():
    from topoaudio.analysis.evaluation import holm

    # sorted p: 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> 0.06 (kept non-decreasing)
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.9, 0.8]) == [1.0, 1.0]


def natsound_copy(tmp_path):
    source = shared_dir() / "natsound165"
    target = tmp_path / "natsound165"
    (target / "wav").mkdir(parents=True)
    for wav in (source / "wav").glob("*.wav"):
        os.symlink(wav, target / "wav" / wav.name)  # links, not copies: the data stays in shared/
    shutil.copy(source / "category_labels.csv", target)
    os.symlink(source / "components.mat", target / "components.mat")
    return target


def test_missing_or_extra_sounds_are_named(tmp_path):
    directory = natsound_copy(tmp_path)
    os.remove(directory / "wav" / "stim7_applause.wav")
    with pytest.raises(ValueError, match="missing wav files: \\['stim7_applause'\\]"):
        load_natsound165(directory)
    os.symlink(shared_dir() / "natsound165" / "wav" / "stim5_alarm_clock.wav",
               directory / "wav" / "stim999_extra.wav")
    with pytest.raises(ValueError, match="stim999_extra"):
        load_natsound165(directory)
    with pytest.raises(FileNotFoundError, match="wav/stimN_name.wav"):
        load_natsound165(tmp_path / "nowhere")


def test_mismatched_component_file_is_named(tmp_path):
    directory = natsound_copy(tmp_path)
    os.remove(directory / "components.mat")
    mat = scipy.io.loadmat(shared_dir() / "natsound165" / "components.mat")
    scipy.io.savemat(directory / "components.mat", {"R": np.zeros((160, 6)),
                                                    "stim_names": mat["stim_names"][:160],
                                                    "component_names": mat["component_names"]})
    with pytest.raises(ValueError, match="components.mat"):
        load_natsound165(directory)


def test_checkpoint_from_another_version_or_model_is_refused(checkpoints, tmp_path):
    state = checkpoint.load(checkpoints[0])
    del state["config"]["sheet"]  # a key this version needs
    old = tmp_path / "old.pt"
    checkpoint.save_atomic(state, str(old))
    with pytest.raises(SystemExit, match="another topoaudio version"):
        evaluate_command.main(["--checkpoint", str(old), "--natsound165",
                               str(shared_dir() / "natsound165"), "--out", str(tmp_path / "o")])
    state = checkpoint.load(checkpoints[0])
    state["config"]["model"] = "cochresnet50"
    other = tmp_path / "other.pt"
    checkpoint.save_atomic(state, str(other))
    with pytest.raises(SystemExit, match="does not match the cochresnet50 model"):
        evaluate_command.main(["--checkpoint", str(other), "--natsound165",
                               str(shared_dir() / "natsound165"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="not found"):
        evaluate_command.main(["--checkpoint", str(tmp_path / "none.pt"), "--natsound165",
                               str(shared_dir() / "natsound165"), "--out", str(tmp_path / "o")])
