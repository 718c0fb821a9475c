"""A topographic Audio Spectrogram Transformer (Gong et al. 2021) on our cochleagram (issue 13).

waveform -> CochlearFrontend [B, 1, 211, frames], standardised -> overlapping (frequency, time)
patches by one Conv2d -> tokens + a learned 2D position code -> pre-norm transformer blocks
(torch.nn.functional.scaled_dot_product_attention, so PyTorch's fused attention kernels run on
GPUs) -> final LayerNorm -> mean (or, with pooling="max", maximum) over tokens -> one linear head per task.

Why mean-pooled tokens and no [CLS] token: every token is then a patch of the (frequency, time)
grid, so a block's MLP hidden units form a feature map [B, hidden, F_patches, T_patches] exactly
like a conv layer's [B, C, F, T]; sheets, tap_shapes, evaluation and readout take it unchanged,
and a unit's sheet response (its mean over tokens) is what the heads read through fc2.

Taps ``block{i}.mlp``: the GELU outputs of block i's first MLP layer, as [B, hidden, F, T] (a
view of the [B, tokens, hidden] activation, no copy). The tapped module holds fc1 and no later
weight, so TopoLoss (training/topography.py reads the tapped module's last weighted layer) acts on
fc1, the hidden units' input weights, as TopoNets did for ViT and GPT-2 MLPs. docs/AST.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .frontend import CochlearFrontend
from .heads import PooledHeads, apply_heads, build_heads, task_sizes

SAMPLE_RATE = 20000  # the cochleagram's default sr
# Fixed input standardisation, as AST standardises its filterbank by dataset statistics: the
# cochleagram's mean and std over 12 one-second speech_music_scenes clips. Without it (values ~0.13
# +- 0.07) AdamW at 3e-4 left the category loss at chance on a fixed batch for 25 steps; with it the
# loss fell from 1.09 to 0.01 (tests/test_ast.py overfits that batch).
COCHLEAGRAM_MEAN = 0.13
COCHLEAGRAM_STD = 0.065


def _pair(name: str, value) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a (frequency, time) pair of them, got {value!r}")
    return pair


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class MLPUnits(nn.Module):
    """fc1 + GELU of a block's MLP: tokens [B, L, width] -> hidden units [B, hidden, F, T] on the
    patch grid (F, T), L = F * T. The tapped module: its output is what the sheets read."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return F.gelu(self.fc1(tokens)).transpose(1, 2).unflatten(2, grid)


