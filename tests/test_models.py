"""Models: output shapes for 2 s input, named layer taps, the front end inside the model."""
import pytest
import torch

from topoaudio.models import CochCNN, CochResNet50, build_model, tapped


def test_cochcnn_outputs_and_taps_for_two_seconds():
    model = CochCNN(12).eval()
    with torch.no_grad(), tapped(model, model.tap_names) as features:
        logits = model(0.1 * torch.randn(2, 40000))
    assert logits.shape == (2, 12)
    shapes = {name: tuple(value.shape) for name, value in features.items()}
    assert shapes == {"block1": (2, 24, 53, 97), "block2": (2, 48, 27, 49),
                      "block3": (2, 96, 13, 24), "block4": (2, 128, 13, 24)}


def test_cochresnet50_single_and_multi_task_heads():
    model = CochResNet50({"word": 7, "speaker": 3}).eval()
    with torch.no_grad(), tapped(model, ["layer1", "layer4"]) as features:
        outputs = model(0.1 * torch.randn(1, 40000))
    assert {name: tuple(v.shape) for name, v in outputs.items()} == {"word": (1, 7), "speaker": (1, 3)}
    assert features["layer1"].shape == (1, 256, 53, 98)
    assert features["layer4"].shape == (1, 2048, 7, 13)
    single = CochResNet50(5).eval()
    with torch.no_grad():
        assert single(0.1 * torch.randn(1, 40000)).shape == (1, 5)
    assert sum(p.numel() for p in single.parameters()) > 23_000_000  # a real ResNet-50


def test_front_end_normalises_level():
    model = CochCNN(3).eval()
    waveform = 0.1 * torch.randn(1, 20000)
    with torch.no_grad():
        torch.testing.assert_close(model(waveform), model(7.0 * waveform + 0.3), rtol=1e-4, atol=1e-4)


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet9000", 3)
    with pytest.raises(ValueError, match="taps are"):
        with tapped(CochCNN(3), ["block9"]):
            pass
    with pytest.raises(ValueError, match="heads"):
        CochResNet50({})
