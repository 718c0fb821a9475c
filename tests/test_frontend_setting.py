"""The front end a run trains with (issue 20): a setting of the run, recorded in its config and
checkpoint, rebuilt by load_trained and the untrained twin, and named by evaluation; runs saved
before the setting existed are exact."""
import json
import os

import pytest
import torch

from topoaudio import checkpoint
from topoaudio.analysis.controls import untrained_twin
from topoaudio.analysis.evaluation import frontend_description
from topoaudio.models import build_model
from topoaudio.training import train
from topoaudio.training.config import TrainConfig

TINY = dict(dataset="procedural", num_workers=0, clip_seconds=0.5, train_size=48, val_size=16,
            batch_size=8, warmup_steps=1, steps=2, log_every=1, eval_every=1000,
            checkpoint_every=1000, topo="spatial")


def test_a_fast_run_records_its_front_end_and_is_measured_through_it(tmp_path):
    out = str(tmp_path / "fast")
    train(TrainConfig(**TINY, frontend="fast", oversample=3.0, out=out))
    with open(os.path.join(out, "config.json")) as handle:
        saved = json.load(handle)
    assert saved["frontend"] == "fast" and saved["oversample"] == 3.0
    model, _, config = checkpoint.load_trained(os.path.join(out, checkpoint.CHECKPOINT_NAME))
    assert frontend_description(model) == "fast (oversample 3)"
    assert frontend_description(untrained_twin(config)) == "fast (oversample 3)"


def test_runs_saved_before_the_setting_are_exact(tmp_path):
    out = str(tmp_path / "exact")
    train(TrainConfig(**TINY, out=out))
    path = os.path.join(out, checkpoint.CHECKPOINT_NAME)
    state = checkpoint.load(path)
    for key in ("frontend", "oversample"):
        state["config"].pop(key)
    checkpoint.save_atomic(state, path)
    model, _, config = checkpoint.load_trained(path)
    assert frontend_description(model) == "exact"
    assert frontend_description(untrained_twin(config)) == "exact"


def test_the_front_end_changes_no_weight():
    torch.manual_seed(0)
    exact = build_model("cochcnn", 3)
    torch.manual_seed(0)
    fast = build_model("cochcnn", 3, frontend="fast", oversample=4.0)
    assert exact.state_dict().keys() == fast.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(exact.state_dict().values(),
                                                  fast.state_dict().values(), strict=True))


@pytest.mark.parametrize("overrides, message", [
    (dict(frontend="quick"), "frontend"),
    (dict(frontend="fast", oversample=0.5), "oversample"),
])
def test_bad_front_end_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**TINY, **overrides})
