"""Classification heads: one head of n classes (the model returns a tensor of logits) or one head per
task (the model returns {task: logits}). Both models check their heads here, so the rules agree."""
from __future__ import annotations


def task_sizes(heads) -> dict[str, int] | None:
    """None for one head (`heads` an int n_classes), else the checked {task: n_classes}.

    Task names become nn.ModuleDict keys: non-empty strings without "." (a key path separator)."""
    if isinstance(heads, int) and not isinstance(heads, bool):
        if heads < 1:
            raise ValueError(f"heads: a model needs at least 1 class, got {heads}")
        return None
    if not isinstance(heads, dict) or not heads:
        raise ValueError(f"heads must be a class count or map task names to positive class counts, "
                         f"got {heads!r}")
    for task, n in heads.items():
        if not isinstance(task, str) or not task or "." in task:
            raise ValueError(f"heads: task names must be non-empty strings without '.', got {task!r}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"heads: task {task!r} needs a positive class count, got {n!r}")
    return dict(heads)
