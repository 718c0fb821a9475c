"""Checkpoints on a bad day: crafted, damaged, truncated, foreign or incomplete files are refused
with one line by both commands; a diverging run never writes a non-finite state and names the step
and the layer; a full disk keeps the previous checkpoint."""
import errno
import hashlib
import io
import os
import random
import re

import numpy as np
import pytest
import torch

import topoaudio.evaluate as evaluate_command
from topoaudio import checkpoint
from topoaudio.training import TrainingDiverged, train
from topoaudio.training.config import TrainConfig

TINY = dict(dataset="procedural", num_workers=0,
            clip_seconds=0.5, train_size=48, val_size=8, batch_size=4, warmup_steps=1,
            log_every=1, eval_every=1000, checkpoint_every=1000)


def tiny(tmp_path, name="run", **overrides):
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **overrides})


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    """A finished two-step run; tests copy its checkpoint and damage the copy."""
    config = tiny(tmp_path_factory.mktemp("good"), steps=2, topo="none")
    train(config)
    return config


def run_with_checkpoint(tmp_path, data: bytes) -> TrainConfig:
    """A run directory whose checkpoint.pt holds `data`."""
    config = tiny(tmp_path, "bad", steps=4, topo="none")
    os.makedirs(config.out)
    with open(os.path.join(config.out, checkpoint.CHECKPOINT_NAME), "wb") as handle:
        handle.write(data)
    return config


def good_bytes(good_run) -> bytes:
    with open(os.path.join(good_run.out, checkpoint.CHECKPOINT_NAME), "rb") as handle:
        return handle.read()


@pytest.fixture
def no_sounds(monkeypatch):
    """The evaluation reads the sound set before the checkpoints; these tests need no sounds."""
    from topoaudio.analysis import evaluation

    monkeypatch.setattr(evaluation, "load_natsound165", lambda directory: None)


def refused_by_both_commands(tmp_path, data: bytes, match: str) -> None:
    """train --resume raises a one-line ValueError; evaluate exits with one line."""
    config = run_with_checkpoint(tmp_path, data)
    with pytest.raises(ValueError, match=match) as caught:
        train(config, resume=True)
    assert "\n" not in str(caught.value)
    with pytest.raises(SystemExit, match=match) as exited:
        evaluate_command.main(["--checkpoint", os.path.join(config.out, checkpoint.CHECKPOINT_NAME),
                               "--natsound165", str(tmp_path / "no-sounds"), "--out", str(tmp_path / "o")])
    assert "\n" not in str(exited.value.code)


def wrapped(payload: bytes) -> bytes:
    """`payload` with a valid header and checksum, as an attacker who knows the format would write."""
    digest = hashlib.sha256(payload).hexdigest()
    return checkpoint.MAGIC + f"format {checkpoint.FORMAT_VERSION} sha256 {digest}\n".encode() + payload


