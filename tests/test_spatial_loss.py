"""The spatial-correlation loss: every backend against the N x N reference, gradients, the TDANN
formula, determinism, torch.library registration, and bad input."""
import numpy as np
import pytest
import torch

import topoaudio.ops as ops
from topoaudio.ops.spatial_common import has_pair_within
from topoaudio.ops.spatial_loss import morton_order

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (run bench/gpu.sh on one)")
VARIANTS = [("relative", None), ("relative", 1.5), ("absolute", None), ("absolute", 2.5)]
# (N, B): primes, tiny, one above a tile size, one above the 1024-row chunk of the torch backend
SIZES = [(2, 3), (3, 2), (37, 5), (257, 16), (1031, 64)]
# float64 tolerances of the issue: values 1e-6 relative, gradients 1e-4 relative (of the norm);
# float32 paths: 1e-5 and 1e-3. Gradients also get an absolute floor of rounding noise: with two
# samples per unit every r is +-1 and its true gradient is 0, which float32 returns as ~1e-7.
TOLERANCES = {torch.float64: (1e-6, 1e-4), torch.float32: (1e-5, 1e-3)}
GRADIENT_FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6}


def make_inputs(n_units, batch, dtype=torch.float64, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed + n_units)
    features = torch.randn(batch, n_units, generator=generator, dtype=torch.float64)
    positions = torch.rand(n_units, 2, generator=generator, dtype=torch.float64) * 6
    if n_units >= 4:
        features[:, 1] = 2.5  # a dead unit (constant response)
        positions[3] = positions[2]  # two units at one place
    return features.to(dtype).to(device), positions.to(dtype).to(device)


def check_against_reference(backend, n_units, batch, kind, radius, dtype=torch.float64, device="cpu"):
    features, positions = make_inputs(n_units, batch, dtype, device)
    value_tol, grad_tol = TOLERANCES[dtype]
    x = features.clone().requires_grad_(True)
    x_ref = features.double().clone().requires_grad_(True)
    loss = ops.spatial_loss(x, positions, kind=kind, radius=radius, backend=backend)
    assert ops.last_backend("spatial_loss") == backend
    expected = ops.reference.spatial_loss(x_ref, positions.double(), kind=kind, radius=radius)
    assert loss.dtype == dtype and loss.dim() == 0
    assert abs(loss.item() - expected.item()) <= value_tol * abs(expected.item())
    loss.backward()
    expected.backward()
    assert torch.isfinite(x.grad).all()
    error = (x.grad.double() - x_ref.grad).norm()
    assert error <= grad_tol * x_ref.grad.norm() + GRADIENT_FLOOR[dtype], (error, x_ref.grad.norm())


def radius_for(n_units, radius):
    # two random units rarely lie within 1.5 mm of each other: keep small sets meaningful
    return None if radius is None else (radius if n_units > 3 else 10.0)


@pytest.mark.parametrize("kind, radius", VARIANTS)
@pytest.mark.parametrize("n_units, batch", SIZES)
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_cpu_backends_match_reference_float64(backend, n_units, batch, kind, radius):
    check_against_reference(backend, n_units, batch, kind, radius_for(n_units, radius))


@pytest.mark.parametrize("kind, radius", VARIANTS)
@pytest.mark.parametrize("n_units, batch", SIZES[:4] + [(150, 130)])  # 130: batch chunks + tail
def test_triton_interpreter_matches_reference_float64(n_units, batch, kind, radius):
    check_against_reference("triton", n_units, batch, kind, radius_for(n_units, radius))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_weighted_sum_split_columns_add_up(dtype):
    # small sheets split W's column loop over programs; every split count gives the same sums
    from topoaudio.kernels import spatial_loss as triton_kernels

    from topoaudio.ops import spatial_torch
    from topoaudio.ops.spatial_common import unit_vectors

    device = "cuda" if CUDA else "cpu"
    features, positions = make_inputs(200, 40, dtype, device)
    z, _ = unit_vectors(features, 1e-6)
    expected = spatial_torch.weighted_sum(z.double().cpu(), positions.double().cpu())
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    for splits in (1, 2, 3, 4):
        got = triton_kernels.weighted_sum(z, positions, config=dict(BLOCK_J=32), splits=splits)
        for value, reference in zip(got, expected, strict=True):
            assert value.shape == reference.shape
            error = (value.double().cpu() - reference).abs().max() / reference.abs().max()
            assert error <= tolerance, (splits, error)


