"""The evaluation command end to end on tiny trained checkpoints and the natsound165 set (the real
one from $TOPOAUDIO_NATSOUND165, or a synthetic set of the same layout that runs everywhere), and
its errors on bad input: each one line, before any measurement."""
import json
import os
import pathlib
import re
import shutil

import numpy as np
import pytest
import scipy.io
import soundfile
import torch

from topoaudio import checkpoint
from topoaudio import evaluate as evaluate_command
from topoaudio.analysis import evaluation
from topoaudio.data.natsound165 import CATEGORIES, FILE_SECONDS, FILE_SR, N_SOUNDS, load_natsound165
from topoaudio.training import train
from topoaudio.training.config import TrainConfig

TINY = dict(dataset="procedural", num_workers=0,
            clip_seconds=0.5, train_size=32, val_size=8, batch_size=4, steps=2, warmup_steps=1,
            log_every=1, eval_every=1000, checkpoint_every=1000)
FRAMES = int(FILE_SR * FILE_SECONDS)


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


@pytest.fixture(scope="module")
def synthetic_natsound165(tmp_path_factory):
    """A directory laid out like the natsound165 set: 165 wavs of 2 s noise at 44.1 kHz, 16-bit, all
    11 categories, components.mat with random response profiles."""
    root = tmp_path_factory.mktemp("synthetic") / "natsound165"
    (root / "wav").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"stim{i}_sound{i}" for i in range(1, N_SOUNDS + 1)]
    for name in names:
        soundfile.write(root / "wav" / f"{name}.wav", 0.1 * rng.standard_normal(FRAMES), FILE_SR,
                        subtype="PCM_16")
    (root / "category_labels.csv").write_text(
        "".join(f"{name},{CATEGORIES[i % len(CATEGORIES)]}\n" for i, name in enumerate(names)))
    scipy.io.savemat(root / "components.mat", {
        "R": rng.standard_normal((N_SOUNDS, 6)), "stim_names": np.array(names, dtype=object),
        "component_names": np.array(["lowfreq", "highfreq", "envsounds", "pitch", "speech", "music"],
                                    dtype=object)})
    return root


def natsound_copy(source, tmp_path):
    """A copy of a natsound165 directory to damage: links to the wavs and components, the labels
    copied (a test replaces a link by a file rather than writing through it)."""
    target = tmp_path / "natsound165"
    (target / "wav").mkdir(parents=True)
    for wav in (source / "wav").glob("*.wav"):
        os.symlink(wav, target / "wav" / wav.name)
    shutil.copy(source / "category_labels.csv", target)
    os.symlink(source / "components.mat", target / "components.mat")
    return target


def replace(path: pathlib.Path, data: bytes | None) -> None:
    """Replace the file by a new one (never writing through natsound_copy's links); None removes it."""
    path.unlink()
    if data is not None:
        path.write_bytes(data)


def wav_bytes(samples: np.ndarray, sr: int, subtype: str = "PCM_16") -> bytes:
    import io

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sr, format="WAV", subtype=subtype)
    return buffer.getvalue()


def with_one_nan() -> bytes:
    samples = np.full(FRAMES, 0.1)
    samples[1234] = np.nan
    return wav_bytes(samples, FILE_SR, subtype="FLOAT")


def antiphase() -> bytes:
    noise = 0.1 * np.random.default_rng(7).standard_normal(FRAMES)
    return wav_bytes(np.stack([noise, -noise], axis=1), FILE_SR)


def refused(argv) -> str:
    """The one line `topoaudio evaluate argv` exits with."""
    with pytest.raises(SystemExit) as exit_info:
        evaluate_command.main(argv)
    message = exit_info.value.code
    assert isinstance(message, str) and "\n" not in message, message
    assert message.startswith("topoaudio evaluate: ")
    return message


def refused_before_any_checkpoint(tmp_path, natsound, out=None, extra=()) -> str:
    """The one line evaluate exits with when given a checkpoint file it must never read."""
    dummy = tmp_path / "model.pt"
    dummy.write_bytes(b"never read")
    return refused(["--checkpoint", str(dummy), "--natsound165", str(natsound),
                    "--out", str(out or tmp_path / "out"), *extra])


@pytest.fixture
def no_checkpoint_loaded(monkeypatch):
    """Fails the test if the command loads a checkpoint (input errors come first)."""
    def load_trained(path, *args, **kwargs):
        raise AssertionError(f"checkpoint {path} loaded before the inputs were checked")

    monkeypatch.setattr(evaluation, "load_trained", load_trained)


