"""TopoLoss: the per-layer formula, smoothing under optimisation, gradients, the module's total, the
tau schedule, roughness, and bad input."""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from topoaudio.topoloss import TopoLoss, tau_schedule, topoloss_layer, weight_roughness


def random_weight(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def loop_formula(weight, phi):
    """The loss written out cell by cell from SCIENCE.md section 4, for comparison."""
    n_out = weight.shape[0]
    height = max(h for h in range(1, n_out + 1) if n_out % h == 0 and h * h <= n_out)
    width = n_out // height
    flat = weight.reshape(n_out, -1)
    image = torch.stack([torch.stack([flat[r * width + c] for c in range(width)], dim=-1)
                         for r in range(height)], dim=-2)[None]
    # TopoNets' downsample: floor(size / phi) cells, coordinates mapped by phi itself
    coarse = F.interpolate(image, scale_factor=1 / phi, mode="bilinear", align_corners=False)
    blurred = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]
    cosines = [F.cosine_similarity(flat[r * width + c], blurred[:, r, c], dim=0)
               for r in range(height) for c in range(width)]
    return 1 - torch.stack(cosines).mean()


@pytest.mark.parametrize("shape, phi", [((12, 3, 3, 3), 2.0), ((14, 5), 2.0), ((32, 4, 5), 3.0),
                                        ((64, 2, 1, 1), 1.5)])
def test_matches_cell_by_cell_formula(shape, phi):
    weight = random_weight(*shape, dtype=torch.float64)
    assert torch.allclose(topoloss_layer(weight, phi), loop_formula(weight, phi), atol=1e-12)


@pytest.mark.parametrize("shape", [(64, 8, 3, 3), (26, 4), (30, 6, 5)])
def test_zero_for_a_spatially_constant_sheet_and_larger_for_random(shape):
    one_vector = random_weight(1, *shape[1:])
    constant = one_vector.expand(*shape).contiguous()
    assert topoloss_layer(constant, 2.0).abs().item() < 1e-6
    assert weight_roughness(constant) < 1e-10
    assert topoloss_layer(random_weight(*shape), 2.0).item() > 0.1


def test_is_scale_invariant_and_in_range():
    weight = random_weight(48, 6, 3, 3)
    loss = topoloss_layer(weight, 2.0)
    assert 0 < loss.item() < 2
    assert torch.allclose(topoloss_layer(weight * 37.0, 2.0), loss, atol=1e-6)


def test_minimising_it_smooths_the_weight_sheet():
    weight = nn.Parameter(random_weight(64, 16, 3, 3) * 0.1)
    rough_before = weight_roughness(weight)
    loss_before = topoloss_layer(weight, 2.0).item()
    optimiser = torch.optim.Adam([weight], lr=0.01)
    for _ in range(100):
        optimiser.zero_grad()
        topoloss_layer(weight, 2.0).backward()
        optimiser.step()
    assert weight_roughness(weight) < 0.5 * rough_before
    assert topoloss_layer(weight, 2.0).item() < 0.2 * loss_before


def test_gradcheck_float64():
    weight = random_weight(6, 2, 3, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: topoloss_layer(w, 2.0), (weight,))
    linear = random_weight(18, 3, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: topoloss_layer(w, 3.0), (linear,))


def test_float32_and_half_inputs_keep_working():
    weight = random_weight(16, 4, 3, 3, dtype=torch.float64)
    reference = topoloss_layer(weight, 2.0).item()
    assert topoloss_layer(weight.float(), 2.0).dtype == torch.float32
    assert topoloss_layer(weight.float(), 2.0).item() == pytest.approx(reference, abs=1e-6)
    assert topoloss_layer(weight.bfloat16(), 2.0).item() == pytest.approx(reference, abs=2e-2)


@pytest.mark.parametrize("weight, phi", [
    (torch.zeros(8), 2.0), (torch.zeros(8, 3, dtype=torch.int64), 2.0), ("w", 2.0),
    (torch.zeros(8, 3), 0.5), (torch.zeros(8, 3), float("nan")),
])
def test_layer_rejects_bad_input(weight, phi):
    with pytest.raises(ValueError):
        topoloss_layer(weight, phi)


def test_roughness_counts_right_and_down_neighbours():
    # 2 x 2 grid of unit vectors e0, e0 / e1, e1: only the two vertical pairs differ, by |e0 - e1|^2 = 2
    weight = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    assert weight_roughness(weight) == pytest.approx(2 * 2 / 4)
    assert weight_roughness(random_weight(64, 200)) == pytest.approx(2.0, abs=0.1)
    with pytest.raises(ValueError):
        weight_roughness(torch.ones(1, 4))


