"""The model cochlea: waveform -> normalised cochleagram image, inside every model."""
from __future__ import annotations

import torch
from torch import nn

from topoaudio.ops import Cochleagram


def frontend_of(config: dict) -> dict:
    """build_model's front-end keywords for a run's settings: "frontend" (exact | fast) and, for
    the fast mode, "oversample". Runs saved before the setting existed trained on the exact op."""
    frontend = config.get("frontend", "exact")
    return {"frontend": frontend,
            "oversample": config.get("oversample") if frontend == "fast" else None}


class CochlearFrontend(nn.Module):
    """waveform [B, T] (20 kHz) -> cochleagram [B, 1, 211, frames]. Waveforms are demeaned and
    scaled to RMS 0.1 first (docs/SCIENCE.md section 2); silent clips stay silent. Keywords go to
    ops.Cochleagram: mode="fast" (with oversample) is the fast approximate mode (section 2b)."""

    # Set by the training loop while its DataLoader workers run this module (training.data.
    # FrontendCollate, issue 20): a 4-D input is then a batch of this module's own output and
    # passes unchanged; waveforms are still computed (validation). An attribute, not state: it is
    # never saved.
    precomputed = False

    def __init__(self, **cochleagram_kwargs):
        super().__init__()
        self.cochleagram = Cochleagram(**cochleagram_kwargs)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if self.precomputed and waveform.dim() == 4:
            return self._checked_cochleagrams(waveform)
        if waveform.dim() != 2:
            raise ValueError(f"expected waveforms [B, T], got shape {tuple(waveform.shape)}")
        waveform = waveform.float()
        waveform = waveform - waveform.mean(dim=-1, keepdim=True)
        rms = waveform.pow(2).mean(dim=-1, keepdim=True).sqrt()
        waveform = waveform * (0.1 / rms.clamp_min(1e-8))
        return self.cochleagram(waveform).unsqueeze(1)

    def _checked_cochleagrams(self, images: torch.Tensor) -> torch.Tensor:
        channels = self.cochleagram.n_channels
        if images.shape[1] != 1 or images.shape[2] != channels or images.dtype != torch.float32:
            raise ValueError(f"precomputed cochleagrams must be float32 [B, 1, {channels}, frames] "
                             f"(this front end's output), got {images.dtype} {tuple(images.shape)}")
        return images