def test_natsound165_loads_by_name(natsound165_dir):
    sounds = load_natsound165(natsound165_dir)
    assert sounds.waveforms.shape == (165, 40000) and sounds.components.shape == (165, 6)
    assert sounds.categories.count("Music") == 24 and sounds.categories.count("EngSpeech") == 10
    rms = sounds.waveforms.pow(2).mean(dim=1).sqrt()
    assert torch.allclose(rms, torch.full_like(rms, 0.1), atol=1e-4)


def test_a_set_of_the_same_layout_loads_in_name_order(synthetic_natsound165):
    sounds = load_natsound165(synthetic_natsound165)
    assert sounds.names[:3] == ["stim1_sound1", "stim2_sound2", "stim3_sound3"]
    assert sounds.categories[:2] == list(CATEGORIES[:2]) and sounds.waveforms.shape == (165, 40000)
    components = scipy.io.loadmat(synthetic_natsound165 / "components.mat")["R"]
    assert torch.equal(sounds.components, torch.from_numpy(components))


def test_evaluate_writes_maps_metrics_and_a_report(checkpoints, natsound165_dir, tmp_path):
    result = evaluate_command.main(["--natsound165", str(natsound165_dir), "--out",
                                    str(tmp_path), "--shuffles", "5"]
                                   + [arg for path in checkpoints for arg in ("--checkpoint", path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["runs"]) == 4
    assert metrics["environment"]["torch"] == torch.__version__ and "commit" in metrics["environment"]
    layer = metrics["runs"][0]["layers"]["block2"]
    assert layer["n_units"] == 48 * 27
    assert set(layer["component_r2"]) == {"lowfreq", "highfreq", "envsounds", "pitch", "speech", "music"}
    assert all(0.0 <= value <= 1.0 for value in layer["component_r2"].values())
    assert -1.0 <= layer["tonotopy"]["morans_i"] <= 1.0
    comparison = metrics["summary"]["block3/tonotopy/smoothness"]["comparisons"]["spatial - none"]
    assert comparison["compared"] == ["spatial", "none"] and 0.0 <= comparison["p"] <= 1.0
    assert comparison["p"] <= comparison["p_holm"] <= 1.0
    from topoaudio.analysis.evaluation import summarise

    constant = [{"topo": topo, "layers": metrics["runs"][0]["layers"]} for topo in ("a", "a", "b", "b")]
    assert summarise(constant)["block2/music_patches"]["comparisons"]["a - b"]["welch_t"] is None
    # a third setting is compared with none too, never with spatial; Holm counts every pair
    three = metrics["runs"] + [dict(run, topo="topoloss") for run in metrics["runs"][::2]]
    summary = summarise(three)
    pairs = summary["block3/am_rate/morans_i"]["comparisons"]
    assert set(pairs) == {"spatial - none", "topoloss - none"}
    primary = [t for e in summary.values() if e["family"] == "primary" for t in e["comparisons"].values()]
    assert len(primary) == 2 * 3 * 3  # two pairs x three layers x three primary maps
    smallest = min(t["p"] for t in primary if t["p"] is not None)
    assert min(t["p_holm"] for t in primary if t["p"] is not None) == pytest.approx(
        min(1.0, smallest * sum(t["p"] is not None for t in primary)))
    assert metrics["baselines"]["cochleagram"]["component_r2"].keys() == layer["component_r2"].keys()
    # controls side by side, dropped (silent) units per map, the primary family Holm-adjusted
    run = metrics["runs"][0]
    assert set(run["controls"]) == {"untrained", "shuffled_positions"}
    for condition in (run, *run["controls"].values()):
        assert len(condition["primary"]) == 3 * 3
        assert all(test["p"] <= test["p_holm"] <= 1.0 for test in condition["primary"])
        dropped = condition["layers"]["block2"]["dropped_units"]
        assert set(dropped) == {"tonotopy", "tonotopy_within_band", "am_rate", "music_vs_speech"}
        assert all(0 <= n <= 48 * 27 for n in dropped.values())
    assert "component_r2" in run["controls"]["untrained"]["layers"]["block2"]
    assert metrics["summary"]["block3/am_rate/morans_i"]["family"] == "primary"
    assert metrics["summary"]["block3/tonotopy/smoothness"]["family"] == "exploratory"
    parity = metrics["summary"]["block3/r2_speech"]["comparisons"]["spatial - none"]["tost"]
    assert parity["margin"] == 0.02 and (parity["p"] is None or 0.0 <= parity["p"] <= 1.0)
    report = (tmp_path / "report.md").read_text()
    assert "Welch" in report and "Holm p" in report and "run3/block4_music_vs_speech.png" in report
    assert "Primary measures" in report and "shuffled_positions" in report and "TOST" in report
    assert "time-averaged cochleagram" in report
    for name in ("tonotopy", "am_rate", "music_vs_speech"):
        png = tmp_path / "run0" / f"block4_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["report"].endswith("report.md")
    # docs/results_tables.py turns the same metrics.json into RESULTS.md's tables
    tables = results_tables()
    runs = tables.ordered(metrics["runs"])
    assert [run["topo"] for run in runs] == ["none", "none", "spatial", "spatial"]
    primary = tables.primary_table(runs)
    assert primary.count("| spatial |") == 2 * 3 * 3 and primary.count("| none |") == 2 * 3 * 3
    comparison = tables.comparison_table(metrics["summary"], ["block2", "block3", "block4"])
    row = next(line for line in comparison.splitlines() if line.startswith("| block3 | am_rate/morans_i"))
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[6] == "spatial - none"
    test = metrics["summary"]["block3/am_rate/morans_i"]["comparisons"]["spatial - none"]
    assert cells[7] == tables.fmt(test["welch_t"], ".2f") and cells[9] == tables.fmt(test["p_holm"], ".3g")
    assert "time-averaged cochleagram" in tables.r2_table(runs, metrics["baselines"])


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


def test_missing_or_extra_sounds_are_named(synthetic_natsound165, tmp_path):
    directory = natsound_copy(synthetic_natsound165, tmp_path)
    os.remove(directory / "wav" / "stim7_sound7.wav")
    with pytest.raises(ValueError, match="missing wav files: \\['stim7_sound7'\\]"):
        load_natsound165(directory)
    os.symlink(synthetic_natsound165 / "wav" / "stim5_sound5.wav", directory / "wav" / "stim999_extra.wav")
    with pytest.raises(ValueError, match="stim999_extra"):
        load_natsound165(directory)
    with pytest.raises(FileNotFoundError, match="wav/stimN_name.wav"):
        load_natsound165(tmp_path / "nowhere")


# Each damages stim7's wav the way a bad download or copy does; the error names the file and what
# the published recording would have been.
BAD_WAVS = {
    "header only": (lambda: wav_bytes(np.zeros(0), FILE_SR), "empty (a header without samples)"),
    "a quarter of the length": (lambda: wav_bytes(np.full(FRAMES // 4, 0.1), FILE_SR),
                                f"{FRAMES // 4} samples (0.500 s), expected {FRAMES}"),
    "too long": (lambda: wav_bytes(np.full(2 * FRAMES, 0.1), FILE_SR),
                 f"{2 * FRAMES} samples (4.000 s), expected {FRAMES} (2.0 s at {FILE_SR} Hz)"),
    "resampled to 16 kHz": (lambda: wav_bytes(np.full(32000, 0.1), 16000),
                            f"sample rate 16000 Hz, expected {FILE_SR} Hz"),
    "not audio": (lambda: b"RIFF" + bytes(range(256)) * 4, "unreadable"),
    "an empty file": (lambda: b"", "unreadable"),
    "silent": (lambda: wav_bytes(np.zeros(FRAMES), FILE_SR), "silent"),
    "a NaN sample": (with_one_nan, f"1 of its {FRAMES} samples is NaN or infinite"),
    "antiphase stereo": (antiphase, "its 2 channels cancel when mixed to mono"),
}


@pytest.mark.parametrize("fault", list(BAD_WAVS))
def test_a_damaged_wav_is_named_before_any_checkpoint_is_loaded(fault, synthetic_natsound165, tmp_path,
                                                                no_checkpoint_loaded):
    directory = natsound_copy(synthetic_natsound165, tmp_path)
    data, problem = BAD_WAVS[fault]
    replace(directory / "wav" / "stim7_sound7.wav", data())
    message = refused_before_any_checkpoint(tmp_path, directory)
    assert f"{directory / 'wav' / 'stim7_sound7.wav'}: {problem}" in message


def test_every_damaged_wav_is_counted_before_any_is_decoded(synthetic_natsound165, tmp_path, monkeypatch):
    directory = natsound_copy(synthetic_natsound165, tmp_path)
    for number in (3, 50, 120, 160):
        replace(directory / "wav" / f"stim{number}_sound{number}.wav", wav_bytes(np.zeros(10), FILE_SR))
    decoded = []
    monkeypatch.setattr("topoaudio.data.natsound165.load_clip", lambda *a, **k: decoded.append(a))
    with pytest.raises(ValueError, match="4 natsound165 wav file\\(s\\)") as error:
        load_natsound165(directory)
    assert "stim3_sound3.wav: 10 samples" in str(error.value) and "and 1 more" in str(error.value)
    assert decoded == []


LABEL_FAULTS = {
    "missing": (None, "category_labels.csv not found"),
    "one column": ("stim1_sound1\n", "line 1: expected 'name,category'"),
    "unknown category": ("stim1_sound1,Muzak\n", "found 'stim1_sound1,Muzak'"),
    "listed twice": ("stim1_sound1,Music\nstim1_sound1,Song\n", "line 2: 'stim1_sound1' is listed twice"),
    "not text": (b"\xff\xfe\x00garbage", "not a UTF-8 CSV file"),
    "empty": ("", "lists no sounds"),
}


@pytest.mark.parametrize("fault", list(LABEL_FAULTS))
def test_a_missing_or_malformed_label_file_is_named(fault, synthetic_natsound165, tmp_path,
                                                    no_checkpoint_loaded):
    directory = natsound_copy(synthetic_natsound165, tmp_path)
    content, problem = LABEL_FAULTS[fault]
    labels = directory / "category_labels.csv"
    # the fault first, then the 165 good rows (the first bad line is named)
    replace(labels, None if content is None else content if isinstance(content, bytes) else
            (content + labels.read_text() if content else "").encode())
    message = refused_before_any_checkpoint(tmp_path, directory)
    assert str(labels) in message and problem in message


def test_mismatched_component_file_is_named(synthetic_natsound165, tmp_path):
    directory = natsound_copy(synthetic_natsound165, tmp_path)
    os.remove(directory / "components.mat")
    mat = scipy.io.loadmat(synthetic_natsound165 / "components.mat")
    scipy.io.savemat(directory / "components.mat", {"R": np.zeros((160, 6)),
                                                    "stim_names": mat["stim_names"][:160],
                                                    "component_names": mat["component_names"]})
    with pytest.raises(ValueError, match="components.mat"):
        load_natsound165(directory)


def components_with(source, **replaced) -> bytes:
    import io

    mat = scipy.io.loadmat(source / "components.mat")
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {key: replaced.get(key, mat[key]) for key in ("R", "stim_names",
                                                                           "component_names")})
    return buffer.getvalue()


COMPONENT_FAULTS = {
    "missing": (None, "components.mat not found"),
    "empty": (lambda source: b"", "components.mat"),
    "not MATLAB": (lambda source: b"garbage " * 40, "components.mat"),
    "truncated": (lambda source: (source / "components.mat").read_bytes()[:300], "components.mat"),
    "NaN responses": (lambda source: components_with(source, R=np.full((N_SOUNDS, 6), np.nan)),
                      "990 NaN or Inf values"),
    "one component": (lambda source: components_with(source, R=np.ones((N_SOUNDS, 1)),
                                                      component_names=np.array(["lowfreq"], dtype=object)),
                      "not the 6 NH2015 components lowfreq, highfreq, envsounds, pitch, speech, music; "
                      "missing ['highfreq', 'envsounds', 'pitch', 'speech', 'music']"),
}


@pytest.mark.parametrize("fault", list(COMPONENT_FAULTS))
def test_a_missing_or_damaged_component_file_is_named(fault, synthetic_natsound165, tmp_path,
                                                      no_checkpoint_loaded):
    directory = natsound_copy(synthetic_natsound165, tmp_path)
    make, problem = COMPONENT_FAULTS[fault]
    path = directory / "components.mat"
    replace(path, make(synthetic_natsound165) if make else None)
    message = refused_before_any_checkpoint(tmp_path, directory)
    assert str(path) in message and problem in message


BAD_SETTINGS = {
    "negative shuffles": (["--shuffles", "-1"], "--shuffles: must be an integer >= 1"),
    "no shuffles": (["--shuffles", "0"], "--shuffles: must be an integer >= 1"),
    "fractional shuffles": (["--shuffles", "1.5"], "--shuffles: invalid"),
    "no permutations": (["--permutations", "0"], "--permutations: must be an integer >= 1"),
    "unknown device": (["--device", "gpu0"], "device 'gpu0' is not usable here"),
    "absent device": (["--device", "cuda:99"], "device 'cuda:99' is not usable here"),
    "device without numbers": (["--device", "meta"], "device 'meta' is not usable here"),
}


@pytest.mark.parametrize("setting", list(BAD_SETTINGS))
def test_bad_settings_are_refused_before_any_file_is_read(setting, tmp_path, no_checkpoint_loaded):
    extra, problem = BAD_SETTINGS[setting]
    message = refused_before_any_checkpoint(tmp_path, tmp_path / "nowhere", extra=extra)
    assert problem in message and "nowhere" not in message


@pytest.mark.parametrize("shuffles", [0, -2, 2.0, "3", True])
def test_the_library_checks_its_settings_too(shuffles, tmp_path, no_checkpoint_loaded):
    expected = f"shuffles must be an integer >= 1, got {re.escape(repr(shuffles))}"
    with pytest.raises(ValueError, match=expected):
        evaluation.evaluate_checkpoints([tmp_path / "model.pt"], tmp_path / "nowhere", tmp_path / "out",
                                        shuffles=shuffles)
    with pytest.raises(ValueError, match=expected.replace("shuffles", "permutations", 1)):
        evaluation.evaluate_checkpoints([tmp_path / "model.pt"], tmp_path / "nowhere", tmp_path / "out",
                                        permutations=shuffles)
    with pytest.raises(ValueError, match="device 'tpu' is not usable here"):
        evaluation.evaluate_checkpoints([tmp_path / "model.pt"], tmp_path / "nowhere", tmp_path / "out",
                                        device="tpu")


@pytest.mark.parametrize("where", ["an existing file", "below a file"])
def test_out_that_cannot_be_a_directory_is_refused_first(where, tmp_path, no_checkpoint_loaded):
    blocker = tmp_path / "taken"
    blocker.write_text("someone's file")
    out = blocker if where == "an existing file" else blocker / "eval"
    message = refused_before_any_checkpoint(tmp_path, tmp_path / "nowhere", out=out)
    assert f"output directory {out}" in message and "nowhere" not in message
    assert blocker.read_text() == "someone's file"


@pytest.mark.parametrize("fault", ["garbage", "empty", "truncated", "missing"])
def test_every_checkpoint_is_loaded_before_any_is_measured(fault, checkpoints, synthetic_natsound165,
                                                           tmp_path, monkeypatch):
    bad = tmp_path / "bad.pt"
    good = pathlib.Path(checkpoints[0]).read_bytes()
    data = {"garbage": b"\x80\x04garbage" * 100, "empty": b"", "truncated": good[:len(good) // 2],
            "missing": None}[fault]
    if data is not None:
        bad.write_bytes(data)
    measured = []
    monkeypatch.setattr(evaluation, "measure_subject", lambda *a, **k: measured.append(a))
    message = refused(["--checkpoint", checkpoints[0], "--checkpoint", str(bad), "--natsound165",
                       str(synthetic_natsound165), "--out", str(tmp_path / "out")])
    assert str(bad) in message and measured == []


def test_checkpoint_from_another_version_or_model_is_refused(checkpoints, synthetic_natsound165, tmp_path):
    state = checkpoint.load(checkpoints[0])
    del state["config"]["sheet"]  # a key this version needs
    old = tmp_path / "old.pt"
    checkpoint.save_atomic(state, str(old))
    args = ["--natsound165", str(synthetic_natsound165), "--out", str(tmp_path / "o")]
    assert "another topoaudio version" in refused(["--checkpoint", str(old)] + args)
    state = checkpoint.load(checkpoints[0])
    state["config"]["model"] = "cochresnet50"
    other = tmp_path / "other.pt"
    checkpoint.save_atomic(state, str(other))
    assert "does not match the cochresnet50 model" in refused(["--checkpoint", str(other)] + args)
    assert "not found" in refused(["--checkpoint", str(tmp_path / "none.pt")] + args)


def test_progress_is_shown_for_every_stage(checkpoints, synthetic_natsound165, tmp_path, capsys):
    evaluate_command.main(["--checkpoint", checkpoints[0], "--natsound165", str(synthetic_natsound165),
                           "--out", str(tmp_path), "--shuffles", "2"])
    err = capsys.readouterr().err
    # tqdm draws "desc:   0%|   | 0/total [...]" when a bar starts: each stage of the minutes-long
    # command has its own bar, sized by what it goes through
    for stage, total in (("reading natsound165", 165), ("loading checkpoints", 1), ("checkpoints", 1),
                         ("tones", 3), ("AM noise", 1), ("natural sounds", 11), ("component R²", 3),
                         ("map statistics", 36), ("tones (untrained)", 3)):
        assert re.search(rf"{re.escape(stage)}: +\d+%\|[^|]*\| *\d+/{total} \[", err), stage
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics["runs"][0]["layers"]) == ["block2", "block3", "block4"]


def test_the_help_states_the_permutation_default_the_analysis_uses(capsys):
    from topoaudio.analysis.topography import DEFAULT_N_PERMUTATIONS

    with pytest.raises(SystemExit):
        evaluate_command.main(["--help"])
    assert f"default {DEFAULT_N_PERMUTATIONS}" in " ".join(capsys.readouterr().out.split())
