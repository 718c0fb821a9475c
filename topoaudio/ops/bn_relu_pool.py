"""Batch norm, ReLU and an optional 2x2 max-pool as one op (issue 20: training throughput).

    batch_norm_relu_pool(x, weight, bias, running_mean, running_var, training=True, pool=True)
      == F.max_pool2d(F.relu(F.batch_norm(x, running_mean, running_var, weight, bias, True,
                                           momentum, eps)), 2)

Why an op of its own: in cochcnn's training step on the CPU these three ops took ~25 % of the
step (block1's activations are [16, 24, 106, 195]), ~50x the cost of one pass over the tensor.
Each of them reads and writes the full-resolution activations, twice more in the backward, and
max-pool keeps int64 indices. The cpp backend (csrc/bn_relu_pool_cpu.cpp) reads the input twice
for the statistics and once for the output, and writes only the pooled output and a uint8 window
position; the backward reads the pooled gradient and writes the input's gradient, once each.

Backends: ``cpp`` (CPU, training mode, float32 / float64 / bfloat16, any 4-D shape) and
``reference`` (the composition above, any device, dtype and mode). ``auto`` takes cpp for CPU
tensors it can run and the reference otherwise: on GPUs cuDNN's batch norm is already fused
enough, and evaluation mode (running statistics) has no backward to save. The gradient is
batch norm's exact gradient through the same ReLU mask and max-pool window choice (the first
maximum of a window, row by row, as max_pool2d picks it; a NaN wins); the forward's statistics
are taken in float64 over fixed chunks, so results do not depend on the thread count.
Double backward and torch.func transforms are refused (transforms.py), as for the other fused ops.
"""
from __future__ import annotations

import torch

from . import dispatch, reference
from .transforms import refuse_double_backward, refuse_functorch

OP_NAME = "batch_norm_relu_pool"
_KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
_CL = torch.channels_last


def _vector_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.custom_op("topoaudio::batch_norm_relu_pool", mutates_args=())
def _fused_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
              pool: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    out, argmax, mean, invstd, var = dispatch.extension().bn_relu_pool_forward_cpu(
        x.contiguous(memory_format=_CL), weight.contiguous(), bias.contiguous(), eps, pool)
    return out, argmax, mean, invstd, var