def test_spatial_loss_prefers_triton_on_gpus():
    backends = ops.available_backends("cuda", "spatial_loss")
    assert backends[0] == "triton" and backends[-1] == "reference"
    assert ops.available_backends("cuda")[0] in ("cuda", "triton")


@pytest.mark.parametrize("kind, radius", VARIANTS)
@pytest.mark.parametrize("backend", ["cpp", "torch", "triton"])
def test_float32_paths_match_reference(backend, kind, radius):
    check_against_reference(backend, 257, 32, kind, radius, dtype=torch.float32)


@pytest.mark.parametrize("kind, radius", VARIANTS)
@pytest.mark.parametrize("n_units, batch", SIZES[:3])
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_float32_tiny_sets_match_reference(backend, n_units, batch, kind, radius):
    # (3, 2): every r is exactly 1, so the correlation is undefined (loss 1/2) however rounding
    # scatters r; the reference once returned a correlation of that noise (found on a GPU run)
    check_against_reference(backend, n_units, batch, kind, radius_for(n_units, radius), torch.float32)


@needs_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_backends_match_reference(backend, dtype):
    for n_units, batch in SIZES + [(4099, 200)]:
        for kind, radius in VARIANTS:
            check_against_reference(backend, n_units, batch, kind, radius_for(n_units, radius),
                                    dtype, "cuda")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_features_accumulate_in_float32(dtype):
    features, positions = make_inputs(100, 16, torch.float32)
    loss = ops.spatial_loss(features.to(dtype), positions)
    assert loss.dtype == torch.float32
    expected = ops.reference.spatial_loss(features.to(dtype).double(), positions.double())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("kind, radius", VARIANTS)
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_float64_gradcheck(backend, kind, radius):
    features, positions = make_inputs(9, 5)
    features.requires_grad_(True)
    fn = lambda x: ops.spatial_loss(x, positions, kind=kind, radius=radius, backend=backend)
    assert torch.autograd.gradcheck(fn, (features,), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("kind, radius", VARIANTS)
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_repeated_calls_are_bitwise_identical(backend, kind, radius):
    features, positions = make_inputs(1031, 32, torch.float32)
    results = []
    for _ in range(2):
        x = features.clone().requires_grad_(True)
        loss = ops.spatial_loss(x, positions, kind=kind, radius=radius, backend=backend)
        loss.backward()
        results.append((loss.item(), x.grad))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])


def tdann_spatial_loss(features: np.ndarray, positions: np.ndarray) -> float:
    """TDANN's relative spatial loss written as its paper describes it (Margalit et al. 2024):
    correlation matrix of the responses, inverse distances, upper triangles, Pearson."""
    corr = np.corrcoef(features.T)
    dist = np.sqrt(((positions[:, None, :] - positions[None, :, :]) ** 2).sum(-1))
    upper = np.triu_indices(len(positions), k=1)
    similarity = 1.0 / (dist[upper] + 1.0)
    return (1.0 - np.corrcoef(corr[upper], similarity)[0, 1]) / 2.0


