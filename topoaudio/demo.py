"""Compute and save the cochleagram of the built-in sound (or of a WAV file) as a PNG.

    python -m topoaudio.demo [--wav FILE] [--out DIR] [--backend auto|cpp|torch|...]
    python -m topoaudio.demo --scene [--out DIR]   # example SpeechMusicScenes clips: WAV, labels, PNG
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from topoaudio.commandline import DefaultsFormatter
from topoaudio.data import demo_sound
from topoaudio.ops import cochleagram, dispatch
from topoaudio.ops.cochlear_filters import CochleagramConfig, channel_center_freqs

SR = 20000


def load_wav(path: str) -> np.ndarray:
    """The first 2 s of an audio file at 20 kHz, mono, RMS 0.1 (padded if shorter). A file that is
    not readable audio, holds NaN or infinite samples or whose channels cancel in the mono mix ends
    the command with one line naming it and why (topoaudio.data.read_audio)."""
    from topoaudio.data import AudioFileError, load_clip

    if not os.path.isfile(path):
        raise SystemExit(f"no such audio file: {path}")
    try:
        return load_clip(path, SR, 2.0, position=0.0).double().numpy()
    except AudioFileError as error:
        raise SystemExit(str(error)) from None


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


def describe(plan: dict) -> str:
    """One line saying what a scene holds, e.g. "speech 'water' (en-us+f3) over hiss at 3.1 dB SNR"."""
    from topoaudio.data import music

    def source(part: dict) -> str:
        if part["kind"] == "speech":
            return f"speech '{part['word_text']}' ({part['voice_name']})"
        if part["kind"] == "music":
            return f"music ({music.instrument_name(part['instrument'])})"
        return part["kind"].replace("_", " ")

    return f"{source(plan['foreground'])} over {source(plan['background'])} at {plan['snr_db']:.1f} dB SNR"


def scene_demo(out: str, backend: str = "auto", count: int = 6) -> str:
    """Write `count` SpeechMusicScenes training clips (speech, music, environment in turn) as WAV, a
    cochleagram PNG per clip and labels.json (targets and what each clip holds); returns labels.json."""
    import soundfile

    from topoaudio.data import SpeechMusicScenes

    dataset = SpeechMusicScenes(count)
    os.makedirs(out, exist_ok=True)
    labels = []
    for index in range(count):
        waveform, target = dataset[index]
        plan = dataset.info(index)
        name = f"scene_{index}_{plan['category_name']}"
        soundfile.write(os.path.join(out, f"{name}.wav"), waveform.numpy(), SR, subtype="FLOAT")
        coch = cochleagram(waveform, backend=backend)
        description = describe(plan)
        save_figure(waveform.numpy(), coch.numpy(), os.path.join(out, f"{name}.png"), description)
        labels.append({"wav": f"{name}.wav", "png": f"{name}.png", "target": target,
                       "description": description, "plan": plan})
    path = os.path.join(out, "labels.json")
    with open(path, "w") as handle:
        json.dump({"tasks": dataset.tasks, "clips": labels}, handle, indent=1)
    print(f"{count} scenes written to {out}: " + "; ".join(label["description"] for label in labels))
    return path


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(prog="topoaudio demo", description=__doc__.splitlines()[0],
                                     formatter_class=DefaultsFormatter)
    parser.add_argument("--wav", help="audio file to analyse (default: the built-in sound)")
    parser.add_argument("--out", default="outputs", help="directory for the PNG")
    parser.add_argument("--backend", default="auto", choices=("auto",) + dispatch.BACKENDS,
                        help="the cochleagram's backend (auto: the fastest here)")
    parser.add_argument("--scene", action="store_true",
                        help="write example speech / music / environment scenes (WAV, labels.json, PNG)")
    args = parser.parse_args(argv)
    if args.scene:
        if args.wav:
            raise SystemExit("--scene and --wav exclude each other")
        return scene_demo(args.out, args.backend)
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
