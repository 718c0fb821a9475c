"""Compute and save the cochleagram of the built-in sound (or of a WAV file) as a PNG.

    python -m topoaudio.demo [--wav FILE] [--out DIR] [--backend auto|cpp|torch|...]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from topoaudio.data import demo_sound
from topoaudio.ops import cochleagram, dispatch
from topoaudio.ops.cochlear_filters import CochleagramConfig, channel_center_freqs

SR = 20000


def load_wav(path: str) -> np.ndarray:
    """The first 2 s of an audio file at 20 kHz, mono, RMS 0.1 (padded if shorter)."""
    from topoaudio.data import load_clip

    if not os.path.isfile(path):
        raise SystemExit(f"no such audio file: {path}")
    return load_clip(path, SR, 2.0, position=0.0).double().numpy()


def save_figure(waveform: np.ndarray, coch: np.ndarray, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = CochleagramConfig()
    freqs = channel_center_freqs(config)
    fig, (ax_wave, ax_coch) = plt.subplots(2, 1, figsize=(9, 6), sharex=True,
                                           gridspec_kw={"height_ratios": [1, 3]})
    seconds = np.arange(len(waveform)) / SR
    ax_wave.plot(seconds, waveform, lw=0.4, color="0.2")
    ax_wave.set_ylabel("amplitude")
    ax_wave.set_title(title)
    frame_times = (np.arange(coch.shape[1]) * config.stride + config.window_size / 2) / SR
    image = ax_coch.pcolormesh(frame_times, np.arange(coch.shape[0]), coch, shading="nearest",
                               cmap="magma")
    ticks = [i for i in range(0, len(freqs), 30)]
    ax_coch.set_yticks(ticks, [f"{freqs[i]:.0f}" for i in ticks])
    ax_coch.set_ylabel("channel centre frequency (Hz)")
    ax_coch.set_xlabel("time (s)")
    fig.colorbar(image, ax=[ax_wave, ax_coch], label="compressed envelope (power 0.3)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wav", help="audio file to analyse (default: the built-in sound)")
    parser.add_argument("--out", default="outputs", help="directory for the PNG (default: outputs)")
    parser.add_argument("--backend", default="auto", choices=("auto",) + dispatch.BACKENDS)
    args = parser.parse_args(argv)
    waveform = load_wav(args.wav) if args.wav else demo_sound(SR)
    name = os.path.splitext(os.path.basename(args.wav))[0] if args.wav else "builtin"
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    coch = cochleagram(torch.tensor(waveform, dtype=torch.float32), backend=args.backend)
    elapsed = time.perf_counter() - start
    backend = dispatch.last_backend("cochleagram")
    path = os.path.join(args.out, f"cochleagram_{name}.png")
    save_figure(waveform, coch.numpy(), path,
                f"{name}: cochleagram {tuple(coch.shape)} ({backend} backend, {elapsed * 1e3:.0f} ms)")
    print(f"cochleagram {tuple(coch.shape)} computed by the {backend} backend in "
          f"{elapsed * 1e3:.0f} ms; saved {path}")
    return path


if __name__ == "__main__":
    main()