def test_equals_tdann_formula_on_a_500_unit_neighbourhood():
    generator = torch.Generator().manual_seed(5)
    n_units, batch = 4000, 48
    positions = torch.rand(n_units, 2, generator=generator, dtype=torch.float64) * 20
    # smooth responses: nearby units correlate, as in a trained topographic layer
    basis = torch.randn(batch, 16, generator=generator, dtype=torch.float64)
    features = basis @ torch.cos(positions[:, :1].t() * torch.arange(1, 17).double()[:, None] / 4)
    features += 0.5 * torch.randn(batch, n_units, generator=generator, dtype=torch.float64)
    centre = positions[0]
    neighbourhood = torch.argsort((positions - centre).norm(dim=1))[:500]
    ours = ops.spatial_loss(features[:, neighbourhood], positions[neighbourhood])
    theirs = tdann_spatial_loss(features[:, neighbourhood].numpy(), positions[neighbourhood].numpy())
    assert ours.item() == pytest.approx(theirs, rel=1e-9)
    assert ours.item() < 0.45  # the planted smoothness is visible


def test_opcheck_on_the_registered_op():
    features, positions = make_inputs(40, 6)
    from topoaudio.ops.spatial_common import unit_vectors

    z, _ = unit_vectors(features, 1e-6)
    for all_pairs, radius in [(True, float("inf")), (False, 2.0)]:
        args = (z.clone().requires_grad_(True), positions, radius, all_pairs, "cpp")
        torch.library.opcheck(torch.ops.topoaudio.spatial_pair_sums.default, args)


@needs_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_opcheck_on_cuda(backend):
    features, positions = make_inputs(40, 6, device="cuda")
    from topoaudio.ops.spatial_common import unit_vectors

    z, _ = unit_vectors(features, 1e-6)
    for all_pairs, radius in [(True, float("inf")), (False, 2.0)]:
        args = (z.clone().requires_grad_(True), positions, radius, all_pairs, backend)
        torch.library.opcheck(torch.ops.topoaudio.spatial_pair_sums.default, args)


def test_module_form_reads_a_sheet():
    class Sheet:
        positions = torch.rand(50, 2)

        def responses(self, activations):
            return activations.mean(dim=-1)

    module = ops.SpatialLoss(Sheet(), weight=0.25)
    activations = torch.randn(8, 50, 7)
    expected = 0.25 * ops.spatial_loss(activations.mean(dim=-1), Sheet.positions)
    assert module(activations).item() == pytest.approx(expected.item(), rel=1e-6)


def test_morton_order_is_a_permutation_that_groups_neighbours():
    positions = torch.rand(4096, 2) * 10
    order = morton_order(positions)
    assert torch.equal(torch.sort(order).values, torch.arange(4096))
    step = (positions[order][1:] - positions[order][:-1]).norm(dim=1).median()
    random_step = (positions[1:] - positions[:-1]).norm(dim=1).median()
    assert step < random_step / 5


