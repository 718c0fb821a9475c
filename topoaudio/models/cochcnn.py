"""cochcnn: a small Kell-style cochleagram CNN that trains on two CPU cores in minutes."""
from __future__ import annotations

import torch
from torch import nn

from topoaudio.ops import batch_norm_relu_pool_module

from .frontend import CochlearFrontend
from .heads import PooledHeads, apply_heads, build_heads, task_sizes


class ConvBlock(nn.Sequential):
    """conv -> batch norm -> ReLU (-> 2x2 max-pool): an nn.Sequential, so its state-dict keys are
    those of the plain Sequential it replaced. Training on the CPU runs the last three as one fused
    op (ops.batch_norm_relu_pool, issue 20); evaluation and GPUs run the layers one by one."""

    def __init__(self, c_in, c_out, kernel, stride, pool):
        layers = [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
                  nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        super().__init__(*layers)

    fused = True  # False: always layer by layer (bench/train_throughput.py's "before" variants)

    def forward(self, x):
        y = self[0](x)
        if self.fused and self.training and y.device.type == "cpu":
            return batch_norm_relu_pool_module(y, self[1], pool=len(self) == 4)
        for index in range(1, len(self)):
            y = self[index](y)
        return y



class CochCNN(PooledHeads):
    """waveform [B, 40000] -> logits [B, n] (heads = n: one head) or {task: logits [B, n_task]}
    (heads = {task: n_task}: one linear head per task on the same pooled features). The heads read
    each block4 channel's maximum over frequency and time (pooling="max", the default) or its mean
    (pooling="mean", the only pooling before the speech/music scenes). Taps (feature
    maps [B, C, F, T] for a 2 s clip, F and T the cochleagram's 211 x 390 reduced): block1
    [B, 24, 53, 97], block2 [B, 48, 27, 49], block3 [B, 96, 13, 24], block4 [B, 128, 13, 24].
    About 0.15 GMAC per clip: the cochleagram costs as much as the network, and a training step at
    batch 16 takes ~1 s on two cores."""

    tap_names = ("block1", "block2", "block3", "block4")

    def __init__(self, heads: int | dict[str, int], width: int = 24, pooling: str = "max"):
        super().__init__()
        self.tasks = task_sizes(heads)  # None: one head
        # Why max: a scene's word fills ~0.4 s of 2 s. Averaged over the clip it is diluted five-fold
        # by the background, and a 50-word task stayed at chance for 800 steps
        # (docs/run_logs/scenes-trials/word_only); the maximum keeps the moment the word sounds.
        self._set_pooling(pooling)  # checked; saved in the state dict (PooledHeads)
        self.frontend = CochlearFrontend()
        self.block1 = ConvBlock(1, width, 7, 2, pool=True)
        self.block2 = ConvBlock(width, 2 * width, 5, 2, pool=False)
        self.block3 = ConvBlock(2 * width, 4 * width, 3, 1, pool=True)
        self.block4 = ConvBlock(4 * width, 128, 3, 1, pool=False)
        # one head is "head", several are "heads": the names checkpoints were saved with
        self.add_module("head" if self.tasks is None else "heads", build_heads(heads, 128))

    def forward(self, waveform: torch.Tensor):
        x = self.frontend(waveform)
        features = self.block4(self.block3(self.block2(self.block1(x))))
        return apply_heads(self.head if self.tasks is None else self.heads, self.pool(features, (2, 3)))
