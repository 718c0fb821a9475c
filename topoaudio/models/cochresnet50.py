"""CochResNet50: the McDermott-lab ResNet-50 on cochleagrams (Tuckute, Feather et al. 2023):
bottleneck ResNet-50 with one input channel and a 7 x 7 stride-2 stem, the cochleagram computed
inside the model, single- or multi-task heads."""
from __future__ import annotations

import torch
from torch import nn

from .frontend import CochlearFrontend
from .heads import apply_heads, build_heads, task_sizes


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _stage(c_in: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(c_in, width, stride)]
    layers += [Bottleneck(width * Bottleneck.expansion, width, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CochResNet50(nn.Module):
    """waveform [B, 40000] -> logits [B, n] (one head) or {head: logits} (several heads).

    heads: 794 (one head, logits returned as a tensor) or e.g. {"word": 794, "speaker": 433,
    "audioset": 517} (the multi-task recipe; a dict is returned even for a single task).
    Taps: conv1 [B, 64, 106, 195], layer1 [B, 256, 53, 98], layer2 [B, 512, 27, 49],
    layer3 [B, 1024, 14, 25], layer4 [B, 2048, 7, 13] for a 2 s clip."""

    tap_names = ("conv1", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, heads: dict[str, int] | int = 794):
        super().__init__()
        self.tasks = task_sizes(heads)  # None: one head
        self.frontend = CochlearFrontend()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False),
                                   nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, 3, 1)
        self.layer2 = _stage(256, 128, 4, 2)
        self.layer3 = _stage(512, 256, 6, 2)
        self.layer4 = _stage(1024, 512, 3, 2)
        # one head is heads["out"], the name single-task checkpoints were saved with
        self.heads = build_heads({"out": heads} if self.tasks is None else self.tasks, 2048)

    def forward(self, waveform: torch.Tensor):
        x = self.maxpool(self.conv1(self.frontend(waveform)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        pooled = x.mean(dim=(2, 3))
        logits = apply_heads(self.heads, pooled)
        return logits["out"] if self.tasks is None else logits
