"""Named layer taps: read any layer's output in the same forward pass, for losses and analyses."""
from __future__ import annotations

import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def tapped(model: nn.Module, names):
    """Collect the outputs of `model`'s submodules `names` while the block runs.

        with tapped(model, ["block2", "block3"]) as features:
            logits = model(waveform)
        features["block2"]  # [B, C, F, T]
    """
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        valid = [name for name in getattr(model, "tap_names", modules) if name]
        raise ValueError(f"unknown layer(s) {missing}; this model's taps are {valid}")
    features: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_module, _inputs, output, name=name):
            features[name] = output
        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def tap_shapes(model: nn.Module, names, clip_samples: int) -> dict:
    """{name: (C, F)} of the tapped layers' [B, C, F, T] outputs, from one probe forward pass of
    two noise clips of clip_samples (the model's train/eval mode is restored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with tapped(model, names) as features:
        model(0.1 * torch.randn(2, clip_samples, device=device))
    model.train(was_training)
    return {name: (int(features[name].shape[1]), int(features[name].shape[2])) for name in names}
