"""The cochleagram's axes (issue 22, item 3; docs/SCIENCE.md section 2, "Axes" and after): channel
frequencies and frame times from the op and the module, the padding rule for clips of different
lengths (valid_frames), pad_factor against the filters' wrap-around, and any sample rate."""
import math

import numpy as np
import pytest
import torch
import torchaudio.functional

import topoaudio.ops as ops
from topoaudio.ops.cochlear_filters import (
    CochleagramConfig,
    _filter_responses,
    channel_center_freqs,
    channel_frequencies,
    erb_to_freq,
    freq_to_erb,
)

SR = 20000


def sweep(seconds: float = 1.0, sr: int = SR, low: float = 50.0, high: float = 8000.0) -> torch.Tensor:
    """A logarithmic sine sweep, RMS 0.1, float32."""
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    rate = math.log(high / low) / seconds
    x = torch.sin(2 * math.pi * low * (torch.exp(rate * t) - 1) / rate)
    return (0.1 * x / x.pow(2).mean().sqrt()).float()


def tone(freq: float, seconds: float, sr: int) -> torch.Tensor:
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    return (0.1 * math.sqrt(2) * torch.sin(2 * math.pi * freq * t)).float()


# --- frequencies -------------------------------------------------------------------------------

@pytest.mark.parametrize("settings", [{}, dict(sr=16000, high_lim=8000.0), dict(sr=44100),
                                      dict(n=10, sample_factor=2, low_lim=100.0, high_lim=4000.0)])
def test_frequencies_one_per_channel_rising_inside_the_band(settings):
    module = ops.Cochleagram(**settings)
    freqs = module.frequencies
    assert freqs.dtype == torch.float64 and freqs.shape == (module.n_channels,)
    assert bool((freqs.diff() > 0).all())
    assert float(freqs[0]) > 0 and float(freqs[-1]) < module.config.sr / 2
    assert torch.equal(ops.cochleagram_axes(40000, **settings)[0], freqs)


def test_band_pass_channels_inside_the_band_sit_at_their_design_centres():
    config = CochleagramConfig()
    freqs, design = channel_frequencies(config), channel_center_freqs(config)
    sf = config.sample_factor
    # band-pass channels whose whole support lies below Nyquist (all but the top three here)
    np.testing.assert_allclose(freqs[sf:-sf - 3], design[sf:-sf - 3], rtol=1e-9)
    # the design points of the top edge channels lie beyond Nyquist; the frequencies do not
    assert (design[-3:] > SR / 2).all() and (freqs <= SR / 2).all()
    assert (freqs[:sf] < config.low_lim).all() and (freqs[-sf:] > design[-sf - 1 - 3]).all()


def test_each_channels_frequency_is_the_centroid_of_what_it_passes():
    config = CochleagramConfig(sr=16000, high_lim=8000.0)
    # brute force: the ERB centroid of |H|^2 on a million-point ERB grid over [0, sr / 2]
    erb = np.linspace(0.0, freq_to_erb(8000.0), 1_000_001)
    power = _filter_responses(config, erb_to_freq(erb)) ** 2
    centroid = erb_to_freq(power @ erb / power.sum(axis=1))
    np.testing.assert_allclose(channel_frequencies(config), centroid, rtol=3e-5)