class Payload:
    """Unpickling this calls open(marker, "w"): the file appears if the pickle is ever run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


# --- safe to load ------------------------------------------------------------------------------------

def test_a_crafted_pickle_is_refused_and_never_runs(tmp_path, no_sounds):
    marker = tmp_path / "payload-ran"
    buffer = io.BytesIO()
    torch.save({"format_version": 1, "config": {"model": "cochcnn"}, "evil": Payload(marker)}, buffer)
    # the file as the reproducer wrote it (a plain torch.save) and with a forged header
    refused_by_both_commands(tmp_path / "plain", buffer.getvalue(), "plain torch file")
    refused_by_both_commands(tmp_path / "forged", wrapped(buffer.getvalue()),
                             "holds objects other than tensors, numbers and strings")
    assert not marker.exists()


def test_zeroed_bytes_are_detected(tmp_path, good_run, no_sounds):
    data = bytearray(good_bytes(good_run))
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    refused_by_both_commands(tmp_path, bytes(data), "damaged or truncated")


@pytest.mark.parametrize("damage, match", [
    (lambda data: data[:len(data) // 3], "damaged or truncated"),
    (lambda data: b"", "is empty"),
    (lambda data: np.random.default_rng(0).bytes(5000), "not a topoaudio checkpoint"),
    (lambda data: data[:40], "header is unreadable"),
    (lambda data: data.replace(b"format 2 ", b"format 7 ", 1), "format 7; this version reads format 2"),
])
def test_truncated_empty_and_garbage_files_are_one_line_errors(tmp_path, good_run, no_sounds, damage,
                                                               match):
    refused_by_both_commands(tmp_path, damage(good_bytes(good_run)), match)


def write_state(tmp_path, state: dict) -> bytes:
    path = tmp_path / "state.pt"
    checkpoint.save_atomic(state, str(path))
    return path.read_bytes()


def test_incomplete_and_foreign_checkpoints_are_refused_on_resume(tmp_path, good_run):
    state = checkpoint.load(os.path.join(good_run.out, checkpoint.CHECKPOINT_NAME))
    incomplete = {key: value for key, value in state.items() if key != "optimizer"}
    config = run_with_checkpoint(tmp_path / "a", write_state(tmp_path, incomplete))
    with pytest.raises(ValueError, match=r"incomplete: it lacks \['optimizer'\]"):
        train(config, resume=True)
    unknown = {**state, "config": {**state["config"], "learning_rate": 0.1}}
    config = run_with_checkpoint(tmp_path / "b", write_state(tmp_path, unknown))
    with pytest.raises(ValueError, match=r"another topoaudio version.*unknown keys \['learning_rate'\]"):
        train(config, resume=True)
    lacking = {**state, "config": {k: v for k, v in state["config"].items() if k != "alpha"}}
    config = run_with_checkpoint(tmp_path / "c", write_state(tmp_path, lacking))
    with pytest.raises(ValueError, match=r"another topoaudio version.*lacks \['alpha'\]"):
        train(config, resume=True)
    # weights of another shape under the right model name
    other = {**state, "model": {**state["model"], "head.weight": torch.zeros(5, 3)}}
    config = run_with_checkpoint(tmp_path / "d", write_state(tmp_path, other))
    with pytest.raises(ValueError, match="the saved model does not fit this run") as caught:
        train(config, resume=True)
    assert "\n" not in str(caught.value)


def test_rng_states_round_trip_as_plain_data(tmp_path, monkeypatch):
    torch.manual_seed(5), np.random.seed(6), random.seed(7)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    saved = checkpoint.rng_state()
    expected = (torch.rand(3), np.random.standard_normal(3), random.random())
    checkpoint.save_atomic({"rng": [saved]}, str(tmp_path / "rng.pt"))
    checkpoint.set_rng_state(checkpoint.load(str(tmp_path / "rng.pt"))["rng"][0])
    again = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]
    with pytest.raises(ValueError, match="malformed RNG state"):
        checkpoint.set_rng_state({"torch": torch.get_rng_state(), "numpy": "no", "python": {}})


def test_the_cuda_rng_states_are_saved_and_restored(monkeypatch):
    """With CUDA in use, every device's generator is saved and restored (faked here: no GPU)."""
    devices = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: devices)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    state = checkpoint.rng_state()
    assert state["cuda"] is devices
    checkpoint.set_rng_state(state)
    assert restored == devices


# --- the last good checkpoint is good ----------------------------------------------------------------

def assert_all_finite(path):
    state = checkpoint.load(path)
    for name, tensor in list(state["model"].items()) + [
            (f"{index}.{key}", value) for index, per_param in state["optimizer"]["state"].items()
            for key, value in per_param.items()]:
        assert torch.isfinite(tensor).all(), name


