"""Classification heads: one head of n classes (the model returns a tensor of logits) or one head per
task (the model returns {task: logits}). Every model checks, builds and applies its heads here, so
the rules agree; each model keeps the attribute its checkpoints were saved under."""
from __future__ import annotations

import torch
from torch import nn


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


def build_heads(heads, in_features: int) -> nn.Linear | nn.ModuleDict:
    """nn.Linear(in_features, n) for heads = n; for heads = {task: n_task} an nn.ModuleDict of one
    nn.Linear(in_features, n_task) per task, built in the dict's order (a seed gives the same
    weights as before this helper existed)."""
    tasks = task_sizes(heads)
    if tasks is None:
        return nn.Linear(in_features, heads)
    return nn.ModuleDict({task: nn.Linear(in_features, n) for task, n in tasks.items()})


def apply_heads(heads: nn.Linear | nn.ModuleDict, pooled: torch.Tensor):
    """pooled features [B, in_features] -> logits [B, n] from one head, or {task: logits [B, n_task]}
    from an nn.ModuleDict of them (as build_heads returns)."""
    if isinstance(heads, nn.ModuleDict):
        return {task: head(pooled) for task, head in heads.items()}
    return heads(pooled)


POOLINGS = ("max", "mean")


class PooledHeads(nn.Module):
    """A model whose heads read each feature's maximum or its mean over frequency and time (or
    tokens): `pooling`. Kept as a buffer (`max_pooling`), so a checkpoint records it; a state dict
    from before the option holds no flag and reads the mean (its heads were trained on it)."""

    def _set_pooling(self, pooling: str) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.register_buffer("max_pooling", torch.tensor(pooling == "max"))

    def pool(self, features: torch.Tensor, dim) -> torch.Tensor:
        return features.amax(dim=dim) if self.pooling == "max" else features.mean(dim=dim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "max_pooling"
        if key not in state_dict:
            state_dict[key] = torch.tensor(False)
        self.pooling = "max" if bool(state_dict[key]) else "mean"
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
