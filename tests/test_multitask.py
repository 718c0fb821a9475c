"""Multi-task training: one head per task, a loss that skips clips a task does not label, per-task
metrics, checkpoints that record the tasks, exact resume, and single-task runs as before.

The runs use a small synthetic multi-task set (FakeScenes below) shaped like SpeechMusicScenes, so
they need neither espeak nor a SoundFont; the last test runs the real scenes when they can be made."""
import json
import os

import numpy as np
import pytest
import torch
from conftest import torchrun_train
from torch.nn import functional

from topoaudio import checkpoint
from topoaudio.data import CLASSES
from topoaudio.models import CochCNN, CochResNet50, build_model, tapped
from topoaudio.training import TrainConfig, loop, main, parse_args, train
from topoaudio.training.config import ADDED_SETTINGS
from topoaudio.training.data import build_datasets, collate
from topoaudio.training.objective import Objective, accuracy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 20000
# Half-second clips and a small set: every run here takes seconds on two cores.
TINY = dict(dataset="procedural", num_workers=0,
            clip_seconds=0.5, train_size=48, val_size=12, batch_size=6, warmup_steps=2, topo="none",
            log_every=1, eval_every=1000, checkpoint_every=1000)
TASKS = {"word": 4, "speaker": 3, "instrument": 5, "category": 3}


class FakeScenes(torch.utils.data.Dataset):
    """Clips whose labels a cochleagram can tell apart: category 0 ("speech") is a tone whose pitch
    is the word and whose AM rate is the speaker, category 1 ("music") a harmonic tone whose pitch
    is the instrument, category 2 noise. Tasks that do not apply are -1, as in SpeechMusicScenes."""

    tasks = TASKS

    def __init__(self, size: int, seed: int = 0, seconds: float = 0.5):
        self.size, self.seed, self.samples = size, seed, int(seconds * SR)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        rng = np.random.default_rng([self.seed, index])
        t = np.arange(self.samples) / SR
        category = index % 3
        target = {"word": -1, "speaker": -1, "instrument": -1, "category": category}
        if category == 0:
            target["word"], target["speaker"] = int(rng.integers(4)), int(rng.integers(3))
            tone = np.sin(2 * np.pi * (300 * 2 ** target["word"]) * t)
            waveform = tone * (1.2 + np.sin(2 * np.pi * (4 + 12 * target["speaker"]) * t))
        elif category == 1:
            target["instrument"] = int(rng.integers(5))
            f0 = 150 * 1.6 ** target["instrument"]
            waveform = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 5))
        else:
            waveform = rng.standard_normal(self.samples)
        waveform = waveform + 0.05 * rng.standard_normal(self.samples)
        return torch.from_numpy(waveform.astype(np.float32)), target


@pytest.fixture
def fake_scenes(monkeypatch):
    def build(config):
        return (FakeScenes(config.train_size, config.seed, config.clip_seconds),
                FakeScenes(config.val_size, config.seed + 1, config.clip_seconds))
    monkeypatch.setattr(loop, "build_datasets", build)


def tiny(tmp_path, name="run", **overrides):
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **overrides})


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


# --- heads -------------------------------------------------------------------------------------------

def test_one_head_per_task_and_the_single_head_as_before():
    waveform = 0.1 * torch.randn(2, 10000)
    multi = build_model("cochcnn", tasks={"word": 4, "speaker": 3}).eval()
    single = build_model("cochcnn", 7).eval()
    with torch.no_grad(), tapped(multi, multi.tap_names) as multi_features:
        outputs = multi(waveform)
    with torch.no_grad(), tapped(single, single.tap_names) as single_features:
        logits = single(waveform)
    assert {task: tuple(value.shape) for task, value in outputs.items()} == {"word": (2, 4),
                                                                             "speaker": (2, 3)}
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 7)
    # the trunk and its taps do not depend on the heads
    assert ({name: value.shape for name, value in multi_features.items()}
            == {name: value.shape for name, value in single_features.items()})
    assert set(multi.state_dict()) - set(single.state_dict()) == {
        "heads.word.weight", "heads.word.bias", "heads.speaker.weight", "heads.speaker.bias"}
    assert "head.weight" in single.state_dict()  # the key single-task checkpoints were saved with
    assert multi.tasks == {"word": 4, "speaker": 3} and single.tasks is None
    # one task is still a dict: the caller asked for tasks
    assert set(CochCNN({"word": 4}).eval()(waveform)) == {"word"}


