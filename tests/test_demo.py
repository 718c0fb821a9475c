"""The README's main command: the demo computes and saves a cochleagram picture."""
import numpy as np

from topoaudio import demo
from topoaudio.data import demo_sound


def test_builtin_sound_is_deterministic_and_normalised():
    sound = demo_sound()
    assert sound.shape == (40000,)
    np.testing.assert_array_equal(sound, demo_sound())
    assert abs(sound.mean()) < 1e-9
    assert abs(np.sqrt(np.mean(sound ** 2)) - 0.1) < 1e-9


def test_demo_writes_a_png(tmp_path, capsys):
    path = demo.main(["--out", str(tmp_path)])
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "(211, 390)" in capsys.readouterr().out


def test_demo_reads_a_wav_file(tmp_path):
    import soundfile

    wav = tmp_path / "tone.wav"
    t = np.arange(16000 * 2) / 16000
    soundfile.write(wav, 0.3 * np.sin(2 * np.pi * 440 * t), 16000)  # resampled to 20 kHz
    path = demo.main(["--wav", str(wav), "--out", str(tmp_path)])
    assert path.endswith("cochleagram_tone.png")
