"""A run continues as itself or is refused; every setting is checked against its rule before any
work; a finished run says where it is and how it did."""
import json
import os
import subprocess
import sys

import pytest
import torch

from topoaudio import checkpoint
from topoaudio.training import TrainConfig, main, parse_args, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Half-second clips and a small set: every run here takes seconds on two cores.
TINY = dict(dataset="procedural", num_workers=0,
            clip_seconds=0.5, train_size=96, val_size=16, batch_size=8, warmup_steps=2,
            log_every=1, eval_every=1000, checkpoint_every=1000)
TINY_ARGS = [f"--{key}={value}" for key, value in TINY.items()]


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def read_config(run_dir):
    with open(os.path.join(run_dir, "config.json")) as handle:
        return json.load(handle)


def logged_steps(run_dir):
    return [record["step"] for record in read_metrics(run_dir) if "loss" in record]


def test_resume_without_out_continues_the_latest_run_with_its_own_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = ["--topo", "none", "--lr", "0.001", "--lr_schedule", "constant", *TINY_ARGS]
    main(["--steps", "2", *settings])
    main(["--resume", "--steps", "4"])  # the README's "continue the latest run"
    (run,) = os.listdir("runs")
    run_dir = os.path.join("runs", run)
    saved = read_config(run_dir)
    assert (saved["topo"], saved["lr"], saved["steps"]) == ("none", 0.001, 4)
    assert all(record["topo"] == {} for record in read_metrics(run_dir) if "loss" in record)
    assert logged_steps(run_dir) == [1, 2, 3, 4]
    # bit for bit the run that went 4 steps at once
    main(["--steps", "4", "--out", "straight", *settings])
    resumed = checkpoint.load(os.path.join(run_dir, "checkpoint.pt"))["model"]
    straight = checkpoint.load(os.path.join("straight", "checkpoint.pt"))["model"]
    assert all(torch.equal(resumed[name], straight[name]) for name in straight)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 2-step run (topo none) to try resuming in ways that must be refused."""
    out = str(tmp_path_factory.mktemp("finished") / "run")
    main(["--steps", "2", "--topo", "none", "--out", out, *TINY_ARGS])
    return out


@pytest.mark.parametrize("key, given, saved, read_as", [
    ("topo", "spatial", "'none'", "'spatial'"), ("model", "cochresnet50", "'cochcnn'", "'cochresnet50'"),
    ("seed", "1", "0", "1"), ("batch_size", "4", "8", "4"), ("lr", "0.01", "0.002", "0.01"),
    ("sheet", "channels", "'channel_freq'", "'channels'"),
    ("topo_layers", "block2", "['block2', 'block3', 'block4']", "['block2']"),
    ("dataset", "esc50", "'procedural'", "'esc50'"), ("clip_seconds", "1", "0.5", "1.0"),
    ("amp", "false", "True", "False")])
def test_a_resume_that_changes_the_experiment_is_refused(finished_run, key, given, saved, read_as):
    config_json = os.path.join(finished_run, "config.json")
    before = open(config_json, "rb").read()
    with pytest.raises(ValueError) as refused:
        main(["--resume", "--out", finished_run, "--steps", "4", f"--{key}", given])
    message = str(refused.value)
    assert f"has {key}={saved}, not {read_as};" in message
    assert "\n" not in message
    assert open(config_json, "rb").read() == before


@pytest.mark.parametrize("steps, problem", [("1", "below the checkpoint's step 2"),
                                            ("2", "complete at step 2")])
def test_a_resume_that_does_not_extend_the_run_is_refused(finished_run, steps, problem):
    before = open(os.path.join(finished_run, "config.json"), "rb").read()
    with pytest.raises(ValueError, match=problem):
        main(["--resume", "--out", finished_run, "--steps", steps])
    assert open(os.path.join(finished_run, "config.json"), "rb").read() == before


def test_a_resume_after_a_kill_logs_each_step_once(tmp_path, monkeypatch):
    from topoaudio.training import loop

    real = loop.batch_indices

    def kill_during_step_6(step, *args):
        if step == 5:
            raise KeyboardInterrupt  # steps 1-5 are logged, the checkpoint holds step 4
        return real(step, *args)

    monkeypatch.setattr(loop, "batch_indices", kill_during_step_6)
    config = TrainConfig(**{**TINY, "steps": 6, "checkpoint_every": 2, "topo": "none",
                            "out": str(tmp_path / "run")})
    with pytest.raises(KeyboardInterrupt):
        train(config)
    assert logged_steps(config.out) == [1, 2, 3, 4, 5]
    monkeypatch.undo()
    main(["--resume", "--out", config.out])
    assert logged_steps(config.out) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl"])
def test_a_new_run_never_writes_into_another_runs_files(tmp_path, name):
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text('{"step": 1, "loss": 2.0}\n')
    with pytest.raises(FileExistsError, match=f"{name}.*another --out"):
        main(["--steps", "1", "--topo", "none", "--out", str(out), *TINY_ARGS])
    assert (out / name).read_text() == '{"step": 1, "loss": 2.0}\n'
    assert sorted(os.listdir(out)) == [name]


# ---- one run per run directory (issue 23) --------------------------------------------------------

def hold_lock(run_dir):
    """Lock run_dir the way a live run does (an exclusive flock on its lock file holding a pid)."""
    import fcntl

    fd = os.open(os.path.join(run_dir, "run.lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242\n")
    return fd


@pytest.mark.parametrize("resume", [False, True], ids=["new run", "resume"])
def test_a_run_directory_locked_by_a_live_run_is_refused_naming_its_pid(finished_run, resume):
    before = {name: open(os.path.join(finished_run, name), "rb").read()
              for name in ("config.json", "metrics.jsonl", "checkpoint.pt")}
    fd = hold_lock(finished_run)
    try:
        argv = (["--resume", "--steps", "4"] if resume else ["--steps", "2", *TINY_ARGS])
        with pytest.raises(FileExistsError) as refused:
            main([*argv, "--out", finished_run])
    finally:
        os.close(fd)
    message = str(refused.value)
    assert f"{finished_run} is in use by another run (pid 4242" in message and "\n" not in message
    assert all(open(os.path.join(finished_run, name), "rb").read() == data
               for name, data in before.items())


def test_two_runs_on_one_out_one_owns_it_and_the_lock_ends_with_the_run(tmp_path, monkeypatch):
    from topoaudio.training import loop

    out = str(tmp_path / "run")
    real = loop.build_datasets
    refusals = []

    def second_run_meanwhile(config):  # the first run has started: a second, and a resume, try
        for argv in (["--steps", "2", *TINY_ARGS], ["--resume", "--steps", "3"]):
            with pytest.raises(FileExistsError) as refused:
                main([*argv, "--out", out])
            refusals.append(str(refused.value))
        return real(config)

    monkeypatch.setattr(loop, "build_datasets", second_run_meanwhile)
    main(["--steps", "2", "--topo", "none", "--out", out, *TINY_ARGS])
    assert len(refusals) == 2
    assert all(f"in use by another run (pid {os.getpid()}" in message for message in refusals)
    assert logged_steps(out) == [1, 2]  # one run's lines only
    assert "run.lock" not in os.listdir(out)
    monkeypatch.undo()
    main(["--resume", "--out", out, "--steps", "3"])  # the lock ended with the run
    assert logged_steps(out) == [1, 2, 3] and "run.lock" not in os.listdir(out)
    # one environment record per start: where, at what commit and with how many threads each ran
    with open(os.path.join(out, "environment.jsonl")) as handle:
        starts = [json.loads(line) for line in handle]
    assert [start["start_step"] for start in starts] == [0, 2]
    for start in starts:
        assert start["torch_threads"] == torch.get_num_threads() and start["cpus"] == os.cpu_count()
        assert start["torch"] == torch.__version__ and start["world_size"] == 1
        assert start["commit"] is None or len(start["commit"].split("+")[0]) == 40


def test_a_killed_runs_lock_is_released_and_a_failed_start_leaves_nothing(tmp_path, monkeypatch):
    from topoaudio.training import loop

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(  # another process holds the lock, as a live run would
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
         "print('locked', flush=True)\n"
         "time.sleep(300)\n", str(out / "run.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FileExistsError, match=f"in use by another run \\(pid {holder.pid}"):
            main(["--steps", "1", "--topo", "none", "--out", str(out), *TINY_ARGS])
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, holding a dead pid
        holder.wait()
    assert os.listdir(out) == ["run.lock"]

    def broken(config):
        raise ValueError("no data here")

    monkeypatch.setattr(loop, "build_datasets", broken)
    with pytest.raises(ValueError, match="no data here"):  # the stale lock does not block it
        main(["--steps", "1", "--topo", "none", "--out", str(out), *TINY_ARGS])
    assert os.listdir(out) == []  # and the failed run released its lock
    fresh = tmp_path / "fresh"
    with pytest.raises(ValueError, match="no data here"):
        main(["--steps", "1", "--topo", "none", "--out", str(fresh), *TINY_ARGS])
    assert not fresh.exists()  # a directory made for a run that never started is removed


@pytest.mark.parametrize("resume", [False, True], ids=["new run", "resume"])
def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path, monkeypatch, resume):
    from topoaudio.training import loop

    def no_work(config):
        raise AssertionError("the data were set up before --out was checked")

    monkeypatch.setattr(loop, "build_datasets", no_work)
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(FileExistsError) as refused:
        main([*(["--resume"] if resume else []), "--steps", "1", "--out", str(path), *TINY_ARGS])
    message = str(refused.value)
    assert "\n" not in message and f"--out {path} is an existing file, not a directory" in message
    assert path.read_text() == "keep me"


def test_an_out_that_cannot_be_made_is_one_line_before_any_work(tmp_path, monkeypatch):
    from topoaudio.training import loop

    monkeypatch.setattr(loop, "build_datasets", lambda config: 1 / 0)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"run directory .*file/run cannot be created or written: "):
        main(["--steps", "1", "--out", str(tmp_path / "file" / "run"), *TINY_ARGS])


BAD_COMMAND_LINES = [
    (["--sheet", "foo"], r"sheet must be one of \['channels', 'channel_freq'\], got 'foo'"),
    (["--topo_layers", ""], "topo='spatial' needs at least one of topo_layers"),
    (["--topo_layers", "head"], r"\['head'\] are not taps of cochcnn; its taps are \['block1'"),
    (["--model", "cochresnet50"], r"\['block2', 'block3', 'block4'\] are not taps of cochresnet50"),
    (["--topo_layers", "block2,block2"], "names a layer twice"),
    (["--neighbourhood", "-3"], "neighbourhood must be 0 or >= 2, got -3"),
    (["--neighbourhood", "1"], "neighbourhood must be 0 or >= 2, got 1"),
    (["--checkpoint_every", "0"], "checkpoint_every must be >= 1, got 0"),
    (["--log_every", "0"], "log_every must be >= 1"),
    (["--eval_every", "-5"], "eval_every must be >= 1"),
    (["--model", "resnet"], "model must be one of"),
    (["--dataset", "imagenet"], "dataset must be one of"),
    (["--spatial_kind", "tdann"], "spatial_kind must be one of"),
    (["--tau_schedule", "step"], "tau_schedule must be one of"),
    (["--device", "tpu"], "device must be one of"),
    (["--lr", "0"], "lr must be > 0, got 0.0"),
    (["--lr", "nan"], "lr: nan is not finite"),
    (["--alpha", "inf"], "alpha: inf is not finite"),
    (["--tau", "-1"], "tau must be >= 0"),
    (["--sheet_size_mm", "0"], "sheet_size_mm must be > 0"),
    (["--momentum", "1.5"], r"momentum must be in \[0, 1\)"),
    (["--layer_weights", "1,nan,1"], "layer_weights: .* is not finite"),
    (["--layer_weights", "1,-1,1"], "layer_weights must be >= 0"),
    (["--clip_seconds", "0"], "clip_seconds must be > 0"),
    (["--batch_size", "1"], "batch_size must be >= 2"),
    (["--seed", "-1"], "seed must be >= 0"),
    (["--num_workers", "-1"], "num_workers must be >= 0"),
]


@pytest.mark.parametrize("argv, problem", BAD_COMMAND_LINES,
                         ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_bad_setting_on_the_command_line_is_refused_by_name(argv, problem):
    with pytest.raises(ValueError, match=problem):
        parse_args(argv)


BAD_JSON = [
    ({"amp": "false"}, r"amp must be of type bool, got 'false' \(str\)"),
    ({"steps": "100"}, r"steps must be of type int, got '100' \(str\)"),
    ({"steps": 10.5}, r"steps must be of type int, got 10.5 \(float\)"),
    ({"lr": True}, r"lr must be of type float, got True \(bool\)"),
    ({"topo_layers": "block2"}, r"topo_layers must be of type list of str, got 'block2' \(str\)"),
    ({"layer_weights": [1, "2", 3]}, "layer_weights must be of type list of float"),
    ({"sheet": None}, r"sheet must be of type str, got None \(NoneType\)"),
]


@pytest.mark.parametrize("values, problem", BAD_JSON,
                         ids=lambda v: json.dumps(v) if isinstance(v, dict) else "")
def test_a_json_value_of_the_wrong_type_is_refused_by_name(tmp_path, values, problem):
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=problem):
        parse_args(["--config", str(path)])
    with pytest.raises(ValueError, match=problem):
        TrainConfig(**values)


def test_numbers_are_read_as_their_settings_type(tmp_path):
    path = tmp_path / "preset.json"
    path.write_text(json.dumps({"lr": 1, "amp": False, "layer_weights": [1, 0.5, 2]}))
    config, _ = parse_args(["--config", str(path)])
    assert (config.lr, config.amp, config.layer_weights) == (1.0, False, [1.0, 0.5, 2.0])
    assert type(config.lr) is float and all(type(w) is float for w in config.layer_weights)


def test_train_py_turns_a_bad_setting_into_one_line_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--neighbourhood", "-3"],
                            capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode != 0
    assert result.stderr == "train.py: neighbourhood must be 0 or >= 2, got -3\n"
    assert not os.path.exists(tmp_path / "runs")


def test_a_finished_run_says_where_it_is_and_how_it_did(tmp_path, capsys):
    out = str(tmp_path / "run")
    final = main(["--steps", "2", "--topo", "none", "--out", out, *TINY_ARGS])
    captured = capsys.readouterr()
    assert (f"run {out}: step 2, validation accuracy {final['val_accuracy']:.3f} "
            f"(chance {1 / 15:.3f}), wall time 0 min") in captured.out
    assert "batch_acc=" in captured.err and " acc=" not in captured.err
    assert "validation:" in captured.err  # the final validation has its own progress bar


RANK_PROBE = """
import json, os, sys, time
import torch.distributed as dist
real_strftime = time.strftime
# as if the ranks read the clock on either side of a second: the default run names differ
time.strftime = lambda fmt, *args: real_strftime(fmt, *args) + "-r" + os.environ["RANK"]
from topoaudio.training import loop, main
seen = {}
real_build = loop.build_datasets
def recording(config):
    seen["out"] = config.out
    return real_build(config)
loop.build_datasets = recording
main(sys.argv[1:])
seen["group_left_open"] = dist.is_initialized()
with open(f"rank{os.environ['RANK']}.json", "w") as handle:
    json.dump(seen, handle)
"""


def test_ddp_ranks_share_rank_0s_run_directory_and_close_the_group(tmp_path):
    (tmp_path / "probe.py").write_text(RANK_PROBE)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "probe.py", "--steps", "2", "--topo", "none", *TINY_ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                            cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["out"] == ranks[1]["out"] and ranks[0]["out"].endswith("-r0")
    assert not ranks[0]["group_left_open"] and not ranks[1]["group_left_open"]
    assert os.listdir(tmp_path / "runs") == [os.path.basename(ranks[0]["out"])]
