"""Triton kernels for stage B of the cochleagram: envelope magnitude + windowed-sinc downsampling
(+ power compression) fused, and its backward. Inputs are the analytic subbands as a real view
[rows, T, 2]; see csrc/cochleagram.h for the same contract in C++/CUDA."""
import os

import torch
import triton
import triton.language as tl

# squared magnitudes are clamped here, as in the reference; a jitted kernel may only read
# constexpr globals (the CPU interpreter does not enforce this, compiled Triton does)
MIN_POWER = tl.constexpr(1e-16)
# The CPU interpreter pays per program and per loop step, not per element: give it big tiles.
_INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_FORWARD_TILE = (128, 1024) if _INTERPRETED else (16, 128)  # (frames, taps) per program step
_BACKWARD_TILE = 8192 if _INTERPRETED else 512  # samples per program


@triton.jit
def _envelope_forward_kernel(z_ptr, taps_ptr, out_ptr, env_ptr, length, window, stride, n_frames,
                             power, offset, COMPRESS: tl.constexpr, BLOCK_F: tl.constexpr,
                             BLOCK_J: tl.constexpr):
    i_row = tl.program_id(0).to(tl.int64)
    o_f = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    m_f = o_f < n_frames
    p_z = z_ptr + i_row * length * 2
    b_acc = tl.zeros([BLOCK_F], dtype=env_ptr.dtype.element_ty)
    for j0 in range(0, window, BLOCK_J):
        o_j = j0 + tl.arange(0, BLOCK_J)
        m_j = o_j < window
        b_h = tl.load(taps_ptr + o_j, mask=m_j, other=0.0)
        o_t = o_f[:, None] * stride + o_j[None, :]
        m_t = m_f[:, None] & m_j[None, :]
        b_re = tl.load(p_z + 2 * o_t, mask=m_t, other=0.0)
        b_im = tl.load(p_z + 2 * o_t + 1, mask=m_t, other=0.0)
        b_mag = tl.sqrt(tl.maximum(b_re * b_re + b_im * b_im, MIN_POWER))
        b_acc += tl.sum(b_mag * b_h[None, :], axis=1)
    o_out = i_row * n_frames + o_f
    tl.store(env_ptr + o_out, b_acc, mask=m_f)
    if COMPRESS:
        b_acc = tl.exp(power * tl.log(tl.maximum(b_acc, 0.0) + offset))
    tl.store(out_ptr + o_out, b_acc, mask=m_f)


@triton.jit
def _envelope_backward_kernel(z_ptr, taps_ptr, g_ptr, gz_ptr, length, window, stride, n_frames,
                              MAX_COVER: tl.constexpr, BLOCK_T: tl.constexpr):
    i_row = tl.program_id(0).to(tl.int64)
    o_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    m_t = o_t < length
    p_g = g_ptr + i_row * n_frames
    last = tl.minimum(o_t // stride, n_frames - 1)
    b_grad = tl.zeros([BLOCK_T], dtype=gz_ptr.dtype.element_ty)
    # The frames covering sample t are last, last-1, ... while t - f * stride < window.
    for i in range(0, MAX_COVER):
        o_f = last - i
        o_k = o_t - o_f * stride
        m = m_t & (o_f >= 0) & (o_k < window)
        b_grad += tl.load(p_g + o_f, mask=m, other=0.0) * tl.load(taps_ptr + o_k, mask=m, other=0.0)
    p_z = z_ptr + i_row * length * 2
    b_re = tl.load(p_z + 2 * o_t, mask=m_t, other=0.0)
    b_im = tl.load(p_z + 2 * o_t + 1, mask=m_t, other=0.0)
    b_pow = b_re * b_re + b_im * b_im
    b_scale = tl.where(b_pow > MIN_POWER, b_grad / tl.sqrt(tl.maximum(b_pow, MIN_POWER)), 0.0)
    p_gz = gz_ptr + i_row * length * 2
    tl.store(p_gz + 2 * o_t, b_scale * b_re, mask=m_t)
    tl.store(p_gz + 2 * o_t + 1, b_scale * b_im, mask=m_t)


def envelope_downsample_forward(analytic: torch.Tensor, taps: torch.Tensor, stride: int,
                                n_frames: int, power: float, offset: float, compress: bool):
    """analytic [rows, T, 2], taps [W] -> (out [rows, frames], envelope [rows, frames])."""
    rows, length, _ = analytic.shape
    out = analytic.new_empty(rows, n_frames)
    envelope = analytic.new_empty(rows, n_frames)
    block_f, block_j = _FORWARD_TILE
    grid = (rows, triton.cdiv(n_frames, block_f))
    _envelope_forward_kernel[grid](analytic, taps, out, envelope, length, taps.numel(), stride,
                                   n_frames, power, offset, COMPRESS=compress, BLOCK_F=block_f,
                                   BLOCK_J=block_j)
    return out, envelope


def envelope_downsample_backward(analytic: torch.Tensor, taps: torch.Tensor,
                                 grad_envelope: torch.Tensor, stride: int) -> torch.Tensor:
    """Gradient w.r.t. analytic [rows, T, 2] given grad_envelope [rows, frames]."""
    rows, length, _ = analytic.shape
    window = taps.numel()
    grad_analytic = torch.empty_like(analytic)
    block_t = _BACKWARD_TILE
    grid = (rows, triton.cdiv(length, block_t))
    _envelope_backward_kernel[grid](analytic, taps, grad_envelope, grad_analytic, length, window,
                                    stride, grad_envelope.shape[-1],
                                    MAX_COVER=-(-window // stride) + 1, BLOCK_T=block_t)
    return grad_analytic
