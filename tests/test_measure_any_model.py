"""Measuring a model the user built (analysis.any_model.measure_model, `topoaudio evaluate --model`):
models defined only in this file, measured end to end on sounds the project synthesises (the
procedural set, laid out as the natsound165 directory), their controls, and bad input refused in
one line before any sound is run."""
import json
import pathlib

import numpy as np
import pytest
import scipy.io
import soundfile
import torch
from torch import nn

from topoaudio import evaluate as evaluate_command
from topoaudio.analysis import any_model, evaluation, measure_model
from topoaudio.data.natsound165 import FILE_SECONDS, FILE_SR, N_SOUNDS
from topoaudio.data.procedural import CLASSES, ProceduralSounds

HERE = pathlib.Path(__file__).resolve()
FAST = dict(shuffles=3, permutations=99)


# --- models a user might write -------------------------------------------------------------------

class TinyListener(nn.Module):
    """16 kHz waveforms [B, 32000] -> its own log spectrogram -> two convs (maps [B, C, F, T]) ->
    per-frame tokens [B, T, 24] -> a clip vector [B, 16] -> 5 logits. Nothing from topoaudio."""

    sample_rate = 16000

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=(4, 2), padding=1)
        self.frames = nn.Linear(8 * 33, 24)
        self.embedding = nn.Linear(24, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, waveform):
        if waveform.dim() != 2 or waveform.shape[-1] != 2 * self.sample_rate:
            raise ValueError(f"TinyListener takes 2 s at {self.sample_rate} Hz as [B, 32000], "
                             f"got {tuple(waveform.shape)}")
        window = torch.hann_window(256, device=waveform.device)
        spectrum = torch.stft(waveform, 256, 160, window=window, return_complex=True).abs()
        x = torch.log1p(10 * spectrum)[:, None, :, :]                  # [B, 1, 129, 201]
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))         # [B, 8, 33, 101]
        tokens = torch.relu(self.frames(x.flatten(1, 2).transpose(1, 2)))  # [B, 101, 24]
        return self.head(torch.relu(self.embedding(tokens.mean(dim=1))))


def tiny_listener():
    torch.manual_seed(1)
    return TinyListener()


class RandomCochleagramNet(nn.Module):
    """cochleagrams [B, 1, 211, 390] -> two random convs: never trained."""

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                    nn.AvgPool2d((4, 2)))

    def forward(self, cochleagram):
        return self.block2(self.block1(cochleagram)).mean(dim=(2, 3))


# --- the sounds: the project's procedural set in the natsound165 layout ------------------------------

# procedural family -> NH2015 categories it stands in for (music = Music + Song, speech = EngSpeech +
# ForSpeech, the rest environmental)
STAND_IN = {"speech": ("EngSpeech", "ForSpeech"), "music": ("Music", "Song"),
            "env": ("Nature", "Mechanical", "EnvSound")}


@pytest.fixture(scope="module")
def procedural_natsound165(tmp_path_factory):
    """165 procedural clips (11 of each class), 2 s at 44.1 kHz, named and labelled as the
    natsound165 set is, with six component profiles: the sounds' RMS in six bands (so R² is
    something a model can earn) plus a little seeded noise."""
    root = tmp_path_factory.mktemp("sounds") / "natsound165"
    (root / "wav").mkdir(parents=True)
    sounds = ProceduralSounds(N_SOUNDS, seed=3, sr=FILE_SR, seconds=FILE_SECONDS)
    names, labels, profiles = [], [], []
    rng = np.random.default_rng(0)
    for index in range(N_SOUNDS):
        waveform, label = sounds[index]
        family = CLASSES[label].split("_")[0]
        categories = STAND_IN[family]
        name = f"stim{index + 1}_{CLASSES[label]}"
        soundfile.write(root / "wav" / f"{name}.wav", waveform.numpy(), FILE_SR, subtype="FLOAT")
        names.append(name)
        labels.append(categories[index % len(categories)])
        power = np.abs(np.fft.rfft(waveform.numpy())) ** 2
        profiles.append([np.log(band.mean()) for band in np.array_split(power, 6)])
    rows = (f"{name},{category}\n" for name, category in zip(names, labels, strict=True))
    (root / "category_labels.csv").write_text("".join(rows))
    profiles = np.asarray(profiles) + 0.1 * rng.standard_normal((N_SOUNDS, 6))
    scipy.io.savemat(root / "components.mat", {
        "R": profiles, "stim_names": np.array(names, dtype=object),
        "component_names": np.array(["lowfreq", "highfreq", "envsounds", "pitch", "speech", "music"],
                                    dtype=object)})
    return root


