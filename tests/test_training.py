"""The training loop: config handling, exact resume, loss going down, DDP on two CPU processes,
atomic checkpoints, and stopping on a non-finite loss."""
import json
import os

import pytest
import torch
from conftest import torchrun_train

from topoaudio import checkpoint
from topoaudio.training import TrainingDiverged, parse_args, train
from topoaudio.training.config import TrainConfig
from topoaudio.training.loop import batch_indices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Half-second clips and a small set: every test trains in seconds on two cores.
TINY = dict(dataset="procedural", num_workers=0,
            clip_seconds=0.5, train_size=96, val_size=16, batch_size=8, warmup_steps=2,
            log_every=1, eval_every=1000, checkpoint_every=1000)


def tiny(tmp_path, name="run", **overrides):
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **overrides})


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def test_parse_args_layers_file_and_command_line(tmp_path):
    path = tmp_path / "preset.json"
    path.write_text(json.dumps({"model": "cochcnn", "steps": 7, "topo_layers": ["block3"]}))
    config, resume = parse_args(["--config", str(path), "--steps", "9", "--lr=0.1", "--amp", "false",
                                 "--topo_layers", "block2,block4", "--resume"])
    assert (config.steps, config.lr, config.amp, resume) == (9, 0.1, False, True)
    assert config.topo_layers == ["block2", "block4"]
    config, _ = parse_args(["--topo_layers", "block2,block4", "--layer_weights", "1,0.5"])
    assert config.layer_weights == [1.0, 0.5]
    with pytest.raises(ValueError, match="layer_weights has 1 values for 2 topo_layers"):
        parse_args(["--topo_layers", "block2,block4", "--layer_weights", "2"])


def test_unknown_keys_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['stpes'\].*valid keys: .*steps"):
        parse_args(["--stpes", "3"])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(ValueError, match="learning_rate.*bad.json"):
        parse_args(["--config", str(path)])
    with pytest.raises(ValueError, match="cannot read 'many' as int"):
        parse_args(["--steps", "many"])
    with pytest.raises(ValueError, match="topo must be one of"):
        parse_args(["--topo", "tdann"])


def test_batches_are_a_function_of_step_and_cover_each_epoch():
    config = TrainConfig(batch_size=8, seed=3)
    epoch = [i for step in range(12) for i in batch_indices(step, config, 96, 0, 1)]
    assert sorted(epoch) == list(range(96))  # 12 steps x 8 = one permutation
    assert batch_indices(5, config, 96, 0, 1) == batch_indices(5, config, 96, 0, 1)
    halves = batch_indices(5, config, 96, 0, 2) + batch_indices(5, config, 96, 1, 2)
    assert halves == batch_indices(5, config, 96, 0, 1)


def test_loss_decreases_on_the_embedded_data(tmp_path):
    config = tiny(tmp_path, steps=36, lr=3e-3)
    final = train(config)
    losses = [record["task_loss"] for record in read_metrics(config.out) if "task_loss" in record]
    assert len(losses) == 36 and all(map(lambda v: v == v, losses))
    assert sum(losses[-6:]) / 6 < 0.85 * sum(losses[:6]) / 6
    assert set(final["topo"]) == {"block2", "block3", "block4"}
    assert os.path.isfile(os.path.join(config.out, "checkpoint.pt"))


def assert_same_run(dir_a, dir_b, steps):
    a = checkpoint.load(os.path.join(dir_a, "checkpoint.pt"))
    b = checkpoint.load(os.path.join(dir_b, "checkpoint.pt"))
    assert a["step"] == b["step"] == steps
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    log_a = [r["loss"] for r in read_metrics(dir_a) if "loss" in r]
    log_b = [r["loss"] for r in read_metrics(dir_b) if "loss" in r]
    assert log_a == log_b and len(log_a) == steps


def test_n_steps_then_resume_to_2n_equals_2n_straight(tmp_path):
    # the lr schedule spans 6 steps in both runs, so the first leg is the start of the straight run
    straight = tiny(tmp_path, "straight", steps=6, schedule_steps=6)
    train(straight)
    first = tiny(tmp_path, "resumed", steps=3, schedule_steps=6)
    train(first)
    train(tiny(tmp_path, "resumed", steps=6, schedule_steps=6), resume=True)
    assert_same_run(straight.out, first.out, 6)


def test_resume_after_an_interruption_continues_exactly(tmp_path, monkeypatch):
    from topoaudio.training import loop

    straight = tiny(tmp_path, "straight", steps=6)
    train(straight)
    real = loop.batch_indices

    def interrupt_at_step_5(step, *args):
        if step == 4:
            raise KeyboardInterrupt  # as if the job were killed after checkpointing step 4
        return real(step, *args)

    monkeypatch.setattr(loop, "batch_indices", interrupt_at_step_5)
    interrupted = tiny(tmp_path, "interrupted", steps=6, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted)
    monkeypatch.undo()
    train(tiny(tmp_path, "interrupted", steps=6, checkpoint_every=2), resume=True)
    assert_same_run(straight.out, interrupted.out, 6)


def test_an_existing_run_is_never_overwritten(tmp_path):
    config = tiny(tmp_path, steps=1, topo="none")
    train(config)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny(tmp_path, steps=1, topo="none"))
    with pytest.raises(ValueError, match="has model='cochcnn', not 'cochresnet50'"):
        train(tiny(tmp_path, steps=2, topo="none", model="cochresnet50"), resume=True)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from topoaudio.training import topography

    real = topography.spatial_loss
    calls = {"n": 0}

    def poisoned(responses, positions, **kwargs):
        calls["n"] += 1
        value = real(responses, positions, **kwargs)
        return value * float("nan") if calls["n"] > 6 else value  # 3 layers x 2 steps are fine

    monkeypatch.setattr(topography, "spatial_loss", poisoned)
    config = tiny(tmp_path, steps=5, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match=r"step 3.*layer\(s\) \['block2'.*checkpoint"):
        train(config)
    assert checkpoint.load(os.path.join(config.out, "checkpoint.pt"))["step"] == 2


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    checkpoint.save_atomic({"format_version": checkpoint.FORMAT_VERSION, "step": 1}, path)

    def crash(obj, handle):
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_atomic({"format_version": checkpoint.FORMAT_VERSION, "step": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_topoloss_training_logs_each_layer(tmp_path):
    final = train(tiny(tmp_path, steps=2, topo="topoloss", tau=10.0))
    assert set(final["topo"]) == {"block2", "block3", "block4"}
    assert all(value > 0 for value in final["topo"].values())


def test_layer_weights_scale_each_layers_spatial_term(tmp_path):
    plain = train(tiny(tmp_path, "plain", steps=1))
    weighted = train(tiny(tmp_path, "weighted", steps=1, layer_weights=[1.0, 0.0, 2.0]))
    assert weighted["topo"]["block3"] == 0.0
    assert weighted["topo"]["block2"] == pytest.approx(plain["topo"]["block2"], rel=1e-6)
    assert weighted["topo"]["block4"] == pytest.approx(2 * plain["topo"]["block4"], rel=1e-6)


def test_two_process_ddp_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    result = torchrun_train(tmp_path, out, TINY, steps=3)
    assert result.returncode == 0, result.stderr[-3000:]
    state = checkpoint.load(str(out / "checkpoint.pt"))
    assert state["step"] == 3 and len(state["rng"]) == 2
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == [1, 2, 3]