def test_module_total_is_the_tau_weighted_mean():
    conv = nn.Conv2d(4, 16, 3)
    linear = nn.Linear(10, 12)
    raw = nn.Parameter(random_weight(9, 5, 3))
    tau = {"conv": 0.5, "linear": 2.0, "raw": 1.0}
    loss = TopoLoss({"conv": conv, "linear": linear, "raw": raw}, tau, phi=2.0)
    total, per_layer = loss()
    assert set(per_layer) == {"conv", "linear", "raw"}
    assert all(isinstance(value, float) for value in per_layer.values())
    assert per_layer["conv"] == pytest.approx(topoloss_layer(conv.weight, 2.0).item())
    expected = sum(tau[name] * per_layer[name] for name in tau) / 3
    assert total.item() == pytest.approx(expected, rel=1e-6)
    total.backward()
    assert conv.weight.grad is not None and raw.grad is not None and linear.bias.grad is None
    assert list(loss.parameters()) == [], "the loss must not register the model's layers"


def test_module_applies_a_shared_tau_and_a_schedule():
    conv = nn.Conv1d(3, 8, 5)
    plain_total, _ = TopoLoss({"conv": conv}, tau=3.0)()
    schedule = functools.partial(tau_schedule, total_steps=100, kind="linear", warmup_steps=10)
    scheduled = TopoLoss({"conv": conv}, tau=3.0, schedule=schedule)
    assert scheduled(step=5)[0].item() == pytest.approx(0.5 * plain_total.item())
    assert scheduled(step=0)[0].item() == 0.0
    assert scheduled()[0].item() == pytest.approx(plain_total.item())


@pytest.mark.parametrize("layers, tau, message", [
    ({"relu": nn.ReLU()}, 1.0, "'relu'.*no weight"),
    ({"norm": nn.BatchNorm2d(8)}, 1.0, r"'norm'.*shape \(8,\)"),
    ({"bias": nn.Parameter(torch.zeros(8))}, 1.0, "'bias'"),
    ({}, 1.0, "non-empty"),
    ({"conv": nn.Conv2d(2, 4, 3)}, {"other": 1.0}, "exactly the layers"),
    ({"conv": nn.Conv2d(2, 4, 3)}, -1.0, "'conv'.*>= 0"),
])
def test_module_rejects_bad_layers_and_taus(layers, tau, message):
    with pytest.raises(ValueError, match=message):
        TopoLoss(layers, tau)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_warmup_and_decay(kind):
    assert tau_schedule(0, 100, kind=kind, warmup_steps=20) == 0.0
    assert tau_schedule(10, 100, kind=kind, warmup_steps=20) == pytest.approx(0.5)
    assert tau_schedule(20, 100, kind=kind, warmup_steps=20) == 1.0
    assert tau_schedule(100, 100, kind=kind, warmup_steps=20) == 1.0
    assert tau_schedule(20, 100, kind=kind, warmup_steps=20, decay=True) == 1.0
    assert tau_schedule(60, 100, kind=kind, warmup_steps=20, decay=True) == pytest.approx(0.5)
    assert tau_schedule(100, 100, kind=kind, warmup_steps=20, decay=True) == pytest.approx(0.0)
    assert tau_schedule(150, 100, kind=kind, warmup_steps=20, decay=True) == pytest.approx(0.0)


def test_schedule_shapes_differ_and_stay_in_range():
    assert tau_schedule(5, 100, kind="linear", warmup_steps=20) == pytest.approx(0.25)
    assert tau_schedule(5, 100, kind="cosine", warmup_steps=20) < 0.25
    assert tau_schedule(5, 100, kind="constant", warmup_steps=20) == 0.0
    assert tau_schedule(25, 100, kind="constant", warmup_steps=20) == 1.0
    assert tau_schedule(0, 100) == 1.0
    for kind in ("linear", "cosine"):
        values = [tau_schedule(s, 50, kind=kind, warmup_steps=10, decay=True) for s in range(60)]
        assert all(0.0 <= v <= 1.0 for v in values)


@pytest.mark.parametrize("args, kwargs", [
    ((0, 100), {"kind": "exponential"}),
    ((-1, 100), {}),
    ((0, 0), {}),
    ((0, 100), {"warmup_steps": 101}),
    ((0, 100), {"warmup_steps": -1}),
    ((0.5, 100), {}),
    ((0, 100), {"kind": "constant", "decay": True}),
])
def test_schedule_rejects_bad_arguments(args, kwargs):
    with pytest.raises(ValueError):
        tau_schedule(*args, **kwargs)
