"""Every shipped preset parses (no unknown keys, valid values)."""
import glob
import os

import pytest

from topoaudio.training import parse_args

PRESETS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.json")))


def test_presets_exist():
    assert len(PRESETS) >= 3


@pytest.mark.parametrize("path", PRESETS, ids=os.path.basename)
def test_preset_parses(path):
    config, resume = parse_args(["--config", path])
    assert not resume and config.steps >= 1


def test_default_preset_is_what_train_py_runs_without_arguments():
    # configs/default.json documents the main job; it must not drift from TrainConfig's defaults
    import json

    from topoaudio.training.config import TrainConfig

    path = os.path.join(os.path.dirname(__file__), "..", "configs", "default.json")
    with open(path) as file:
        preset = json.load(file)
    defaults = TrainConfig().to_dict()
    assert {key: defaults[key] for key in preset} == preset