def test_has_pair_within_agrees_with_brute_force():
    generator = torch.Generator().manual_seed(1)
    for trial in range(30):
        positions = torch.rand(40, 2, generator=generator, dtype=torch.float64) * 10
        nearest = torch.cdist(positions, positions).fill_diagonal_(float("inf")).min()
        for radius in (nearest.item() * 0.999, nearest.item() * 1.001):
            assert has_pair_within(positions, radius) == (radius >= nearest.item()), trial


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("features, positions, kwargs, message", [
    (torch.randn(4, 1), torch.zeros(1, 2), {}, "at least 2 units"),
    (torch.randn(4, 5), torch.zeros(5, 3), {}, r"positions must be \[N, 2\]"),
    (torch.randn(4, 5), torch.zeros(6, 2), {}, "5 units but positions has 6 rows"),
    (torch.randn(1, 5), torch.rand(5, 2), {}, "batch size is 1"),
    (torch.randn(5), torch.rand(5, 2), {}, r"features must be \[B, N\]"),
    (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), torch.rand(2, 2), {}, "NaN or Inf"),
    (torch.randn(3, 2), torch.tensor([[0.0, 0.0], [float("inf"), 1.0]]), {}, "positions contain"),
    (torch.randn(3, 4), torch.rand(4, 2), {"radius": 0.0}, "radius must be a positive"),
    (torch.randn(3, 4), torch.rand(4, 2), {"radius": -1.0}, "radius must be a positive"),
    (torch.randn(3, 4), torch.tensor([[0.0, 0], [5, 0], [0, 5], [5, 5]]), {"radius": 1.0},
     "no pair of units lies within radius 1.0"),
    (torch.randn(3, 4), torch.rand(4, 2), {"kind": "squared"}, "kind must be one of"),
    (torch.randn(3, 4), torch.rand(4, 2, device="meta"), {}, "on cpu but positions on meta"),
    (torch.randint(0, 3, (3, 4)), torch.rand(4, 2), {}, "floating point"),
])
def test_bad_input_is_rejected(features, positions, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ops.spatial_loss(features, positions, **kwargs)


# --- host cost (issue 10) ----------------------------------------------------------------------

# aten calls of one forward+backward at N = 64, B = 16 on the CPU (all pairs, the default kind):
# 552 before issue 10, 146 after, 133 since the unit vectors stay by batch column (issue 14), 23
# since the cpp backend's forward and backward are one C++ call each (issue 23: the outputs'
# allocations, the loss tensor, autograd's seed and accumulation, the sheet cache's comparisons).
# The tiled kinds take as many. A count, not a time: deterministic for a given torch, so a unit
# test; the time is bench/test_host_cost.py's.
CPP_HOST_COST_ATEN_CALLS = 23
# tests/test_spatial_lattice.py bounds a forced lattice call by HOST_COST_ATEN_CALLS + 40 (the
# cpp count plus the FFTs' padding and views, when the cpp count was 133). The lattice call now
# takes 108 (174 before issue 23), 85 above the cpp backend's 23: until that margin follows, this
# keeps the lattice's bound at its present count.
HOST_COST_ATEN_CALLS = 108 - 40


def count_aten_calls(fn) -> int:
    """aten:: events (nested ones included, as the profiler lists them) of one call of fn."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for event in prof.events() if event.name.startswith("aten::"))


def host_cost_step(n_units=64, batch=16, backend="cpp", **kwargs):
    """One forward+backward at the issue's small size, as the benchmark times it."""
    generator = torch.Generator().manual_seed(10)
    features = torch.randn(batch, n_units, generator=generator).requires_grad_(True)
    positions = torch.rand(n_units, 2, generator=generator) * 4

    def step():
        features.grad = None
        ops.spatial_loss(features, positions, backend=backend, **kwargs).backward()
    return step


@pytest.mark.parametrize("kind, radius", [("relative", None), ("relative", 1.0), ("absolute", None)])
def test_small_sheet_forward_backward_stays_within_the_aten_call_budget(kind, radius):
    step = host_cost_step(kind=kind, radius=radius)
    step()  # per-sheet constants are made on the first call; the count is of a later one
    assert count_aten_calls(step) <= CPP_HOST_COST_ATEN_CALLS


def test_sheet_constants_follow_in_place_changes_of_positions():
    features, positions = make_inputs(40, 6)
    for kind, radius in VARIANTS:
        ops.spatial_loss(features, positions, kind=kind, radius=radius, backend="cpp")  # cached
        moved = positions.clone()
        positions.mul_(1.7)  # in place: same tensor, new version
        ours = ops.spatial_loss(features, positions, kind=kind, radius=radius, backend="cpp")
        expected = ops.reference.spatial_loss(features, positions, kind=kind, radius=radius)
        assert ours.item() == pytest.approx(expected.item(), rel=1e-9), (kind, radius)
        positions.copy_(moved)
    far = torch.arange(40, dtype=torch.float64)[:, None] * torch.tensor([0.4, 0.0], dtype=torch.float64)
    ops.spatial_loss(features, far, radius=0.5, backend="cpp")  # neighbours 0.4 mm apart
    far.mul_(10.0)  # now 4 mm: no pair lies within the radius, and the cached check must not say so
    with pytest.raises(ValueError, match="no pair of units lies within radius"):
        ops.spatial_loss(features, far, radius=0.5, backend="cpp")
    bad = positions.clone()
    ops.spatial_loss(features, bad, backend="cpp")
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="positions contain 1 NaN"):
        ops.spatial_loss(features, bad, backend="cpp")