class Block(nn.Module):
    """Pre-norm transformer block: x + proj(attention(norm1(x))), then x + fc2(mlp(norm2(x)))."""

    def __init__(self, width: int, n_heads: int, hidden: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLPUnits(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        batch, length, width = x.shape
        # [B, L, 3, heads, d] -> three [B, heads, L, d], the layout SDPA's fused kernels take
        q, k, v = self.qkv(self.norm1(x)).unflatten(2, (3, self.n_heads, -1)).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        units = self.mlp(self.norm2(x), grid)  # [B, hidden, F, T]
        return x + self.fc2(units.flatten(2).transpose(1, 2))


class AST(PooledHeads):
    """waveform [B, samples] -> logits [B, n] (heads = n) or {task: logits} (heads = {task: n}).

    depth blocks of `width` channels and `n_heads` attention heads, MLP hidden = mlp_ratio * width;
    patches of `patch` (frequency, time) cochleagram bins taken every `stride` bins (stride < patch
    overlaps them, as AST's 16 x 16 patches at stride 10 do). The learned 2D position code is sized
    for clips up to max_seconds and cropped in time for shorter ones. The class attribute tap_names
    is the "ast" preset's (depth 4); an instance lists its own depth's taps.

    The defaults are the "ast" CPU preset: 20 x 20 patches at stride 16 (4 bins of overlap), 12 x 24
    = 288 tokens for a 2 s clip; a training step at batch 16 costs ~1.3x cochcnn's CPU time (AST's
    stride 10 would give 760 tokens and ~3x the attention cost; docs/AST.md has the numbers).
    """

    tap_names = tuple(f"block{i}.mlp" for i in range(1, 5))

    def __init__(self, heads: int | dict[str, int], *, depth: int = 4, width: int = 128,
                 n_heads: int = 4, mlp_ratio: int = 4, patch=(20, 20), stride=(16, 16),
                 max_seconds: float = 2.0, pooling: str = "mean"):
        super().__init__()
        self.tasks = task_sizes(heads)  # None: one head
        # What the heads read: the mean over tokens (AST's, the default) or each feature's maximum
        # (cochcnn's since issue 11: a word fills ~0.4 s of a 2 s clip, and the mean dilutes it).
        self._set_pooling(pooling)  # checked; saved in the state dict (PooledHeads)
        depth, width = _positive_int("depth", depth), _positive_int("width", width)
        n_heads, mlp_ratio = _positive_int("n_heads", n_heads), _positive_int("mlp_ratio", mlp_ratio)
        if width % n_heads:
            raise ValueError(f"width ({width}) must be a multiple of n_heads ({n_heads})")
        self.patch, self.stride = _pair("patch", patch), _pair("stride", stride)
        self.depth = depth
        self.tap_names = tuple(f"{name}.mlp" for name in self._block_names())
        self.frontend = CochlearFrontend()
        cochleagram = self.frontend.cochleagram
        max_frames = cochleagram.n_frames(round(max_seconds * SAMPLE_RATE))
        if cochleagram.n_channels < self.patch[0] or max_frames < self.patch[1]:
            raise ValueError(f"patch {self.patch} does not fit a {max_seconds} s cochleagram "
                             f"({cochleagram.n_channels} x {max_frames})")
        self.max_seconds = max_seconds
        self.grid_max = (self._tokens(cochleagram.n_channels, 0), self._tokens(max_frames, 1))
        self.patch_embed = nn.Conv2d(1, width, self.patch, stride=self.stride)
        self.position = nn.Parameter(torch.zeros(1, width, *self.grid_max))
        # attributes block1 ... blockN, so taps are "block{i}.mlp" like the CNNs' "block{i}"
        for name in self._block_names():
            setattr(self, name, Block(width, n_heads, mlp_ratio * width))
        self.norm = nn.LayerNorm(width)
        self._init_weights()
        # heads last: they do not change the trunk's initialisation (analysis/controls.untrained_twin)
        # one head is "head", several are "heads", as CochCNN: the names checkpoints were saved with
        self.add_module("head" if self.tasks is None else "heads", build_heads(heads, width))

    def _block_names(self) -> list[str]:
        return [f"block{i}" for i in range(1, self.depth + 1)]

    def _tokens(self, bins: int, axis: int) -> int:
        return (bins - self.patch[axis]) // self.stride[axis] + 1

    def _init_weights(self) -> None:
        # ViT/AST's: truncated normal (std 0.02) for linear weights and the position code
        nn.init.trunc_normal_(self.position, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):  # heads do not exist yet
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, waveform: torch.Tensor):
        image = (self.frontend(waveform) - COCHLEAGRAM_MEAN) / COCHLEAGRAM_STD  # [B, 1, 211, frames]
        frames = image.shape[-1]
        if frames < self.patch[1]:
            raise ValueError(f"a clip of {waveform.shape[-1]} samples gives {frames} cochleagram "
                             f"frames, fewer than the patch's {self.patch[1]}")
        tokens = self.patch_embed(image)  # [B, width, F, T]
        if tokens.shape[-1] > self.grid_max[1]:
            raise ValueError(f"clips longer than max_seconds={self.max_seconds} s have no learned "
                             f"position code; got {waveform.shape[-1] / SAMPLE_RATE:.3f} s")
        grid = (tokens.shape[2], tokens.shape[3])
        x = (tokens + self.position[..., :grid[1]]).flatten(2).transpose(1, 2)  # [B, L, width]
        for name in self._block_names():
            x = getattr(self, name)(x, grid)
        return apply_heads(self.head if self.tasks is None else self.heads, self.pool(self.norm(x), 1))


class ASTBase(AST):
    """The AST-base-sized preset for GPUs: depth 12, width 768, 12 heads, MLP 3072, 16 x 16 patches
    at stride 10 x 10 as in AST (20 x 38 = 760 tokens for a 2 s clip)."""

    tap_names = tuple(f"block{i}.mlp" for i in range(1, 13))

    def __init__(self, heads: int | dict[str, int], pooling: str = "mean"):
        super().__init__(heads, depth=12, width=768, n_heads=12, mlp_ratio=4, patch=(16, 16),
                         stride=(10, 10), pooling=pooling)