def test_a_diverging_run_stops_naming_step_and_layer_and_never_saves_nan(tmp_path):
    config = tiny(tmp_path, steps=8, topo="none", lr=1e9, warmup_steps=0, grad_clip=0.0,
                  checkpoint_every=1)
    with pytest.raises(TrainingDiverged) as caught:
        train(config)
    message = str(caught.value)
    step = int(re.search(r"(?:at|after) step (\d+)", message).group(1))
    assert re.search(r"(parameter|buffer|layer) \w+", message), message
    path = os.path.join(config.out, checkpoint.CHECKPOINT_NAME)
    assert checkpoint.load(path)["step"] == step - 1 and "last good checkpoint" in message
    assert_all_finite(path)
    # the same run cut short at the step where it diverged exits with the error, not NaN weights
    with pytest.raises(TrainingDiverged, match=f"step {step}"):
        train(tiny(tmp_path, "short", steps=step, topo="none", lr=1e9, warmup_steps=0, grad_clip=0.0,
                   checkpoint_every=1))


def test_a_weight_turning_nan_is_caught_after_the_step(tmp_path, monkeypatch):
    """The loss of a step is finite but its update is not: the run stops before saving."""
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def poisoned_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][4].view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned_step)
    config = tiny(tmp_path, steps=5, topo="none", checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match=r"non-finite weights after step 3, first in parameter "
                                               r"\S+.*last good checkpoint"):
        train(config)
    path = os.path.join(config.out, checkpoint.CHECKPOINT_NAME)
    assert checkpoint.load(path)["step"] == 2
    assert_all_finite(path)


def test_nan_features_reaching_the_spatial_loss_name_step_and_layer(tmp_path, monkeypatch):
    from topoaudio.training import loop

    real_build = loop.build_model
    calls = {"n": 0}

    def poison_block3_at_step_3(module, inputs, output):
        if not module.training:  # the sheets' probe forward runs in eval mode
            return output
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 3 else output

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.block3.register_forward_hook(poison_block3_at_step_3)
        return model

    monkeypatch.setattr(loop, "build_model", build)
    config = tiny(tmp_path, steps=5, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match=r"step 3, from non-finite features of layer block3"):
        train(config)
    assert checkpoint.load(os.path.join(config.out, checkpoint.CHECKPOINT_NAME))["step"] == 2


def test_refusing_to_write_a_non_finite_state(tmp_path):
    with pytest.raises(ValueError, match=r"\['model'\]\['w'\] holds NaN"):
        checkpoint.save_atomic({"model": {"w": torch.tensor([1.0, float("inf")])}},
                               str(tmp_path / "c.pt"))
    assert not os.listdir(tmp_path)


# --- a full disk -------------------------------------------------------------------------------------

def test_a_full_disk_keeps_the_previous_checkpoint_with_one_line(tmp_path, monkeypatch):
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync_then_disk_full(fd):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_then_disk_full)
    config = tiny(tmp_path, steps=3, topo="none", checkpoint_every=1)
    path = os.path.join(config.out, checkpoint.CHECKPOINT_NAME)
    with pytest.raises(checkpoint.CheckpointWriteError) as caught:
        train(config)
    assert str(caught.value) == (f"could not write checkpoint {path}: No space left on device; "
                                 f"the previous checkpoint {path} is kept")
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1
    assert sorted(os.listdir(config.out)) == ["checkpoint.pt", "config.json", "environment.jsonl",
                                              "metrics.jsonl"]


# --- what the command line shows ---------------------------------------------------------------------

def run_train_py(monkeypatch, *args) -> str:
    """train.py run in this process (so monkeypatches hold); returns what it exits with."""
    import runpy

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setattr("sys.argv", ["train.py", *args])
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(os.path.join(repo, "train.py"), run_name="__main__")
    return str(exited.value.code)


def test_train_py_prints_one_line_for_a_bad_checkpoint_and_a_full_disk(tmp_path, monkeypatch):
    config = run_with_checkpoint(tmp_path / "garbage", b"\x00" * 100)
    message = run_train_py(monkeypatch, "--resume", "--out", config.out)
    assert message == f"train.py: {config.out}/checkpoint.pt is not a topoaudio checkpoint " \
                      "(no 'topoaudio checkpoint' header)"

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    out = tmp_path / "full"
    message = run_train_py(monkeypatch, "--out", str(out), "--steps", "1", "--topo", "none",
                           *[f"--{key}={value}" for key, value in TINY.items()])
    assert message == (f"train.py: could not write checkpoint {out}/checkpoint.pt: No space left on "
                       "device; no checkpoint was written")


