"""bf16 autocast on the CPU (issue 20): a run setting, cpu_amp = auto | on | off. "auto" is
resolved before the run starts and the run saves what it chose, so that a resumed run computes as
it began; runs saved before the setting existed computed in float32 and resume so."""
import json
import os

import pytest
import torch

from topoaudio import checkpoint
from topoaudio.training import loop, train
from topoaudio.training.config import TrainConfig

TINY = dict(dataset="procedural", num_workers=0, clip_seconds=0.5, train_size=48, val_size=16,
            batch_size=8, warmup_steps=1, steps=2, log_every=1, eval_every=1000,
            checkpoint_every=1000, topo="spatial")
CPU = torch.device("cpu")


@pytest.mark.parametrize("native, chosen", [(True, "on"), (False, "off")])
def test_auto_follows_the_cpu_and_explicit_settings_are_kept(monkeypatch, native, chosen):
    monkeypatch.setattr(loop, "native_bf16", lambda: native)
    assert loop.resolved_cpu_amp("auto", CPU) == chosen
    assert loop.resolved_cpu_amp("on", CPU) == "on" and loop.resolved_cpu_amp("off", CPU) == "off"
    assert loop.resolved_cpu_amp("on", torch.device("meta")) == "off"  # not a CPU run: amp rules


def _conv_dtypes(model_type_holder):
    """A forward hook recording the output dtype of every Conv2d the run builds."""
    seen = []
    original = loop.build_model

    def build(*args, **kwargs):
        model = original(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        return model
    model_type_holder.setattr(loop, "build_model", build)
    return seen


@pytest.mark.parametrize("setting, dtype", [("on", torch.bfloat16), ("off", torch.float32)])
def test_the_run_computes_in_the_saved_precision(tmp_path, monkeypatch, setting, dtype):
    seen = _conv_dtypes(monkeypatch)
    out = str(tmp_path / setting)
    train(TrainConfig(**TINY, cpu_amp=setting, out=out))
    with open(os.path.join(out, "config.json")) as handle:
        assert json.load(handle)["cpu_amp"] == setting
    assert checkpoint.load(os.path.join(out, checkpoint.CHECKPOINT_NAME))["config"]["cpu_amp"] == setting
    # cochcnn has 4 convolutions; the set-up probe and validation run in float32, the 2 steps in dtype
    assert seen.count(torch.bfloat16) == (4 * TINY["steps"] if dtype == torch.bfloat16 else 0)
    assert seen.count(torch.float32) >= 4


def test_auto_is_saved_as_what_it_chose_and_a_resume_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "native_bf16", lambda: True)
    out = str(tmp_path / "auto")
    train(TrainConfig(**TINY, cpu_amp="auto", out=out))
    path = os.path.join(out, checkpoint.CHECKPOINT_NAME)
    assert checkpoint.load(path)["config"]["cpu_amp"] == "on"
    monkeypatch.setattr(loop, "native_bf16", lambda: False)  # resumed on a machine without bf16
    seen = _conv_dtypes(monkeypatch)
    train(resume=True, requested={"out": out, "steps": 3})
    assert checkpoint.load(path)["config"]["cpu_amp"] == "on"
    assert torch.bfloat16 in seen


def test_runs_saved_before_the_setting_resume_in_float32(tmp_path, monkeypatch):
    out = str(tmp_path / "old")
    train(TrainConfig(**TINY, out=out))
    path = os.path.join(out, checkpoint.CHECKPOINT_NAME)
    state = checkpoint.load(path)
    state["config"].pop("cpu_amp")
    checkpoint.save_atomic(state, path)
    seen = _conv_dtypes(monkeypatch)
    train(resume=True, requested={"out": out, "steps": 3})
    assert checkpoint.load(path)["config"]["cpu_amp"] == "off"
    assert seen and set(seen) == {torch.float32}


def test_a_bad_setting_is_refused_by_name():
    with pytest.raises(ValueError, match="cpu_amp"):
        TrainConfig(cpu_amp="bf16")


def test_a_resume_that_asks_for_auto_gets_the_run_as_it_began(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "native_bf16", lambda: True)
    out = str(tmp_path / "asked")
    config = TrainConfig(**TINY, cpu_amp="auto", out=out)
    train(config)
    requested = {**TrainConfig(**TINY, cpu_amp="auto", out=out).to_dict(), "steps": 3}
    train(resume=True, requested=requested)  # the whole config, "auto" included: accepted
    assert checkpoint.load(os.path.join(out, checkpoint.CHECKPOINT_NAME))["config"]["cpu_amp"] == "on"
    with pytest.raises(ValueError, match="cpu_amp='on', not 'off'"):
        train(resume=True, requested={"out": out, "steps": 4, "cpu_amp": "off"})
