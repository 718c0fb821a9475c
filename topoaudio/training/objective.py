"""What a run trains the model to predict: one label per clip (single-task datasets) or several
tasks (multi-task datasets such as speech_music_scenes), with per-task loss weights.

Multi-task targets hold -1 where a task does not apply (a music clip has no word). Each task's loss
is the mean cross-entropy over the clips it labels, and a batch in which it labels none adds 0 for
it (not NaN), so the loss is sum_t w_t * CE_t(labelled clips of t)."""
from __future__ import annotations

import torch
from torch.nn import functional

from .config import TrainConfig

UNLABELLED = -1


class Objective:
    """tasks: None (one head of n_classes) or {task: n_classes}; weights: {task: loss weight}."""

    def __init__(self, n_classes: int, tasks: dict[str, int] | None = None,
                 weights: dict[str, float] | None = None):
        self.n_classes, self.tasks = n_classes, tasks
        self.weights = weights or ({task: 1.0 for task in tasks} if tasks else {})

    @classmethod
    def for_dataset(cls, config: TrainConfig, dataset) -> Objective:
        """The objective of `config` on `dataset` (its `classes`, or `tasks` {task: n_classes} for
        a multi-task dataset); a one-line ValueError when the settings do not fit the dataset."""
        offered = getattr(dataset, "tasks", None)
        if offered is None:
            if config.tasks or config.task_weights:
                raise ValueError(f"tasks / task_weights apply to multi-task datasets "
                                 f"(speech_music_scenes); dataset {config.dataset!r} has one label "
                                 "per clip: leave them empty")
            return cls(len(dataset.classes))
        names = config.tasks or list(offered)
        unknown = [task for task in names if task not in offered]
        if unknown:
            raise ValueError(f"tasks {unknown} are not tasks of dataset {config.dataset!r}; it "
                             f"labels {list(offered)}")
        weights = config.task_weights or [1.0] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"task_weights has {len(weights)} values for the {len(names)} tasks "
                             f"{names} of dataset {config.dataset!r}")
        return cls(0, {task: int(offered[task]) for task in names}, dict(zip(names, weights, strict=True)))

    def model_heads(self) -> dict:
        """build_model's keyword for these heads."""
        return {"n_classes": self.n_classes} if self.tasks is None else {"tasks": dict(self.tasks)}

    def loss(self, logits, labels) -> tuple[torch.Tensor, dict]:
        """(weighted total, {task: that task's mean loss, as a tensor}); {} for one task."""
        if self.tasks is None:
            return functional.cross_entropy(logits.float(), labels), {}
        terms = {}
        for task in self.tasks:
            target = labels[task]
            summed = functional.cross_entropy(logits[task].float(), target,
                                              ignore_index=UNLABELLED, reduction="sum")
            # no host sync: a batch without a labelled clip divides 0 by 1
            terms[task] = summed / (target != UNLABELLED).sum().clamp_min(1)
        total = sum(self.weights[task] * term for task, term in terms.items())
        return total, terms

    def chance(self):
        """Accuracy of guessing uniformly: a float, or {task: float}."""
        if self.tasks is None:
            return 1 / self.n_classes
        return {task: 1 / n for task, n in self.tasks.items()}


def accuracy(logits, labels):
    """Batch accuracy: a float for one head; for several {task: accuracy over the clips the task
    labels, or None when it labels none}."""
    if not isinstance(logits, dict):
        return float((logits.argmax(dim=1) == labels).float().mean())
    return fractions(*correct_and_labelled(logits, labels))


def fractions(correct: dict, labelled: dict) -> dict:
    """{task: correct / labelled, or None where nothing was labelled}."""
    return {task: correct[task] / labelled[task] if labelled[task] else None for task in correct}


def correct_and_labelled(logits: dict, labels: dict) -> tuple[dict, dict]:
    """({task: correct predictions}, {task: labelled clips}) for the tasks of `logits`, read from
    the device in one transfer."""
    counts = []
    for task, task_logits in logits.items():
        target = labels[task].to(task_logits.device)
        mask = target != UNLABELLED
        counts += [((task_logits.argmax(dim=1) == target) & mask).sum(), mask.sum()]
    values = torch.stack(counts).tolist()
    return (dict(zip(logits, values[0::2], strict=True)),
            dict(zip(logits, values[1::2], strict=True)))


def labels_to(labels, device):
    """A batch's labels (a tensor, or {task: tensor}) on `device`."""
    if isinstance(labels, dict):
        return {task: value.to(device) for task, value in labels.items()}
    return labels.to(device)