@pytest.fixture(scope="module")
def listener_by_command(procedural_natsound165, tmp_path_factory):
    """`topoaudio evaluate --model tests/this_file.py:tiny_listener` end to end: a conv layer, a
    token layer and a vector layer of a model topoaudio has never seen."""
    out = tmp_path_factory.mktemp("listener")
    result = evaluate_command.main([
        "--model", f"{HERE}:tiny_listener", "--layers", "conv2,frames:tokens,embedding:vector",
        "--sample_rate", "16000", "--natsound165", str(procedural_natsound165), "--out", str(out),
        "--shuffles", "3", "--permutations", "99", "--name", "TinyListener (test)"])
    return out, result


@pytest.mark.slow
def test_a_model_defined_in_a_test_file_is_measured_end_to_end(listener_by_command):
    out, result = listener_by_command
    metrics = json.loads((out / "metrics.json").read_text())
    (run,) = metrics["runs"]
    assert run["model"] == "TinyListener" and run["source"] == "TinyListener (test)"
    assert run["input"] == "waveform" and run["sample_rate"] == 16000
    assert run["layouts"] == {"conv2": "conv [3, 8, 33, 101]", "frames": "tokens [3, 101, 24]",
                              "embedding": "vector [3, 16]"}
    assert run["sheet"] == {"conv2": "channel_freq", "frames": "channels", "embedding": "channels"}
    assert run["untrained_control"].startswith("the model re-initialised by reset_parameters")
    layers = run["layers"]
    assert [layers[name]["n_units"] for name in ("conv2", "frames", "embedding")] == [8 * 33, 24, 16]
    for layer in layers.values():
        for name in evaluation.MAPS:
            assert set(evaluation.MAP_KEYS) <= set(layer[name])
        assert set(layer["dropped_units"]) == set(evaluation.MAPS)
        assert len(layer["component_r2"]) == 6 and -1 <= layer["rsa_components"] <= 1
    assert layers["conv2"]["within_band"] == "frequency rows" and layers["frames"]["within_band"] == "none"
    # the controls and the primary family, with what the controls say of each test
    assert set(run["controls"]) == {"untrained", "shuffled_positions"}
    assert "component_r2" in run["controls"]["untrained"]["layers"]["frames"]
    assert len(run["primary"]) == 3 * 3
    for test in run["primary"]:
        assert test["p"] <= test["p_holm"] <= 1 or test["p"] != test["p"]
        assert test["verdict"] in ("model", "flagged by controls", "not significant")
    baseline = metrics["baselines"]["cochleagram"]
    assert baseline["component_r2"].keys() == layers["conv2"]["component_r2"].keys()
    report = (out / "report.md").read_text()
    assert "## TinyListener (test) (TinyListener, input: waveform at 16000 Hz" in report
    assert "`frames` tokens [3, 101, 24], 24 units on a channels sheet (built positions)" in report
    assert "Verdict:" in report and "| verdict |" in report
    for layer in ("conv2", "frames", "embedding"):
        for name in ("tonotopy", "am_rate", "music_vs_speech"):
            png = out / "run0" / f"{layer}_{name}.png"
            if layers[layer][name]["n_units"] >= 3:
                assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["report"] == str(out / "report.md")
    assert not list(out.glob(".measuring-*"))  # the staging directory is gone


@pytest.mark.slow
def test_a_random_network_on_channel_freq_sheets_is_flagged_by_its_controls(procedural_natsound165,
                                                                           tmp_path):
    """The sheet builds structure in: frequency rows stacked along y, and each channel in one place
    in every row. A network that never learned anything shows significant Moran's I there (z 5-35),
    but none of it is credited to the model: against the layout null (the channels' places permuted
    alike in every row) its maps have no structure, whatever its untrained control happens to show."""
    torch.manual_seed(7)  # not the control's seed: two different random draws
    result = measure_model(RandomCochleagramNet(), ["block1", "block2"], procedural_natsound165, tmp_path,
                           input="cochleagram", shuffles=3, permutations=299)
    (run,) = result["runs"]
    assert run["sheet"] == {"block1": "channel_freq", "block2": "channel_freq"}
    significant = [t for t in run["primary"] if t["p_holm"] < 0.05]
    assert len(significant) >= 4, "the random network shows no structure: the test would test nothing"
    assert all(t["z"] > 4 for t in significant)
    for test in significant:
        assert test["verdict"] == "flagged by controls" and "sheet layout" in test["flagged_by"]
        assert not test["layout_p_holm"] < 0.05
    assert not any(t["verdict"] == "model" for t in run["primary"])
    report = pathlib.Path(result["report"]).read_text()
    assert "Credited to the model: 0 of 6" in report and "flagged by controls: " in report
    assert "| layout null: (z) p / Holm p |" in report