def test_every_ddp_rank_stops_at_the_same_diverged_step(tmp_path):
    """Two CPU processes: the all-reduced check stops both ranks, each with the same one line,
    and neither hangs waiting for the other. The ranks are started by hand, not by torchrun, which
    kills the other ranks as soon as one exits with an error (so it cannot show both lines)."""
    import socket
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "ddp"
    settings = {**TINY, "steps": 8, "topo": "none", "lr": 1e9, "warmup_steps": 0, "grad_clip": 0.0,
                "checkpoint_every": 1}
    command = [sys.executable, os.path.join(repo, "train.py"), "--out", str(out)]
    command += [f"--{key}={value}" for key, value in settings.items()]
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ranks = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=str(tmp_path),
                              env={**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2",
                                   "RANK": str(rank), "LOCAL_RANK": str(rank),
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
             for rank in range(2)]
    lines = []
    for process in ranks:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode != 0, stderr[-3000:]
        found = re.findall(r"train\.py: non-finite[^\n]*", stderr)
        assert len(found) == 1, stderr[-3000:]
        lines += found
    assert lines[0] == lines[1]
    step = int(re.search(r"(?:at|after) step (\d+)", lines[0]).group(1))
    assert checkpoint.load(str(out / "checkpoint.pt"))["step"] == step - 1
    assert_all_finite(str(out / "checkpoint.pt"))


def test_a_run_without_sheets_can_be_laid_on_another_kind_and_a_spatial_run_cannot(tmp_path, good_run):
    from topoaudio.evaluate import SHEET_KINDS
    from topoaudio.sheet import KINDS

    assert set(SHEET_KINDS) == set(KINDS)  # the command's choices without importing torch for --help
    path = os.path.join(good_run.out, checkpoint.CHECKPOINT_NAME)
    _, own, config = checkpoint.load_trained(path, clip_samples=10000)
    _, laid, relaid = checkpoint.load_trained(path, clip_samples=10000, sheet="channels")
    assert config["sheet"] == "channel_freq" and relaid["sheet"] == "channels"
    for layer, sheet in laid.items():
        assert sheet.kind == "channels" and sheet.n_units < own[layer].n_units  # one unit per channel
    spatial = tiny(tmp_path, "spatial", steps=1, topo="spatial")
    train(spatial)
    spatial_path = os.path.join(spatial.out, checkpoint.CHECKPOINT_NAME)
    with pytest.raises(ValueError, match="trained on its own channel_freq sheets"):
        checkpoint.load_trained(spatial_path, clip_samples=10000, sheet="channels")
    kept = checkpoint.load_trained(spatial_path, clip_samples=10000, sheet="channel_freq")[2]
    assert kept["sheet"] == "channel_freq"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_layer_gives_a_nan_term_for_that_layer_only(bad):
    """The spatial term checks each layer's responses: one bad activation in block3 makes block3's
    term NaN (so the loop's all-reduced loss check stops every rank, naming it); block2 stays finite."""
    from topoaudio.models import build_model
    from topoaudio.training.topography import TopographicLosses

    config = TrainConfig(clip_seconds=0.4, topo_layers=["block2", "block3"])
    term = TopographicLosses(config, build_model("cochcnn", n_classes=4), torch.device("cpu"),
                             clip_samples=8000)
    generator = torch.Generator().manual_seed(0)
    features = {"block2": torch.randn(6, 48, 27, 7, generator=generator),
                "block3": torch.randn(6, 96, 13, 3, generator=generator)}
    features["block3"][2, 5, 7, 1] = bad
    total, terms = term(features, step=0)
    assert torch.isnan(terms["block3"]) and torch.isfinite(terms["block2"]) and torch.isnan(total)
    features["block3"][2, 5, 7, 1] = 0.0
    total, terms = term(features, step=0)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())
