"""The losses on a model of the user's own (issue 22, item 2): SpatialLoss from a positions tensor
or hooked on a layer by name, TopoLoss from a list of modules or by layer name with its documented
default tau, TDANN's window sampler public in topoaudio.ops, and reprs that show the settings."""
import pathlib

import pytest
import torch
from torch import nn

import topoaudio.ops as ops
from topoaudio.sheet import channel_freq_sheet
from topoaudio.topoloss import DEFAULT_TAU, TopoLoss, output_weight_module
from topoaudio.training import topography
from topoaudio.training.config import TrainConfig

REPO = pathlib.Path(__file__).resolve().parents[1]


def seeded(seed):
    return torch.Generator().manual_seed(seed)


# --- SpatialLoss -------------------------------------------------------------------------------

def test_a_positions_tensor_gives_the_same_loss_as_the_sheet_holding_it():
    sheet = channel_freq_sheet("conv", 8, 6, size_mm=2.0)  # 48 units
    activations = torch.randn(5, 8, 6, 3, generator=seeded(0))
    from_sheet = ops.SpatialLoss(sheet, weight=0.5)(activations)
    pooled = sheet.responses  # the tensor form pools with a callable, or the user pools
    from_tensor = ops.SpatialLoss(sheet.positions, weight=0.5, responses=pooled)(activations)
    assert from_tensor.item() == from_sheet.item()
    flat = ops.SpatialLoss(sheet.positions.double())(sheet.responses(activations))
    assert flat.item() == pytest.approx(from_sheet.item() / 0.5, rel=1e-6)


def test_a_tensor_without_responses_flattens_the_activations():
    positions = torch.rand(24, 2, generator=seeded(1)) * 3
    activations = torch.randn(7, 4, 6, generator=seeded(2))  # 24 units after the batch dim
    expected = ops.spatial_loss(activations.flatten(1), positions)
    assert ops.SpatialLoss(positions)(activations).item() == expected.item()


@pytest.mark.parametrize("positions, message", [
    (torch.rand(10, 3), r"positions must be \[N, 2\].*got shape \(10, 3\)"),
    (torch.rand(10), r"positions must be \[N, 2\].*got shape \(10,\)"),
    (torch.rand(1, 2), r"N >= 2"),
    (torch.ones(4, 2, dtype=torch.int64), "floating point"),
    (torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]), "1 NaN or Inf"),
])
def test_bad_positions_are_one_line_errors_at_construction(positions, message):
    with pytest.raises(ValueError, match=message) as caught:
        ops.SpatialLoss(positions)
    assert "\n" not in str(caught.value)


def test_a_count_mismatch_names_both_counts_at_forward():
    loss = ops.SpatialLoss(torch.rand(64, 2), layer="conv2")
    with pytest.raises(ValueError, match=r"layer 'conv2': the layer has 80 units .* hold 64") as caught:
        loss(torch.randn(4, 80))
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="a positions tensor"):
        ops.SpatialLoss([[0.0, 1.0], [1.0, 0.0]])


class TwoLayerNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 4, 2)
        self.head = nn.Linear(16, 12)

    def forward(self, x):
        x = self.block(self.act(self.conv1(x)))
        return self.head(x.mean(dim=(2, 3)))


def test_spatial_loss_hooked_by_layer_name_reads_the_latest_forward():
    torch.manual_seed(0)
    model = TwoLayerNet()
    sheet = channel_freq_sheet("block", 16, 6, size_mm=3.0)
    loss = ops.SpatialLoss.from_layer(model, "block", sheet, weight=0.25)
    with pytest.raises(ValueError, match="no activations yet"):
        loss()
    x = torch.randn(4, 1, 6, 5, generator=seeded(3))
    task = model(x).sum()
    value = loss()
    expected = 0.25 * ops.spatial_loss(sheet.responses(model.block(model.act(model.conv1(x)))),
                                       sheet.positions)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    (task + value).backward()  # the same graph as the model's forward: gradients reach conv1
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    assert "layer='block'" in repr(loss) and "units=96" in repr(loss)
    loss.remove()
    model(x)
    with pytest.raises(ValueError, match="from_layer"):
        loss()


def test_a_layer_the_model_lacks_is_named():
    with pytest.raises(ValueError, match=r"has no layer 'conv9'; its layers are conv1, act, block"):
        ops.SpatialLoss.from_layer(TwoLayerNet(), "conv9", torch.rand(8, 2))


def test_spatial_loss_repr_shows_its_settings():
    text = repr(ops.SpatialLoss(torch.rand(10, 2) * 2, kind="absolute", radius=1.5, weight=0.25))
    for part in ("units=10 (positions", "kind='absolute'", "radius=1.5", "eps=1e-06", "weight=0.25",
                 "backend='auto'", "lattice=None"):
        assert part in text, (part, text)