# --- bad input: one line each, before any sound is run ----------------------------------------------

@pytest.fixture
def no_sound_is_run(monkeypatch):
    """Fails the test if any probe sound reaches a model (input errors come first)."""
    def layer_responses(*args, **kwargs):
        raise AssertionError("a sound was run before the inputs were checked")

    monkeypatch.setattr(evaluation, "layer_responses", layer_responses)


def refused(tmp_path, model=None, layers="conv2", **settings) -> str:
    settings = {"sample_rate": 16000, **settings}
    with pytest.raises(ValueError) as caught:
        measure_model(tiny_listener() if model is None else model, layers, tmp_path / "no-sounds",
                      tmp_path / "out", **settings)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_a_layer_the_model_lacks_is_named(tmp_path, no_sound_is_run):
    message = refused(tmp_path, layers=["conv2", "conv3"])
    assert "no layer 'conv3'" in message and "conv1, conv2, frames" in message


@pytest.mark.parametrize(("layers", "shape", "hint"), [
    ("frames", "[3, 101, 24]", "is it tokens?"),              # tokens read as the default conv
    ("conv2:tokens", "[3, 8, 33, 101]", "is it conv?"),
    ("embedding:tokens", "[3, 16]", "is it vector?"),
])
def test_a_layer_whose_output_does_not_fit_its_layout_is_named_with_its_shape(tmp_path, no_sound_is_run,
                                                                              layers, shape, hint):
    message = refused(tmp_path, layers=layers, sheet="channels")
    assert repr(layers.split(":")[0]) in message and shape in message and hint in message


def test_a_sequence_first_token_layout_is_refused(tmp_path, no_sound_is_run):
    class SequenceFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(40, 12)

        def forward(self, waveform):
            return self.encoder(waveform.unfold(1, 40, 40).transpose(0, 1))  # [T, B, 12]

    message = refused(tmp_path, SequenceFirst(), "encoder:tokens", sample_rate=20000)
    assert "'encoder' gives [1000, 3, 12] for 3 clips" in message and "batch first" in message


def test_positions_whose_count_does_not_match_are_named_with_both_counts(tmp_path, no_sound_is_run):
    message = refused(tmp_path, positions={"conv2": torch.rand(8, 2)})
    assert "'conv2' hold 8 units" in message and "264 on a channel_freq sheet (C x F = 8 x 33)" in message
    assert "; 8 on a channels sheet (C = 8)" in message
    message = refused(tmp_path, layers="frames:tokens", positions={"frames": torch.rand(25, 2)})
    assert "'frames' hold 25 units" in message and "24 on a channels sheet (D = 24)" in message
    message = refused(tmp_path, positions={"conv2": torch.rand(264, 2) * 1e5})
    assert "'conv2' span" in message and "in mm" in message
    assert "not among the layers" in refused(tmp_path, positions={"frames": torch.rand(24, 2)})


def test_a_model_that_rejects_the_sample_rate_is_named(tmp_path, no_sound_is_run):
    message = refused(tmp_path, sample_rate=22050)
    assert "takes 16000 Hz (its sample_rate attribute), but sample_rate=22050" in message
    # a model that only says so by raising: the probe pass names the input it was given
    message = refused(tmp_path, nn.Sequential(Rejecting()), "0", sample_rate=44100)
    assert "rejected waveforms [3, 88200] (2 s at 44100 Hz): ValueError: only 16 kHz, please" in message
    assert "sample_rate is required" in refused(tmp_path, sample_rate=None)


class Rejecting(nn.Module):
    def forward(self, waveform):
        raise ValueError("only 16 kHz, please")


def test_a_channel_freq_sheet_is_refused_for_tokens_and_vectors(tmp_path, no_sound_is_run):
    message = refused(tmp_path, layers="frames:tokens", sheet="channel_freq")
    assert "'frames' is laid out as tokens [B, T, D]" in message and "channels sheet" in message


class RawWeights(nn.Module):
    """A module holding a parameter of its own, with no reset_parameters."""

    def __init__(self, n_filters: int = 4):
        super().__init__()
        self.filters = nn.Parameter(torch.randn(n_filters, 1, 3, 3))

    def forward(self, waveform):
        x = waveform.unfold(1, 400, 200)[:, None]   # [B, 1, frames, 400]
        return nn.functional.conv2d(x, self.filters)


def test_an_untrained_control_that_cannot_be_made_is_refused(tmp_path, no_sound_is_run):
    model = nn.Sequential(RawWeights())
    message = refused(tmp_path, model, "0", sample_rate=20000)
    assert "parameter(s) 0.filters" in message and "untrained=" in message
    # a factory is accepted instead, and its layers must match the model's
    message = refused(tmp_path, model, "0", sample_rate=20000, untrained=lambda: nn.Sequential(RawWeights(6)))
    assert "layer '0': the untrained control gives [3, 6, 197, 398], the model [3, 4, 197, 398]" in message


