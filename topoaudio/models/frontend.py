"""The model cochlea: waveform -> normalised cochleagram image, inside every model."""
from __future__ import annotations

import torch
from torch import nn

from topoaudio.ops import Cochleagram


class CochlearFrontend(nn.Module):
    """waveform [B, T] (20 kHz) -> cochleagram [B, 1, 211, frames]. Waveforms are demeaned and
    scaled to RMS 0.1 first (docs/SCIENCE.md section 2); silent clips stay silent."""

    def __init__(self, **cochleagram_kwargs):
        super().__init__()
        self.cochleagram = Cochleagram(**cochleagram_kwargs)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() != 2:
            raise ValueError(f"expected waveforms [B, T], got shape {tuple(waveform.shape)}")
        waveform = waveform.float()
        waveform = waveform - waveform.mean(dim=-1, keepdim=True)
        rms = waveform.pow(2).mean(dim=-1, keepdim=True).sqrt()
        waveform = waveform * (0.1 / rms.clamp_min(1e-8))
        return self.cochleagram(waveform).unsqueeze(1)
