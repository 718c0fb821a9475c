"""The environment record that runs, evaluations and readouts write: the commit of the imported
source, versions, machine and threads; None, not an error, for what cannot be found."""
import os
import pathlib
import re

import torch

from topoaudio import environment as env


def test_the_record_names_commit_versions_machine_and_threads():
    record = env.environment()
    assert record["torch"] == torch.__version__ and record["torch_threads"] == torch.get_num_threads()
    assert record["cpus"] == os.cpu_count()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", record["time"])
    if (env.PACKAGE_DIR.parent / ".git").exists():  # a clone (as CI's): the commit is found
        assert re.fullmatch(r"[0-9a-f]{40}(\+uncommitted changes)?", record["commit"]), record["commit"]
    else:  # a source tree without git history
        assert record["commit"] is None


def test_outside_a_checkout_the_commit_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr(env, "PACKAGE_DIR", tmp_path)
    assert env.source_commit() is None
    # an installed copy inside some other repository (a .venv in a checkout) is not that checkout
    monkeypatch.setattr(env, "PACKAGE_DIR", pathlib.Path(__file__).resolve().parent / "fixtures")
    assert env.source_commit() is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert env.source_commit() is None and env.environment()["commit"] is None