def test_cochresnet50_heads_follow_the_same_rules():
    model = CochResNet50({"word": 3})
    assert set(model.heads) == {"word"} and model.tasks == {"word": 3}
    assert "heads.out.weight" in CochResNet50(5).state_dict()  # single-task checkpoints keep loading


@pytest.mark.parametrize("kwargs, problem", [
    (dict(), "exactly one of them"), (dict(n_classes=3, tasks={"word": 3}), "exactly one of them"),
    (dict(tasks={}), "heads must be a class count or map task names"),
    (dict(tasks={"word": 0}), "task 'word' needs a positive class count"),
    (dict(tasks={"a.b": 2}), "without '.'"), (dict(n_classes=0), "at least 1 class")])
def test_bad_heads_are_one_line_errors(kwargs, problem):
    with pytest.raises(ValueError, match=problem) as refused:
        build_model("cochcnn", **kwargs)
    assert "\n" not in str(refused.value)


# --- loss, accuracy, batching ------------------------------------------------------------------------

def test_the_loss_skips_unlabelled_clips_and_weights_each_task():
    torch.manual_seed(0)
    objective = Objective(0, {"word": 5, "speaker": 3, "instrument": 4}, {"word": 2.0, "speaker": 0.5,
                                                                           "instrument": 1.0})
    logits = {task: torch.randn(6, n, requires_grad=True) for task, n in objective.tasks.items()}
    labels = {"word": torch.tensor([1, -1, 4, -1, 0, 2]), "speaker": torch.tensor([-1, 2, -1, -1, -1, 0]),
              "instrument": torch.full((6,), -1)}  # no clip of this batch is music
    total, terms = objective.loss(logits, labels)
    for task in ("word", "speaker"):
        labelled = labels[task] != -1
        expected = functional.cross_entropy(logits[task][labelled], labels[task][labelled])
        torch.testing.assert_close(terms[task], expected)
    assert float(terms["instrument"].detach()) == 0.0  # a task without a labelled clip adds 0, not NaN
    torch.testing.assert_close(total, 2.0 * terms["word"] + 0.5 * terms["speaker"])
    total.backward()
    assert torch.isfinite(total) and not logits["instrument"].grad.any()
    assert not logits["word"].grad[1].any() and logits["word"].grad[0].abs().sum() > 0
    batch = accuracy({task: value.detach() for task, value in logits.items()}, labels)
    assert batch["instrument"] is None
    word_hits = (logits["word"].argmax(1) == labels["word"])[labels["word"] != -1]
    assert batch["word"] == pytest.approx(float(word_hits.float().mean()))


def test_collate_stacks_each_task_and_refuses_mixed_targets():
    waveform = torch.zeros(5)
    waveforms, labels = collate([(waveform, {"word": 3, "category": 0}),
                                 (waveform, {"word": -1, "category": 2})])
    assert waveforms.shape == (2, 5)
    assert set(labels) == {"word", "category"} and labels["word"].dtype == torch.long
    assert labels["word"].tolist() == [3, -1] and labels["category"].tolist() == [0, 2]
    with pytest.raises(ValueError, match="every item of a multi-task dataset must label the same tasks"):
        collate([(waveform, {"word": 3}), (waveform, {"speaker": 1})])
    _, single = collate([(waveform, 4), (waveform, 1)])
    assert single.tolist() == [4, 1]


