"""The one checker for the settings of every op (numbers, names, backends).

A setting is a number when it is one: Python ints and floats, NumPy scalars (np.float32(2.0)) and
0-d real tensors are accepted alike and come back as plain Python numbers, so registered ops (whose
schemas take Python float / int / str) and caches keyed on settings see one type. bool is refused:
True is almost always a mistake for a radius or a sample rate. Each check raises one ValueError
naming the setting and the value.
"""
from __future__ import annotations

import math
import numbers

import torch

BACKEND_NAMES = ("cuda", "triton", "cpp", "torch", "reference")


def _as_python_number(name: str, value):
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{name} must be a real number, got a tensor of shape "
                             f"{tuple(value.shape)} and dtype {value.dtype}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def finite_number(name: str, value) -> float:
    """A finite real number, as a Python float."""
    number = float(_as_python_number(name, value))
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {number}")
    return number


def positive_number(name: str, value) -> float:
    """A finite number > 0, as a Python float."""
    number = finite_number(name, value)
    if not number > 0:
        raise ValueError(f"{name} must be a positive finite number, got {number}")
    return number


def non_negative_number(name: str, value) -> float:
    """A finite number >= 0, as a Python float."""
    number = finite_number(name, value)
    if number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {number}")
    return number


def positive_integer(name: str, value) -> int:
    """An integer >= 1 (2.0 and np.int64(2) are integers; 2.5 is not), as a Python int."""
    number = _as_python_number(name, value)
    if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
        raise ValueError(f"{name} must be a positive integer, got {number}")
    if int(number) < 1:
        raise ValueError(f"{name} must be a positive integer, got {number}")
    return int(number)


def backend_name(value) -> str:
    """A backend request: one of BACKEND_NAMES, or "auto" (None means "auto")."""
    if value is None:
        return "auto"
    if not isinstance(value, str) or (value not in BACKEND_NAMES and value != "auto"):
        raise ValueError(f"unknown backend {value!r}; choose one of {BACKEND_NAMES} or 'auto'")
    return value


COCHLEAGRAM_MODES = ("exact", "fast")
# The fast mode's default oversample: its error table over the 165 NH2015 sounds
# (bench/results/cochleagram-fast-error, docs/SCIENCE.md section 2) puts 4 at a relative RMS error
# of 1.6e-3 after compression, ~10x faster than the exact op on 2 CPU cores.
DEFAULT_OVERSAMPLE = 4.0


def cochleagram_mode(mode, oversample) -> tuple[str, float | None]:
    """(mode, oversample) checked: mode "exact" (the default, golden-exact) or "fast" (issue 20);
    oversample a finite number >= 1, for the fast mode only (None: DEFAULT_OVERSAMPLE). An
    oversample given with the exact mode is refused, not ignored: the caller meant the fast one."""
    if mode not in COCHLEAGRAM_MODES:
        raise ValueError(f"unknown cochleagram mode {mode!r}; choose one of {COCHLEAGRAM_MODES}")
    if mode == "exact":
        if oversample is not None:
            raise ValueError(f"oversample={oversample!r} applies to mode='fast' only; the exact "
                             "mode has no oversample (pass mode='fast' or drop oversample)")
        return mode, None
    if oversample is None:
        return mode, DEFAULT_OVERSAMPLE
    oversample = finite_number("oversample", oversample)
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1 (each band sampled at least at its own width), "
                         f"got {oversample}")
    return mode, oversample


def cochleagram_rate(sr, env_sr, high_lim=None) -> tuple[int, int]:
    """(sr, rate): the caller's sample rate and the rate the cochleagram computes at
    (docs/SCIENCE.md section 2, "Any sample rate"). The envelope is downsampled by an integer
    stride, so the rate must be a multiple of env_sr: a sample rate that is one is used as is
    (bit for bit the op as before); any other is resampled (torchaudio.functional.resample, band
    limited, differentiable) down to the largest multiple of env_sr below it: 44100 Hz -> 44000 Hz,
    22050 -> 22000, 11025 -> 11000 at env_sr 200 (down, so no band above the input's Nyquist
    frequency is made up). The frames stay 1 / env_sr apart in the caller's time. ValueError in
    one line when there is no such multiple (sr below env_sr), or when high_lim (if given) is
    above the Nyquist frequency of the computing rate."""
    sr, env_sr = positive_integer("sr", sr), positive_integer("env_sr", env_sr)
    rate = env_sr * (sr // env_sr)
    if rate == 0:
        raise ValueError(f"sr ({sr} Hz) is below env_sr ({env_sr} Hz): the envelope cannot be "
                         "sampled faster than the sound; lower env_sr")
    if high_lim is not None and positive_number("high_lim", high_lim) > rate / 2:
        resampled = f" (sr={sr} resampled to {rate} Hz)" if rate != sr else ""
        raise ValueError(f"high_lim ({high_lim} Hz) is above the Nyquist frequency sr/2 = "
                         f"{rate / 2} Hz{resampled}; lower high_lim")
    return sr, rate


def pad_factor_setting(value) -> float | None:
    """None (no padding: the op as before) or a finite number >= 1: the clip is zero-padded to
    ceil(pad_factor x T) samples before filtering and the frames cropped back (section 2)."""
    if value is None:
        return None
    number = finite_number("pad_factor", value)
    if number < 1:
        raise ValueError(f"pad_factor must be None or a finite number >= 1 (the padded length over "
                         f"the clip's), got {number}")
    return None if number == 1 else number