# --- TopoLoss ----------------------------------------------------------------------------------

def test_a_list_of_modules_gives_the_dict_result():
    torch.manual_seed(1)
    convs = [nn.Conv2d(1, 16, 3), nn.Conv2d(16, 32, 3), nn.Linear(32, 12)]
    as_dict, dict_layers = TopoLoss({"a": convs[0], "b": convs[1], "c": convs[2]}, tau=3.0)()
    as_list, list_layers = TopoLoss(convs, tau=3.0)()
    assert as_list.item() == as_dict.item()
    assert list(list_layers) == ["0", "1", "2"]
    assert list(list_layers.values()) == list(dict_layers.values())
    taus = TopoLoss(convs, tau=[1.0, 2.0, 4.0])
    assert taus.tau == {"0": 1.0, "1": 2.0, "2": 4.0}
    with pytest.raises(ValueError, match="tau lists 2 values for 3 layers"):
        TopoLoss(convs, tau=[1.0, 2.0])


def test_the_default_tau_is_the_documented_one_and_is_used():
    science = (REPO / "docs" / "SCIENCE.md").read_text()
    assert "tau 25 by default" in science
    assert DEFAULT_TAU == 25.0 == TrainConfig().tau
    conv = nn.Conv2d(1, 16, 3)
    default, per_layer = TopoLoss([conv])()
    assert default.item() == pytest.approx(25.0 * per_layer["0"], rel=1e-6)
    assert TopoLoss([conv]).tau == {"0": 25.0}


def test_topoloss_attaches_by_layer_name():
    torch.manual_seed(2)
    model = TwoLayerNet()
    loss = TopoLoss.from_layers(model, ["conv1", "block", "head"], tau=2.0)
    # a named block contributes its last conv or linear: the weights whose outputs are its units
    expected, _ = TopoLoss({"conv1": model.conv1, "block": model.block[0], "head": model.head},
                           tau=2.0)()
    total, per_layer = loss()
    assert total.item() == expected.item() and list(per_layer) == ["conv1", "block", "head"]
    total.backward()
    assert model.block[0].weight.grad is not None
    assert TopoLoss.from_layers(model, "conv1").tau == {"conv1": 25.0}
    assert output_weight_module(model.block, "block") is model.block[0]


@pytest.mark.parametrize("layers, message", [
    (["conv1", "conv9"], r"has no layer 'conv9'; its layers are conv1, act, block"),
    (["act"], r"layer 'act' \(ReLU\) has no conv or linear weight"),
    (["up"], r"layer 'up' \(ConvTranspose2d\) is not supported"),
    ([], "non-empty list"),
])
def test_topoloss_by_name_refuses_in_one_line(layers, message):
    with pytest.raises(ValueError, match=message) as caught:
        TopoLoss.from_layers(TwoLayerNet(), layers)
    assert "\n" not in str(caught.value)


def test_topoloss_repr_shows_its_settings():
    text = repr(TopoLoss([nn.Conv2d(1, 16, 3)], tau=5.0, factor_h=2.0))
    for part in ("'0': 'Conv2d[16x1x3x3]'", "tau={'0': 5.0}", "phi=2.0", "factor_h=2.0",
                 "interpolation='bilinear'"):
        assert part in text, (part, text)


# --- TDANN's sampler -----------------------------------------------------------------------------

def test_the_sampler_is_public_in_ops_and_training_uses_the_same_one():
    assert topography.tdann_neighbourhood is ops.tdann_neighbourhood
    assert topography.tdann_neighbourhood_size is ops.tdann_neighbourhood_size
    assert topography.nearest_neighbourhood is ops.nearest_neighbourhood


def test_the_sampler_draws_what_it_drew_before_the_move():
    # Numbers the sampler in training/topography.py drew before it moved (commit 55fc2e4).
    positions = torch.rand(400, 2, generator=seeded(0)) * 10
    size = ops.tdann_neighbourhood_size(positions, 4.0, 500, seeded(1), windows=2000)
    assert size == 49
    index = ops.tdann_neighbourhood(positions, 4.0, size, seeded(2))
    assert index[:10].tolist() == [260, 218, 148, 231, 252, 90, 339, 360, 247, 67]
    assert int(index.sum()) == 9878
    assert ops.nearest_neighbourhood(positions, 7, seeded(3)).tolist() == [186, 22, 108, 240, 29, 97, 49]


def test_the_sampler_refuses_positions_that_are_not_n_by_2():
    with pytest.raises(ValueError, match=r"positions must be a tensor \[N, 2\]"):
        ops.tdann_neighbourhood(torch.rand(10, 3), 1.0, 5, seeded(0))
