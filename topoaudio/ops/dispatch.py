"""The one place that decides which backend runs an op on which device.

Backends, fastest first per device (an op may rank its GPU backends otherwise: _OP_PREFERENCE):
- CUDA tensors: ``cuda`` (hand-written CUDA C++ in topoaudio._C), ``triton`` (topoaudio.kernels),
  ``torch`` (chunked PyTorch, same algorithm), ``reference`` (the plain definition).
- CPU tensors: ``cpp`` (C++ kernels in topoaudio._C), ``torch``, ``reference``. ``triton`` runs on
  CPU tensors only under ``TRITON_INTERPRET=1`` (tests), and only when asked for by name.

A caller forces a backend with the op's ``backend=`` argument, with ``use_backend(name)`` around a
block, or with the environment variable ``TOPOAUDIO_BACKEND``; ``last_backend(op)`` says which ran.
An op resolves the name once per call (``choose``) and hands the resolved name to its backward, so
forward and backward always run on the same backend. When ``auto`` cannot use the device's first
choice, ``choose`` warns once per op and device with the reason.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import threading
import warnings

import torch

from .settings import BACKEND_NAMES, backend_name

BACKENDS = BACKEND_NAMES
_PREFERENCE = {
    "cuda": ("cuda", "triton", "torch", "reference"),
    "cpu": ("cpp", "torch", "reference"),
}
# Where an op's measurements (bench/RESULTS.md, H200) rank its GPU backends otherwise: the Triton
# spatial-loss kernels (tensor cores, 3xTF32) beat the CUDA C++ FMA tiles in every case measured.
# The fast cochleagram's Triton kernels (issue 20) have run under the CPU interpreter and compiled
# for sm_90, never on a GPU: auto keeps the torch backend (cuFFT, measured) first on CUDA until
# bench/gpu.sh has timed both on a card; backend="triton" runs them.
_OP_PREFERENCE = {
    ("spatial_loss", "cuda"): ("triton", "cuda", "torch", "reference"),
    ("cochleagram_fast", "cuda"): ("torch", "triton"),
    # cuDNN's batch norm and PyTorch's ReLU and max-pool are the GPU path (bn_relu_pool.py: why)
    ("batch_norm_relu_pool", "cuda"): ("reference",),
}
# Ops that only some backends implement, and why the others cannot run them. The fast cochleagram
# (issue 20) is C++ on the CPU, Triton around cuFFT on GPUs, and batched torch.fft anywhere; it has
# no CUDA C++ kernel, and its reference is the exact definition, which is another mode.
_OP_BACKENDS = {
    "cochleagram_fast": (("cpp", "torch", "triton"),
                         "mode='fast' runs on the cpp backend (CPU), the triton backend (GPUs) or "
                         "the torch backend (any device, batched torch.fft: cuFFT on GPUs)"),
    "batch_norm_relu_pool": (("cpp", "torch", "reference"),
                             "batch norm + ReLU + max-pool runs fused on the cpp backend (CPU) or "
                             "as the plain PyTorch composition (torch or reference, any device)"),
}

# Looked up once at import (finding it does not import it): torch.compile cannot trace find_spec,
# and an op that names backend="triton" asks on every call.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None

_state = threading.local()
_last: dict[str, str] = {}
_warned: set[tuple[str, str]] = set()  # (op, device type) pairs already told about a fallback
_extension_error: str | None = None
_extension = None


def extension():
    """topoaudio._C, or None when it was not built (the reason is kept for error messages)."""
    global _extension, _extension_error
    if _extension is None and _extension_error is None:
        try:
            _extension = importlib.import_module("topoaudio._C")
        except ImportError as error:
            _extension_error = f"topoaudio._C is not built ({error}); run `pip install -e .`"
    return _extension


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _unavailable_reason(backend: str, device: torch.device, op: str | None = None) -> str | None:
    """None when `backend` can run `op` on `device`, otherwise why not."""
    if op in _OP_BACKENDS and backend not in _OP_BACKENDS[op][0]:
        return f"it has no {backend} kernel: {_OP_BACKENDS[op][1]}"
    if backend in ("torch", "reference"):
        return None
    if backend == "cpp":
        if device.type != "cpu":
            return f"the cpp backend runs on CPU tensors, not {device.type}"
        return None if extension() is not None else _extension_error
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend needs CUDA tensors, got {device.type}"
        ext = extension()
        if ext is None:
            return _extension_error
        return None if ext.with_cuda else "topoaudio._C was built without CUDA (no nvcc at build time)"
    if backend == "triton":
        if not _TRITON_INSTALLED:
            return "triton is not installed"
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreted()):
            return None
        return f"triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got {device.type}"
    return f"unknown backend {backend!r}; choose one of {BACKENDS} or 'auto'"


def available_backends(device: torch.device | str, op: str | None = None) -> list[str]:
    """Backends that can run on `device` (for `op`, when given), fastest first."""
    device = torch.device(device)
    return [name for name in automatic_order(op, device)
            if _unavailable_reason(name, device, op) is None]


def choose(op: str, device: torch.device | str, requested: str | None = "auto") -> str:
    """The backend `op` runs with on `device`: the requested one (error if it cannot run there),
    else a forced one from use_backend / TOPOAUDIO_BACKEND, else the fastest available (with a
    one-time warning when that is not the device's first choice). Records it for last_backend."""
    device = torch.device(device)
    requested = backend_name(requested)
    if requested == "auto":
        requested = getattr(_state, "forced", None) or _environment_backend()
    if requested == "auto":
        name = available_backends(device, op)[0]
        _warn_if_fallback(op, device, name)
    else:
        reason = _unavailable_reason(requested, device, op)
        if reason is not None:
            raise ValueError(f"{op}: backend {requested!r} cannot run here: {reason}")
        name = requested
    record(op, name)
    return name


def automatic_order(op: str | None, device: torch.device | str) -> list[str]:
    """The order `auto` tries on `device`, without backends this installation can never reach
    there: triton on CPU tensors (unless interpreted) and cuda when topoaudio._C was built without
    CUDA (no nvcc at build time is a choice, not a fault). A backend that is listed but cannot run
    (topoaudio._C not built at all) is a fault: `choose` warns about it."""
    device = torch.device(device)
    order = _OP_PREFERENCE.get((op, device.type)) or _PREFERENCE.get(device.type, ("torch", "reference"))
    ext = extension()
    never = set()
    if device.type == "cpu" and not triton_interpreted():
        never.add("triton")
    if device.type != "cuda" or (ext is not None and not ext.with_cuda):
        never.add("cuda")
    if op in _OP_BACKENDS:
        order = [name for name in order if name in _OP_BACKENDS[op][0]]
    return [name for name in order if name not in never]


def _warn_if_fallback(op: str, device: torch.device, name: str) -> None:
    first = automatic_order(op, device)[0]
    if name == first or (op, device.type) in _warned:
        return
    _warned.add((op, device.type))
    warnings.warn(f"{op}: the {first} backend cannot run on {device.type} tensors "
                  f"({_unavailable_reason(first, device, op)}); using the slower {name} backend",
                  RuntimeWarning, stacklevel=4)


def _environment_backend() -> str:
    value = os.environ.get("TOPOAUDIO_BACKEND") or "auto"
    try:
        return backend_name(value)
    except ValueError as error:
        raise ValueError(f"TOPOAUDIO_BACKEND: {error}") from None


def record(op: str, name: str) -> None:
    """Note that `name` ran `op` (choose does this; ops that run a backward call it there too)."""
    _last[op] = name


def last_backend(op: str) -> str | None:
    """Name of the backend that ran `op` most recently in this process (None if it never ran)."""
    return _last.get(op)


@contextlib.contextmanager
def use_backend(name: str):
    """Run every op in the block with backend `name` (per thread)."""
    name = backend_name(name)
    previous = getattr(_state, "forced", None)
    _state.forced = None if name == "auto" else name
    try:
        yield
    finally:
        _state.forced = previous