# --- settings ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings, problem", [
    (dict(tasks=["word", "word"]), "names a task twice"),
    (dict(tasks=["word", "speaker"], task_weights=[1.0]), "task_weights has 1 values for 2 tasks"),
    (dict(task_weights=[1.0, 0.0]), "task_weights must be > 0"),
    (dict(tasks=["word", ""]), "must not hold an empty name")])
def test_task_settings_are_checked_before_any_work(settings, problem):
    with pytest.raises(ValueError, match=problem):
        TrainConfig(**settings)


def test_task_settings_are_checked_against_the_dataset():
    scenes = FakeScenes(4)
    objective = Objective.for_dataset(TrainConfig(tasks=["category", "word"], task_weights=[1.0, 3.0]),
                                      scenes)
    assert objective.tasks == {"category": 3, "word": 4}
    assert objective.weights == {"category": 1.0, "word": 3.0}
    assert Objective.for_dataset(TrainConfig(), scenes).tasks == TASKS  # default: every task
    with pytest.raises(ValueError, match=r"tasks \['genre'\] are not tasks of dataset .* it labels"):
        Objective.for_dataset(TrainConfig(tasks=["word", "genre"]), scenes)
    with pytest.raises(ValueError, match="task_weights has 2 values for the 4 tasks"):
        Objective.for_dataset(TrainConfig(task_weights=[1.0, 2.0]), scenes)


def test_tasks_on_a_single_task_dataset_are_refused_before_any_work(tmp_path):
    config = tiny(tmp_path, tasks=["word"])
    with pytest.raises(ValueError, match="apply to multi-task datasets.*'procedural' has one label"):
        train(config)
    assert not os.path.exists(config.out)


# --- training ----------------------------------------------------------------------------------------

def test_a_multi_task_run_logs_each_task_and_records_the_tasks(tmp_path, fake_scenes, capsys):
    config = tiny(tmp_path, steps=3, eval_every=3, tasks=["word", "speaker", "category"],
                  task_weights=[1.0, 2.0, 0.5])
    final = train(config)
    trained = ["word", "speaker", "category"]
    records = read_metrics(config.out)
    steps = [record for record in records if "loss" in record]
    assert [record["step"] for record in steps] == [1, 2, 3]
    for record in steps:
        assert list(record["task_losses"]) == trained and list(record["accuracy"]) == trained
        labelled = [task for task in trained if record["accuracy"][task] is not None]
        assert "category" in labelled  # every clip has a category
        weighted = sum(weight * record["task_losses"][task]
                       for task, weight in zip(trained, (1.0, 2.0, 0.5), strict=True) if task in labelled)
        assert record["task_loss"] == pytest.approx(weighted, rel=1e-5)
        assert all(0 <= record["accuracy"][task] <= 1 for task in labelled)
    (validation,) = [record for record in records if "val_accuracy" in record]
    assert list(validation["val_accuracy"]) == trained
    assert validation["chance"] == {"word": 1 / 4, "speaker": 1 / 3, "category": 1 / 3}
    assert all(0 <= value <= 1 for value in validation["val_accuracy"].values())
    assert final["val_accuracy"] == validation["val_accuracy"]
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert all(f"{task} {final['val_accuracy'][task]:.3f} (chance {final['chance'][task]:.3f})"
               in summary for task in trained)
    # the checkpoint records the heads, and load_trained rebuilds them
    path = os.path.join(config.out, checkpoint.CHECKPOINT_NAME)
    assert checkpoint.load(path)["tasks"] == {"word": 4, "speaker": 3, "category": 3}
    model, _, saved_config = checkpoint.load_trained(path, clip_samples=10000)
    assert model.tasks == {"word": 4, "speaker": 3, "category": 3}
    assert saved_config["task_weights"] == [1.0, 2.0, 0.5]
    with torch.no_grad():
        outputs = model(FakeScenes(2)[0][0][None])
    assert {task: tuple(value.shape) for task, value in outputs.items()} == {
        "word": (1, 4), "speaker": (1, 3), "category": (1, 3)}