def test_reset_parameters_makes_a_new_network_and_leaves_the_model_alone():
    model = tiny_listener()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    twin, how = any_model.untrained_control(model, None, seed=5)
    again, _ = any_model.untrained_control(model, None, seed=5)
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    assert not torch.equal(twin.conv1.weight, model.conv1.weight)
    assert all(torch.equal(p, q) for p, q in zip(twin.parameters(), again.parameters(), strict=True))
    assert "reset_parameters, seed 5" in how and not twin.training


@pytest.mark.slow
def test_a_model_that_fails_mid_run_leaves_no_report(procedural_natsound165, tmp_path):
    """Nothing a model does leaves a half-written report: the old one stays whole, nothing new
    appears, and the staging directory is removed."""
    class FailsLater(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.calls = 0

        def forward(self, cochleagram):
            self.calls += 1
            if self.calls > 3:  # the probe and two batches of tones pass
                raise RuntimeError("out of memory, say")
            return self.conv(cochleagram[:, :, :20, :20])

    (tmp_path / "report.md").write_text("an earlier report\n")
    with pytest.raises(RuntimeError, match="out of memory"):
        measure_model(FailsLater(), ["conv"], procedural_natsound165, tmp_path, input="cochleagram", **FAST)
    assert (tmp_path / "report.md").read_text() == "an earlier report\n"
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "run0").exists()
    assert not list(tmp_path.glob(".measuring-*"))


@pytest.mark.slow
def test_non_finite_responses_are_named_and_leave_no_report(procedural_natsound165, tmp_path):
    class Overflows(nn.Module):
        """Finite for the probe pass, infinite from the third batch of tones on."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.calls = 0

        def forward(self, cochleagram):
            self.calls += 1
            if self.calls > 3:
                with torch.no_grad():
                    self.conv.weight[0] = float("inf")
            return self.conv(cochleagram[:, :, :20, :20])

    with pytest.raises(ValueError, match=r"layer 'conv' gave \d+ NaN or infinite responses to the tones "
                                         r"\(the first: stimulus 32, unit 0\)"):
        measure_model(Overflows(), ["conv"], procedural_natsound165, tmp_path, input="cochleagram", **FAST)
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "report.md").exists()
    # infinite from the start: found by the probe pass, before any sound
    model = Overflows()
    model.calls = 10
    message = refused(tmp_path, model, "conv", input="cochleagram", sample_rate=None)
    assert "layer 'conv' gives" in message and "NaN or infinite values" in message


# --- the command line ----------------------------------------------------------------------------

def command_refusal(argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        evaluate_command.main(argv)
    message = exit_info.value.code
    assert isinstance(message, str) and "\n" not in message and message.startswith("topoaudio evaluate: ")
    return message


def test_the_command_names_what_is_wrong_with_a_model_in_one_line(tmp_path, no_sound_is_run):
    common = ["--natsound165", str(tmp_path / "none"), "--out", str(tmp_path / "out")]
    assert "no layer 'conv9'" in command_refusal(
        ["--model", f"{HERE}:tiny_listener", "--layers", "conv9", "--sample_rate", "16000", *common])
    assert "has no 'nothing'" in command_refusal(
        ["--model", f"{HERE}:nothing", "--layers", "conv2", "--sample_rate", "16000", *common])
    assert "not found" in command_refusal(
        ["--model", f"{tmp_path}/absent.py:f", "--layers", "conv2", *common])
    assert "importing no_such_package.models failed: ModuleNotFoundError" in command_refusal(
        ["--model", "no_such_package.models:build", "--layers", "a", *common])
    assert "--model needs --layers" in command_refusal(["--model", f"{HERE}:tiny_listener", *common])
    assert "exactly one of --checkpoint" in command_refusal(common)
    assert "--layers apply only to --model" in command_refusal(
        ["--checkpoint", str(tmp_path / "c.pt"), "--layers", "a", *common])
    positions = tmp_path / "positions.npz"
    np.savez(positions, conv2=np.zeros((5, 2)))
    assert "'conv2' hold 5 units" in command_refusal(
        ["--model", f"{HERE}:tiny_listener", "--layers", "conv2", "--sample_rate", "16000",
         "--positions", str(positions), *common])
    assert "layer 'conv2': sheet kind 'grid'" in command_refusal(
        ["--model", f"{HERE}:tiny_listener", "--layers", "conv2", "--sample_rate", "16000",
         "--sheet", "conv2=grid", *common])
