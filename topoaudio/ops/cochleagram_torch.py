"""The cochleagram's stage B in plain PyTorch: the fallback backend on any device, and the readable
statement of what the C++, CUDA and Triton kernels compute (csrc/cochleagram.h, kernels/cochleagram.py).
The op (topoaudio/ops/cochleagram.py) calls it chunk by chunk, so memory stays O(chunk rows x T).

Primitives (analytic [rows, T, 2]: real and imaginary parts of the analytic subbands; taps [W]):
- envelope_downsample_forward(analytic, taps, stride, n_frames, power, offset, compress)
  -> (out [rows, frames], envelope [rows, frames]): envelope = the magnitude sqrt(max(re^2 + im^2,
  1e-16)) filtered by the windowed sinc at stride `stride` (no padding); out = (max(envelope, 0) +
  offset) ** power when `compress`, else a copy of the envelope.
- envelope_downsample_backward(analytic, taps, grad_envelope, stride) -> gradient w.r.t. analytic
  [rows, T, 2] given the gradient w.r.t. the envelope [rows, frames].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Squared magnitudes are clamped here, as in the reference (the original's floor).
MIN_POWER = 1e-16


def envelope_downsample_forward(analytic: torch.Tensor, taps: torch.Tensor, stride: int,
                                n_frames: int, power: float, offset: float, compress: bool):
    magnitude = analytic.pow(2).sum(-1).clamp_min(MIN_POWER).sqrt()
    envelope = F.conv1d(magnitude.unsqueeze(1), taps.view(1, 1, -1), stride=stride).squeeze(1)
    envelope = envelope[:, :n_frames]
    out = (envelope.clamp_min(0) + offset).pow(power) if compress else envelope.clone()
    return out, envelope


def envelope_downsample_backward(analytic: torch.Tensor, taps: torch.Tensor,
                                 grad_envelope: torch.Tensor, stride: int) -> torch.Tensor:
    # Explicit adjoints: autograd is switched off inside a custom op's implementation.
    length = analytic.shape[1]
    grad_magnitude = F.conv_transpose1d(grad_envelope.unsqueeze(1), taps.view(1, 1, -1),
                                        stride=stride).squeeze(1)
    grad_magnitude = F.pad(grad_magnitude, (0, length - grad_magnitude.shape[-1]))
    squared = analytic.pow(2).sum(-1)
    # below the clamp the forward's magnitude is constant: no gradient flows there
    scale = torch.where(squared > MIN_POWER, grad_magnitude / squared.clamp_min(MIN_POWER).sqrt(), 0.0)
    return analytic * scale.unsqueeze(-1)
