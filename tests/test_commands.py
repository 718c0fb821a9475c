"""The commands behave as command-line tools do (issue 22, item 5): `--help` through argparse,
grouped, with types and defaults, exit status 0 (under torchrun too, without a traceback);
`topoaudio --help` lists the subcommands, `--version`, `python -m topoaudio`, `topoaudio train`."""
import os
import re
import subprocess
import sys

import pytest

from topoaudio import __version__, cli
from topoaudio.training import parse_args
from topoaudio.training.config import HELP, RULES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*command, timeout=300):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_train_py_help_lists_every_setting_grouped_with_its_type_and_default():
    done = run(sys.executable, "train.py", "--help")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = done.stdout
    assert text.startswith("usage: torchrun [--nproc_per_node=K] train.py")
    groups = [line.rstrip(":") for line in text.splitlines() if re.fullmatch(r"[a-z ]+:", line)]
    assert groups == ["options", "run", "model and data", "optimisation", "topography", "bookkeeping"]
    flat = " ".join(text.split())
    for name in RULES:
        assert f"--{name} " in text, name
    assert "--steps INT optimiser steps (default: 5000)" in flat
    assert "--lr FLOAT peak learning rate (default: 0.002)" in flat
    assert "--topo {none,spatial,topoloss}" in flat and "(default: spatial)" in flat
    assert ("--topo_layers STR,... the layers it applies to (taps of the model) "
            "(default: block2,block3,block4)") in flat
    assert "--amp BOOL bf16 autocast on GPUs (default: true)" in flat
    assert all("\n" not in line and line for line in HELP.values())


@pytest.mark.slow
def test_train_py_help_under_torchrun_exits_0_without_a_traceback():
    done = run(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               "train.py", "--help")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout and "--steps INT" in done.stdout


def test_the_parser_keeps_the_command_lines_it_always_took():
    config, resume = parse_args(["--steps", "9", "--lr=0.1", "--layer-weights", "1,2", "--resume",
                                 "--topo_layers", "block2,block4", "--amp", "no", "--seed", "3"])
    assert (config.steps, config.lr, config.amp, config.seed, resume) == (9, 0.1, False, 3, True)
    assert config.layer_weights == [1.0, 2.0] and config.topo_layers == ["block2", "block4"]
    # a value is the next argument, even one that starts with "-"
    with pytest.raises(ValueError, match="layer_weights must be >= 0"):
        parse_args(["--topo_layers", "block2,block4", "--layer_weights", "-1,1"])
    with pytest.raises(ValueError, match="seed must be >= 0"):
        parse_args(["--seed", "-1"])
    with pytest.raises(ValueError, match="--steps needs a value"):
        parse_args(["--steps"])
    with pytest.raises(ValueError, match=r"unexpected argument 'block2'; use --key value \(see --help\)"):
        parse_args(["block2"])
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['ste'\]"):
        parse_args(["--ste", "3"])  # no abbreviations


def test_topoaudio_help_lists_the_subcommands_and_exits_0(capsys):
    cli.main(["--help"])
    text = capsys.readouterr().out
    for name in ("train", "evaluate", "demo", "readout"):
        assert re.search(rf"^  {name} +\S", text, re.MULTILINE), name
    cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"topoaudio {__version__}"
    with pytest.raises(SystemExit) as stop:
        cli.main(["frobnicate"])
    assert "unknown subcommand 'frobnicate'" in str(stop.value.code)


def test_python_m_topoaudio_is_the_console_script():
    done = run(sys.executable, "-m", "topoaudio", "--help")
    assert done.returncode == 0 and "subcommands:" in done.stdout
    done = run(sys.executable, "-m", "topoaudio", "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"topoaudio {__version__}"


@pytest.mark.parametrize("command", ["train", "evaluate", "demo", "readout"])
def test_every_subcommand_help_shows_its_defaults_and_exits_0(command, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--help"])
    assert stop.value.code in (0, None)
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(f"usage: topoaudio {command}") and "(default: " in text
    expected = {"train": "--batch_size INT global batch, split evenly across ranks (default: 16)",
                "evaluate": "cpu, cuda, cuda:1, ... (default: cpu)",
                "demo": "directory for the PNG (default: outputs)",
                "readout": "clips per forward pass (default: 16)"}[command]
    assert expected in text


def test_topoaudio_train_refuses_a_bad_setting_in_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--steps", "0"])
    assert stop.value.code == "topoaudio train: steps must be >= 1, got 0"


_POLICY_PROBE = ("import sys, runpy; sys.argv = ['train.py', '--help']\n"
                 "try:\n    runpy.run_path({path!r}, run_name='__main__')\n"
                 "except SystemExit:\n    pass\n"
                 "import os; print('policy', os.environ.get('OMP_WAIT_POLICY'))")


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_training_lets_openmp_threads_sleep_unless_the_user_chose(given, expected):
    # issue 20: set before torch loads OpenMP, which reads it once; a user's own choice wins
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    probe = _POLICY_PROBE.format(path=os.path.join(REPO, "train.py"))
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          check=True)
    assert f"policy {expected}" in done.stdout


def test_the_wait_policy_is_left_alone_once_torch_is_loaded(monkeypatch):
    import torch  # noqa: F401  (loaded: OpenMP has read its settings already)

    from topoaudio.commandline import sleeping_openmp_waits

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    sleeping_openmp_waits()
    assert "OMP_WAIT_POLICY" not in os.environ