def test_a_resumed_multi_task_run_equals_a_straight_one(tmp_path, fake_scenes):
    settings = dict(lr_schedule="constant", lr=1e-3)
    train(tiny(tmp_path, "resumed", steps=2, **settings))
    train(resume=True, requested={"out": str(tmp_path / "resumed"), "steps": 4})
    train(tiny(tmp_path, "straight", steps=4, **settings))
    resumed = checkpoint.load(tmp_path / "resumed" / checkpoint.CHECKPOINT_NAME)
    straight = checkpoint.load(tmp_path / "straight" / checkpoint.CHECKPOINT_NAME)
    assert resumed["tasks"] == straight["tasks"] == TASKS
    assert all(torch.equal(resumed["model"][name], straight["model"][name]) for name in straight["model"])
    assert ([r["task_losses"] for r in read_metrics(tmp_path / "resumed") if "loss" in r]
            == [r["task_losses"] for r in read_metrics(tmp_path / "straight") if "loss" in r])


def test_the_category_task_is_learned(tmp_path, fake_scenes):
    """Not a benchmark: enough steps that the easiest task clearly beats chance on held-out clips."""
    # 60 steps: with max pooling (cochcnn's default) 30 steps still sat at chance; 60 reach 100 %
    config = tiny(tmp_path, steps=60, eval_every=60, tasks=["category", "word"], lr=3e-3,
                  train_size=60, val_size=24)
    final = train(config)
    assert final["val_accuracy"]["category"] >= 0.6, final  # chance 1/3


# --- checkpoints -------------------------------------------------------------------------------------

def _rewrite(path, change):
    state = checkpoint.load(path)
    change(state)
    checkpoint.save_atomic(state, path)


def test_a_tasks_mismatch_is_a_one_line_error(tmp_path, fake_scenes):
    config = tiny(tmp_path, steps=1)
    train(config)
    path = os.path.join(config.out, checkpoint.CHECKPOINT_NAME)
    _rewrite(path, lambda state: state["tasks"].update(word=9))
    with pytest.raises(ValueError) as refused:
        checkpoint.load_trained(path, clip_samples=10000)
    assert "with its recorded tasks" in str(refused.value) and "heads.word.weight" in str(refused.value)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="trained with tasks .*'word': 9.*this run's dataset gives tasks "
                                         ".*'word': 4.*cannot be resumed"):
        train(resume=True, requested={"out": config.out, "steps": 2})
    _rewrite(path, lambda state: state.update(tasks={"word": "many"}))
    with pytest.raises(ValueError, match="records malformed tasks"):
        checkpoint.load_trained(path, clip_samples=10000)


def test_single_task_checkpoints_from_before_multi_task_still_load_and_resume(tmp_path):
    """A checkpoint without "tasks", whose config lacks the settings added since (tasks,
    task_weights, the scene settings, ...), as written before."""
    config = tiny(tmp_path, steps=2)
    train(config)
    path = os.path.join(config.out, checkpoint.CHECKPOINT_NAME)
    assert checkpoint.load(path)["tasks"] is None

    def as_before(state):
        del state["tasks"]
        for key in ADDED_SETTINGS:
            del state["config"][key]
    _rewrite(path, as_before)
    model, _, _ = checkpoint.load_trained(path, clip_samples=10000)
    assert model.tasks is None and model.head.out_features == len(CLASSES)
    final = main(["--resume", "--out", config.out, "--steps", "3"])
    assert final["step"] == 3 and isinstance(final["accuracy"], float)
    assert checkpoint.load(path)["tasks"] is None


# --- the real scenes ---------------------------------------------------------------------------------

def test_scene_settings_are_refused_on_other_datasets():
    with pytest.raises(ValueError, match="scene_words, scene_instrument set the speech_music_scenes "
                                         "dataset, not 'procedural'"):
        build_datasets(TrainConfig(dataset="procedural", scene_words=40, scene_instrument="program"))
    with pytest.raises(ValueError, match="scene_instrument must be one of"):
        TrainConfig(scene_instrument="timbre")


