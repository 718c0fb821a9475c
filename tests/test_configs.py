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
