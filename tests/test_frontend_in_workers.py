"""The cochleagrams computed in the DataLoader workers (frontend_in_workers, issue 20): the same
numbers as the model's own front end, so the same run; clear errors for settings that cannot run;
the main process's threads restored afterwards."""
import json
import os

import pytest
import torch

from topoaudio.models import build_model
from topoaudio.training import train
from topoaudio.training.config import TrainConfig
from topoaudio.training.data import FrontendCollate, build_datasets, collate
from topoaudio.training.loop import resolved_frontend_in_workers

TINY = dict(dataset="procedural", num_workers=1, clip_seconds=0.5, train_size=48, val_size=16,
            batch_size=8, warmup_steps=1, steps=4, log_every=1, eval_every=1000,
            checkpoint_every=1000, topo="spatial", cpu_amp="on")


def _losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as handle:
        return [row["loss"] for row in map(json.loads, handle) if "loss" in row]


def _environment(out):
    with open(os.path.join(out, "environment.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def test_the_workers_cochleagrams_equal_the_models_own_bit_for_bit():
    # the model's front end ran inside the forward: under autocast, on every thread of the process
    config = TrainConfig(**TINY)
    train_set, _ = build_datasets(config)
    items = [train_set[i] for i in range(4)]
    model = build_model("cochcnn", 12, frontend="fast", oversample=4.0)
    waveforms, labels = collate(items)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            in_model = model.frontend(waveforms)
        torch.set_num_threads(1)  # as in a DataLoader worker
        in_worker, worker_labels = FrontendCollate(model.frontend)(items)
    finally:
        torch.set_num_threads(threads)
    assert in_worker.shape == (4, 1, 211, in_model.shape[-1]) and in_worker.dtype == torch.float32
    assert torch.equal(in_worker, in_model)
    assert torch.equal(worker_labels, labels)


def test_a_run_with_the_front_end_in_the_workers_is_the_same_run(tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 + TINY["num_workers"])  # the placement leaves the main process 1
        train(TrainConfig(**TINY, frontend_in_workers="on", out=str(tmp_path / "on")))
        assert torch.get_num_threads() == 1 + TINY["num_workers"], "threads not restored"
        torch.set_num_threads(1)  # the network's numbers depend on its thread count
        train(TrainConfig(**TINY, frontend_in_workers="off", out=str(tmp_path / "off")))
    finally:
        torch.set_num_threads(threads)
    on, off = _losses(tmp_path / "on"), _losses(tmp_path / "off")
    assert len(on) == TINY["steps"] and on == off
    assert _environment(tmp_path / "on")[-1]["frontend_in_workers"] is True
    assert _environment(tmp_path / "off")[-1]["frontend_in_workers"] is False


def test_auto_puts_it_in_the_workers_only_on_the_cpu_with_workers():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolved_frontend_in_workers(TrainConfig(num_workers=1), cpu) is True
    assert resolved_frontend_in_workers(TrainConfig(num_workers=0), cpu) is False
    assert resolved_frontend_in_workers(TrainConfig(num_workers=4), cuda) is False
    assert resolved_frontend_in_workers(TrainConfig(frontend_in_workers="off"), cpu) is False


def test_settings_that_cannot_run_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="frontend_in_workers=on .* needs num_workers >= 1"):
        TrainConfig(frontend_in_workers="on", num_workers=0)
    with pytest.raises(ValueError, match="frontend_in_workers=on .* trains on cuda"):
        resolved_frontend_in_workers(TrainConfig(frontend_in_workers="on"), torch.device("cuda"))
    with pytest.raises(ValueError, match="frontend_in_workers"):
        TrainConfig(frontend_in_workers="sometimes")


def test_the_front_end_passes_only_its_own_output_on():
    model = build_model("cochcnn", 12)
    images = torch.zeros(2, 1, 211, 190)
    with pytest.raises(ValueError, match=r"expected waveforms \[B, T\]"):
        model.frontend(images)  # not precomputed: a 4-D input is a mistake
    model.frontend.precomputed = True
    assert model.frontend(images) is images
    with pytest.raises(ValueError, match=r"precomputed cochleagrams must be float32 \[B, 1, 211"):
        model.frontend(torch.zeros(2, 1, 128, 190))
    with pytest.raises(ValueError, match="precomputed cochleagrams must be float32"):
        model.frontend(images.double())
    assert model.frontend(0.1 * torch.randn(2, 20000)).shape == (2, 1, 211, 190)  # computed
