"""The README's main command: the demo computes and saves a cochleagram picture."""
import numpy as np
import pytest

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


def _tone(seconds=2.0, sr=20000):
    return 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(sr * seconds)) / sr)


def _nan_sample(path):
    import soundfile

    samples = _tone()
    samples[1000] = np.nan
    soundfile.write(path, samples, 20000, subtype="FLOAT")


def _antiphase(path):  # L = x, R = -x: the mono mix is (nearly) nothing
    import soundfile

    soundfile.write(path, np.stack([_tone(), -_tone()], axis=1), 20000, subtype="PCM_16")


BAD_FILES = {
    "a NaN sample": ("nan.wav", _nan_sample, "1 of its 40000 samples is NaN or infinite"),
    "antiphase stereo": ("antiphase.wav", _antiphase, "its 2 channels cancel when mixed to mono"),
    "a text file": ("notes.txt", lambda path: path.write_text("not audio\n"), "not readable audio"),
    "an empty file": ("empty.wav", lambda path: path.write_bytes(b""), "not readable audio"),
    "README.md": ("README.md", lambda path: path.write_text("# topoaudio\n\nText.\n"),
                  "not readable audio"),
}


@pytest.mark.parametrize("fault", list(BAD_FILES))
def test_a_wav_that_is_not_usable_audio_is_one_line_naming_it(fault, tmp_path):
    name, make, reason = BAD_FILES[fault]
    make(tmp_path / name)
    with pytest.raises(SystemExit) as stop:
        demo.main(["--wav", str(tmp_path / name), "--out", str(tmp_path / "out")])
    message = str(stop.value.code)
    assert message.startswith(f"{tmp_path / name}: {reason}") and "\n" not in message
    assert not (tmp_path / "out").exists()  # refused before any picture


def test_a_stereo_wav_is_mixed_to_mono(tmp_path):
    import soundfile

    wav = tmp_path / "stereo.wav"
    rng = np.random.default_rng(0)
    soundfile.write(wav, np.stack([_tone(), 0.5 * _tone() + 0.01 * rng.standard_normal(40000)], 1), 20000)
    assert demo.load_wav(str(wav)).shape == (40000,)