@pytest.mark.parametrize("sr", [20000, 16000, 44100])
def test_a_tone_peaks_in_the_channel_of_its_frequency(sr):
    module = ops.Cochleagram(sr=sr, high_lim=min(10000.0, sr // 2), compression=None)
    freqs = module.frequencies
    for freq in (200.0, 1000.0, 4000.0):
        energy = module(tone(freq, 0.5, sr)).mean(dim=-1)
        found = float(freqs[int(energy.argmax())])
        assert abs(math.log2(found / freq)) < 0.05, (sr, freq, found)  # within ~3.5 %


# --- times -------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [40000, 20001, 1001, 4567])
def test_times_has_one_entry_per_output_frame(length):
    module = ops.Cochleagram()
    out = module(torch.randn(length) * 0.1)
    times = module.times(length)
    assert times.shape == (out.shape[-1],) == (module.n_frames(length),)
    assert float(times[0]) == pytest.approx(500.5 / SR)
    if length > 1001:
        np.testing.assert_allclose(times.diff().numpy(), 0.005)
    assert torch.equal(ops.cochleagram_axes(length)[1], times)


@pytest.mark.parametrize("sr, window", [(20000, 1001), (44100, 2201)])
def test_a_click_peaks_at_the_frame_whose_time_is_the_clicks(sr, window):
    module = ops.Cochleagram(sr=sr, window_size=window, compression=None)
    length = sr  # 1 s
    for at in (0.2, 0.5137, 0.81):
        x = torch.zeros(length)
        x[int(round(at * sr))] = 1.0
        envelope = module(x)[module.n_channels // 2:]  # the upper channels: short responses
        peak = float(module.times(length)[int(envelope.sum(dim=0).argmax())])
        assert abs(peak - at) <= 0.5 / module.config.env_sr + 1e-9, (sr, at, peak)


# --- clips of different lengths ------------------------------------------------------------------

def test_valid_frames_counts_the_frames_inside_each_clip():
    lengths = [40000, 30000, 20000, 1001, 1000, 0]
    assert ops.valid_frames(lengths).tolist() == [390, 290, 190, 1, 0, 0]
    module = ops.Cochleagram()
    assert torch.equal(module.valid_frames(torch.tensor(lengths)), ops.valid_frames(lengths))
    for length in lengths[:4]:
        assert module(torch.randn(length) * 0.1).shape[-1] == int(ops.valid_frames([length])[0])
    # at a resampled rate the count is that of the resampled clip
    assert ops.valid_frames([88200], sr=44100).tolist() == [ops.Cochleagram(sr=44100).n_frames(88200)]


@pytest.mark.parametrize("lengths, message", [([1.5], "lengths must be integers"),
                                              ([-3], "lengths must be >= 0"),
                                              ("abc", "lengths must be integers")])
def test_bad_lengths_are_one_line_errors(lengths, message):
    with pytest.raises(ValueError, match=message) as caught:
        ops.valid_frames(lengths)
    assert "\n" not in str(caught.value)


# Measured on the 1 s sweep (clips of 15000 and 9000 samples in a batch of 20000): without
# pad_factor the valid frames differ from the clip alone by up to 0.099 (the filters wrap the
# batch's zeros, or the clip's own start, around its end); with pad_factor 2 by up to 0.0107
# (docs/SCIENCE.md section 2 has the 2 s numbers).
PADDED_BATCH_ATOL = 1.5e-2


def test_a_padded_batch_keeps_each_clips_valid_frames():
    x = sweep()
    lengths = [20000, 15000, 9000]
    batch = torch.stack([torch.nn.functional.pad(x[:n], (0, 20000 - n)) for n in lengths])
    frames = ops.valid_frames(lengths)
    together = ops.cochleagram(batch, pad_factor=2)
    plain = ops.cochleagram(batch)
    worst_plain = 0.0
    for row, (n, keep) in enumerate(zip(lengths, frames.tolist(), strict=True)):
        alone = ops.cochleagram(x[:n], pad_factor=2)
        assert alone.shape[-1] == keep
        assert float((together[row, :, :keep] - alone).abs().max()) <= PADDED_BATCH_ATOL
        worst_plain = max(worst_plain, float((plain[row, :, :keep] - ops.cochleagram(x[:n])).abs().max()))
    assert worst_plain > 5 * PADDED_BATCH_ATOL  # without pad_factor the wrap-around shows


# --- pad_factor --------------------------------------------------------------------------------

def test_pad_factor_brings_the_edges_close_to_a_clip_in_silence():
    x = sweep()
    in_silence = ops.cochleagram(x, pad_factor=6)  # the clip followed by 5 s of silence
    errors = {}
    for pad_factor in (None, 1.5, 2, 4):
        out = ops.cochleagram(x, pad_factor=pad_factor)
        assert out.shape == in_silence.shape == (211, 190)
        errors[pad_factor] = float((out - in_silence)[:, -10:].abs().max())  # the last 10 frames
    assert errors[None] > 0.05
    assert errors[None] > errors[1.5] > errors[2] > errors[4]
    assert errors[2] < errors[None] / 10


def test_pad_factor_none_or_one_is_the_op_as_before():
    x = sweep(0.3)
    plain = ops.cochleagram(x)
    assert torch.equal(ops.cochleagram(x, pad_factor=None), plain)
    assert torch.equal(ops.cochleagram(x, pad_factor=1), plain)
    assert ops.Cochleagram(pad_factor=1.0).pad_factor is None


def test_pad_factor_equals_padding_by_hand_and_has_a_gradient():
    x = sweep(0.3).double().requires_grad_(True)
    out = ops.cochleagram(x, pad_factor=1.5)
    by_hand = ops.cochleagram(torch.nn.functional.pad(x, (0, 3000)))[..., :out.shape[-1]]
    assert torch.equal(out, by_hand)
    out.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0


def test_pad_factor_and_resampling_work_in_the_fast_mode():
    x = sweep(0.5, sr=22050)
    exact = ops.cochleagram(x, sr=22050, pad_factor=2)
    fast = ops.cochleagram(x, sr=22050, pad_factor=2, mode="fast")
    assert fast.shape == exact.shape
    assert float((fast - exact).norm() / exact.norm()) < 5e-3


@pytest.mark.parametrize("pad_factor, message", [
    (0.5, "pad_factor must be None or a finite number >= 1"),
    (float("nan"), "pad_factor must be a finite number"),
    ("2", "pad_factor must be a real number"),
])
def test_bad_pad_factors_are_one_line_errors(pad_factor, message):
    for build in (lambda: ops.Cochleagram(pad_factor=pad_factor),
                  lambda: ops.cochleagram(torch.zeros(4000), pad_factor=pad_factor)):
        with pytest.raises(ValueError, match=message) as caught:
            build()
        assert "\n" not in str(caught.value)


# --- any sample rate ---------------------------------------------------------------------------

def test_44100_hz_is_resampled_to_44000_hz():
    x = 0.1 * torch.randn(2, 44100, generator=torch.Generator().manual_seed(0))
    module = ops.Cochleagram(sr=44100)
    assert module.sr == 44100 and module.config.sr == 44000 and module.config.stride == 220
    out = module(x)
    expected = ops.cochleagram(torchaudio.functional.resample(x, 44100, 44000), sr=44000)
    assert torch.equal(out, expected) and torch.equal(ops.cochleagram(x, sr=44100), expected)
    assert out.shape == (2, 211, module.n_frames(44100)) == (2, 211, 196)
    assert module.times(44100).shape == (196,)
    assert "sr=44100" in repr(module) and "resampled_to=44000" in repr(module)


def test_a_rate_env_sr_divides_is_not_resampled():
    for sr in (20000, 16000, 44000, 48000):
        module = ops.Cochleagram(sr=sr, high_lim=min(10000.0, sr / 2))
        assert module.config.sr == sr and "resampled_to" not in repr(module)


def test_resampled_input_keeps_its_gradient():
    x = (0.1 * torch.randn(11025, dtype=torch.float64)).requires_grad_(True)
    ops.cochleagram(x, sr=11025, high_lim=5000.0).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("settings, message", [
    (dict(sr=100), r"sr \(100 Hz\) is below env_sr \(200 Hz\)"),
    (dict(sr=22050, high_lim=11025.0), r"high_lim \(11025.0 Hz\) is above the Nyquist frequency "
                                       r"sr/2 = 11000.0 Hz \(sr=22050 resampled to 22000 Hz\)"),
    (dict(sr=0), "sr must be a positive integer"),
    (dict(sr=44100.5), "sr must be a positive integer"),
])
def test_impossible_rates_are_one_line_errors(settings, message):
    for build in (lambda: ops.Cochleagram(**settings),
                  lambda: ops.cochleagram(torch.zeros(4000), **settings),
                  lambda: ops.cochleagram_axes(4000, **settings)):
        with pytest.raises(ValueError, match=message) as caught:
            build()
        assert "\n" not in str(caught.value)