def test_missing_scene_packages_are_one_line_before_any_work(tmp_path, monkeypatch):
    scenes = pytest.importorskip("topoaudio.data.scenes", reason="the scenes module is not there")

    def missing():
        raise ImportError("SpeechMusicScenes cannot synthesise sounds (espeak-ng): pip install X")
    monkeypatch.setattr(scenes, "check_packages", missing)
    config = tiny(tmp_path, dataset="speech_music_scenes")
    with pytest.raises(ValueError, match=r"^dataset speech_music_scenes: .*pip install X$"):
        train(config)
    assert not os.path.exists(config.out)


def _real_scenes_or_skip():
    try:
        from topoaudio.data.scenes import SpeechMusicScenes
        SpeechMusicScenes(1, seconds=0.5)[0]
    except ImportError as error:  # the module, espeak or the SoundFont player is missing
        pytest.skip(f"speech_music_scenes cannot be made here: {error}")


def test_the_scene_settings_reach_the_dataset():
    _real_scenes_or_skip()
    train_set, val_set = build_datasets(TrainConfig(dataset="speech_music_scenes", train_size=3,
                                                    val_size=2, scene_words=40, scene_voices=10,
                                                    scene_instrument="family", clip_seconds=0.5))
    held_out, speakers = val_set.datasets  # validation adds clips of the training voices (issue 21)
    assert (len(train_set), len(held_out), len(speakers)) == (3, 2, 1)
    assert (train_set.split, held_out.split, speakers.split) == ("train", "validation",
                                                                 "speaker_validation")
    assert train_set.tasks == held_out.tasks == speakers.tasks
    assert (train_set.tasks["word"], train_set.tasks["speaker"], train_set.tasks["instrument"]) == (
        40, 10, 16)
    assert train_set.samples == 10000

@pytest.mark.parametrize("preset", ["cochresnet50_spatial_scenes.json", "cochresnet50_topoloss_scenes.json"])
def test_the_paper_scale_presets_build_their_scenes(preset):
    """The dataset checks what the settings' rules cannot (e.g. scene_words <= its word list)."""
    _real_scenes_or_skip()
    config, _ = parse_args(["--config", os.path.join(REPO, "configs", preset)])
    train_set, _ = build_datasets(config)
    objective = Objective.for_dataset(config, train_set)
    assert set(objective.tasks) == {"word", "speaker", "instrument", "category"}
    assert objective.tasks["word"] >= 200  # the "at least 200 common English words"


def test_a_smoke_run_on_speech_music_scenes(tmp_path):
    _real_scenes_or_skip()
    config = tiny(tmp_path, steps=2, eval_every=2, dataset="speech_music_scenes", train_size=12,
                  val_size=6)
    final = train(config)
    tasks = checkpoint.load(os.path.join(config.out, checkpoint.CHECKPOINT_NAME))["tasks"]
    assert set(tasks) >= {"word", "speaker", "instrument", "category"}
    assert list(final["val_accuracy"]) == list(tasks)


def test_a_two_process_ddp_run_on_speech_music_scenes(tmp_path):
    """Dict outputs and dict labels through DistributedDataParallel (gloo, two CPU processes)."""
    _real_scenes_or_skip()
    out = tmp_path / "ddp"
    settings = {**TINY, "topo": "spatial", "dataset": "speech_music_scenes", "train_size": 12,
                "val_size": 6, "eval_every": 2, "scene_words": 10, "scene_voices": 4}
    result = torchrun_train(tmp_path, out, settings, steps=2)
    assert result.returncode == 0, result.stderr[-3000:]
    state = checkpoint.load(str(out / "checkpoint.pt"))
    assert state["step"] == 2 and len(state["rng"]) == 2
    assert state["tasks"]["word"] == 10 and state["tasks"]["speaker"] == 4
    records = read_metrics(out)
    assert [set(r["task_losses"]) for r in records if "loss" in r] == [set(state["tasks"])] * 2
    assert "validation accuracy word " in result.stdout
