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


def _pooled_logits(model, waveform, reduce):
    """The head applied to block4's channels reduced by `reduce` over (frequency, time)."""
    with tapped(model, ["block4"]) as features:
        model(waveform)
    return model.head(reduce(features["block4"]))


def test_cochcnn_heads_read_the_maximum_and_old_checkpoints_the_mean():
    torch.manual_seed(0)
    model = CochCNN(4).eval()
    waveform = 0.1 * torch.randn(2, 40000)
    with torch.no_grad():
        assert model.pooling == "max" and bool(model.state_dict()["max_pooling"])
        peak = _pooled_logits(model, waveform, lambda f: f.amax(dim=(2, 3)))
        torch.testing.assert_close(model(waveform), peak)
        # A checkpoint written before the option (no flag) loads with the mean it was trained with.
        old = {k: v for k, v in model.state_dict().items() if k != "max_pooling"}
        legacy = CochCNN(4).eval()
        legacy.load_state_dict(old)
        assert legacy.pooling == "mean"
        mean = _pooled_logits(model, waveform, lambda f: f.mean(dim=(2, 3)))
        torch.testing.assert_close(legacy(waveform), mean)
        # ... and the flag round-trips.
        again = CochCNN(4).eval()
        again.load_state_dict(legacy.state_dict())
        assert again.pooling == "mean"
    with pytest.raises(ValueError, match="pooling must be one of"):
        CochCNN(4, pooling="median")