@_fused_op.register_fake
def _(x, weight, bias, eps, pool):
    n, c, h, w = x.shape
    size = (n, c, h // 2, w // 2) if pool else (n, c, h, w)
    out = torch.empty(size, dtype=x.dtype, device=x.device, memory_format=_CL)
    argmax = (torch.empty(size, dtype=torch.uint8, device=x.device, memory_format=_CL) if pool
              else x.new_empty((0,), dtype=torch.uint8))
    return out, argmax, *(weight.new_empty((c,)) for _ in range(3))


@torch.library.custom_op("topoaudio::batch_norm_relu_pool_backward", mutates_args=())
def _fused_backward_op(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor, argmax: torch.Tensor,
                       mean: torch.Tensor, invstd: torch.Tensor, weight: torch.Tensor,
                       pool: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_x, grad_weight, grad_bias = dispatch.extension().bn_relu_pool_backward_cpu(
        grad.to(out.dtype).contiguous(memory_format=_CL), x.contiguous(memory_format=_CL), out,
        argmax, mean, invstd, weight.contiguous(), pool)
    return grad_x, grad_weight, grad_bias


@_fused_backward_op.register_fake
def _(grad, x, out, argmax, mean, invstd, weight, pool):
    return (torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_CL),
            torch.empty_like(weight), torch.empty_like(weight))


def _setup_context(ctx, inputs, output):
    x, weight, _, _, pool = inputs
    out, argmax, mean, invstd, var = output
    ctx.mark_non_differentiable(argmax, mean, invstd, var)
    ctx.save_for_backward(x, weight, out, argmax, mean, invstd)
    ctx.pool = pool


def _backward(ctx, grad_out, *_):
    refuse_double_backward(OP_NAME)
    x, weight, out, argmax, mean, invstd = ctx.saved_tensors
    if grad_out is None:
        return None, None, None, None, None
    grad_x, grad_weight, grad_bias = _fused_backward_op(grad_out, x, out, argmax, mean, invstd,
                                                        weight, ctx.pool)
    return grad_x, grad_weight, grad_bias, None, None


torch.library.register_autograd("topoaudio::batch_norm_relu_pool", _backward,
                                setup_context=_setup_context)


def _check(x, weight, bias, running_mean, running_var, pool) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{OP_NAME}: x must be a 4-D tensor [N, C, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    c = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if t is not None and (t.dim() != 1 or t.numel() != c):
            raise ValueError(f"{OP_NAME}: {name} must be a vector of x's {c} channels, got shape "
                             f"{tuple(t.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{OP_NAME}: give both running_mean and running_var, or neither")
    if pool and (x.shape[2] < 2 or x.shape[3] < 2):
        raise ValueError(f"{OP_NAME}: a 2x2 max-pool needs H and W >= 2, got {tuple(x.shape)}")


def _fusable(x: torch.Tensor, training: bool) -> bool:
    """Whether the cpp kernels can run this call (auto falls back to the reference otherwise)."""
    n, _, h, w = x.shape
    return (training and x.device.type == "cpu" and x.dtype in _KERNEL_DTYPES and n * h * w > 1
            and x.numel() > 0)


def batch_norm_relu_pool(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                         running_mean: torch.Tensor | None = None,
                         running_var: torch.Tensor | None = None, *, training: bool = True,
                         momentum: float = 0.1, eps: float = 1e-5, pool: bool = False,
                         backend: str | None = None) -> torch.Tensor:
    """relu(batch_norm(x)) [N, C, H, W], then a 2x2 max-pool (stride 2) when `pool`: [N, C, H // 2,
    W // 2]. Arguments as F.batch_norm's: in training mode the batch's statistics normalise x and
    update running_mean / running_var in place (running_var with the unbiased variance) by
    `momentum`; otherwise the running statistics normalise it. The cpp backend's output is
    channels-last (the layout it computes in; the reference keeps PyTorch's).

    >>> import torch
    >>> x = torch.randn(4, 3, 8, 6).contiguous(memory_format=torch.channels_last)
    >>> batch_norm_relu_pool(x, torch.ones(3), torch.zeros(3), pool=True).shape
    torch.Size([4, 3, 4, 3])
    """
    _check(x, weight, bias, running_mean, running_var, pool)
    refuse_functorch(OP_NAME, x.device, backend)
    if backend in (None, "auto") and not _fusable(x, training):
        backend = "reference"
    name = dispatch.choose(OP_NAME, x.device, backend)
    if name in ("torch", "reference"):  # the composition is plain PyTorch: both names run it
        return reference.batch_norm_relu_pool(x, weight, bias, running_mean, running_var,
                                              training=training, momentum=momentum, eps=eps,
                                              pool=pool)
    if not _fusable(x, training):
        raise ValueError(f"{OP_NAME}: the cpp backend runs training mode on CPU tensors of "
                         f"{', '.join(str(d).split('.')[1] for d in _KERNEL_DTYPES)} with more than "
                         f"one value per channel; got training={training}, {x.dtype} on {x.device}, "
                         f"shape {tuple(x.shape)}")
    dtype, c = _vector_dtype(x), x.shape[1]
    weight = torch.ones(c, dtype=dtype) if weight is None else weight.to(dtype)
    bias = torch.zeros(c, dtype=dtype) if bias is None else bias.to(dtype)
    out, _, mean, _, var = _fused_op(x, weight, bias, float(eps), bool(pool))
    if running_mean is not None:
        count = x.shape[0] * x.shape[2] * x.shape[3]
        with torch.no_grad():
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_((var * (count / (count - 1))).to(running_var.dtype), momentum)
    return out


def batch_norm_relu_pool_module(x: torch.Tensor, norm: torch.nn.BatchNorm2d, *, pool: bool,
                                backend: str | None = None) -> torch.Tensor:
    """The op with `norm`'s parameters, buffers and momentum rule (nn.BatchNorm2d.forward's: it
    counts batches and takes 1 / count when momentum is None): pool(relu(norm(x)))."""
    training = norm.training or norm.running_mean is None
    factor = 0.0 if norm.momentum is None else norm.momentum
    if norm.training and norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:
            factor = 1.0 / float(norm.num_batches_tracked)
    stats = (norm.running_mean, norm.running_var) if not norm.training or norm.track_running_stats \
        else (None, None)
    return batch_norm_relu_pool(x, norm.weight, norm.bias, *stats, training=training,
                                momentum=factor, eps=norm.eps, pool=pool, backend=backend)


__all__ = ["batch_norm_relu_pool", "batch_norm_relu_pool_module"]
