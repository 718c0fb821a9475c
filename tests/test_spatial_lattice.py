"""The lattice path of the spatial loss (issue 14): detection, the FFT W z against the tiles, loss
and gradient against the tiled path and the float64 reference, fallbacks, what last_backend says,
and the host cost of a cached lattice."""
import pytest
import torch

import topoaudio.ops as ops
from topoaudio.ops import spatial_lattice, spatial_torch
from topoaudio.ops.spatial_common import SHEET_CACHE, unit_vectors
from topoaudio.ops.spatial_lattice import NotOnLattice, detect, lattice_of

CUDA = torch.cuda.is_available()
# float32: the FFT's rounding is relative to the largest output, not to each entry (tiles: to each
# sum). Measured max |error| / max |W z| <= 3.6e-7 for N = 37 ... 16,384 (the torch tiles in
# float32: <= 7e-7 on the same inputs); asserted with margin.
WZ_REL_TOL = {torch.float64: 1e-12, torch.float32: 2e-6}
# loss value (relative) and gradient (relative to the norm, plus a floor of float32 noise): the
# tolerances tests/test_spatial_loss.py asserts for every fused path
TOLERANCES = {torch.float64: (1e-9, 1e-7, 1e-14), torch.float32: (1e-5, 1e-3, 1e-6)}


def lattice_inputs(n_units, batch, spacing=(0.05, 0.05), extent=(40, 30), origin=(0.3, -1.1),
                   dtype=torch.float32, seed=0):
    """features [B, N]; positions on a lattice (indices random, so sites repeat), built in float64
    and rounded once to dtype as a sheet's are; the integer indices [N, 2]."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randint(0, extent[0], (n_units,), generator=generator),
                         torch.randint(0, extent[1], (n_units,), generator=generator)], dim=1)
    index[0], index[-1] = torch.tensor([0, 0]), torch.tensor([extent[0] - 1, extent[1] - 1])
    positions = index.double() * torch.tensor(spacing, dtype=torch.float64)
    positions += torch.tensor(origin, dtype=torch.float64)
    features = torch.randn(batch, n_units, generator=generator, dtype=torch.float64)
    return features.to(dtype), positions.to(dtype), index


# --- detection ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spacing", [(0.05, 0.05), (0.25, 0.1), (0.013, 0.7)])
def test_detects_the_lattice_and_each_unit_site(dtype, spacing):
    _, positions, index = lattice_inputs(500, 4, spacing, dtype=dtype)
    lattice = detect(positions)
    assert lattice.shape == (40, 30)
    assert lattice.spacing == pytest.approx(spacing, rel=1e-6)
    assert lattice.origin == pytest.approx((0.3, -1.1), rel=1e-6)
    assert torch.equal(lattice.site, index[:, 0] * 30 + index[:, 1])
    assert all(p >= 2 * g - 1 for p, g in zip(lattice.padded, lattice.shape, strict=True))


def test_units_sharing_sites_are_counted_and_duplicates_kept():
    _, positions, index = lattice_inputs(2000, 4, extent=(5, 4))  # 2000 units on 20 sites
    lattice = detect(positions)
    assert lattice.shape == (5, 4) and lattice.n_units == 2000
    w_rows, _ = lattice.row_sums(torch.float64, torch.device("cpu"))
    # a unit's row of W holds every other unit on its own site at w = 1 (not itself: W's diagonal
    # is 0, the tiles' contract)
    d = torch.cdist(positions.double(), positions.double())
    assert torch.allclose(w_rows, (1 / (1 + d)).sum(dim=1) - 1, rtol=1e-6)
    z, _ = unit_vectors(torch.randn(8, 2000, dtype=torch.float64), 1e-6)
    expected = spatial_torch.weighted_sum(z, positions.double())
    for value, reference in zip(lattice.weighted_sum(z), expected, strict=True):
        # (float32 positions: the fitted spacing differs from them by their rounding)
        assert (value - reference).abs().max() <= 1e-6 * reference.abs().max()


def test_jitter_below_float32_rounding_is_on_the_lattice_and_above_it_is_not():
    _, positions, _ = lattice_inputs(400, 4)
    generator = torch.Generator().manual_seed(1)
    eps = torch.finfo(torch.float32).eps
    relative = (torch.rand(positions.shape, generator=generator) * 2 - 1) * eps
    jittered = positions * (1 + relative)
    assert torch.equal(detect(jittered).site, detect(positions).site)
    with pytest.raises(NotOnLattice, match="on no lattice"):
        detect(positions + torch.rand(positions.shape, generator=generator) * 1e-4)


def test_sparse_samples_find_a_coarser_lattice_that_still_holds_every_unit():
    # only even indices and a gap of 3 steps: the coarsest lattice is twice the spacing
    positions = torch.tensor([[0.0, 0.0], [0.2, 0.0], [0.6, 0.1], [0.1, 0.3]], dtype=torch.float64)
    lattice = detect(positions)
    assert lattice.spacing == pytest.approx((0.1, 0.1))
    assert lattice.shape == (7, 4)


def test_random_positions_and_a_grid_over_budget_are_refused(monkeypatch):
    assert isinstance(lattice_of(torch.rand(300, 2) * 10), NotOnLattice)
    _, positions, _ = lattice_inputs(200, 4)
    monkeypatch.setattr(spatial_lattice, "MAX_PADDED_SITES", 1000)  # the lattice needs 80 x 60
    with pytest.raises(NotOnLattice, match="on no lattice"):
        detect(positions)


def test_a_line_of_units_is_a_one_row_lattice():
    positions = torch.stack([torch.arange(50) * 0.05, torch.full((50,), 2.0)], dim=1)
    assert detect(positions).shape == (50, 1)


# --- W z ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n_units, extent", [(37, (9, 13)), (600, (40, 30)), (3000, (17, 50))])
def test_weighted_sum_equals_the_tiles(dtype, n_units, extent, monkeypatch):
    if n_units == 600:  # batch columns in chunks of 5 (float64) or 10 (float32), with a tail
        for name in ("CHUNK_BYTES", "CPU_CHUNK_BYTES"):  # (the CPU's chunks run on threads)
            monkeypatch.setattr(spatial_lattice, name, 80 * 60 * 2 * 8 * 5)
    features, positions, _ = lattice_inputs(n_units, 24, extent=extent, dtype=dtype)
    z, _ = unit_vectors(features, 1e-6)
    got = detect(positions).weighted_sum(z)
    expected = spatial_torch.weighted_sum(z.double(), positions.double())
    for value, reference in zip(got, expected, strict=True):
        assert value.dtype == dtype and value.shape == reference.shape
        error = (value.double() - reference).abs().max() / reference.abs().max()
        assert error <= WZ_REL_TOL[dtype], error


def chunked_and_whole(monkeypatch, zt, lattice, chunk_columns):
    """W z of zt [B, N] with the CPU's batch in chunks of chunk_columns, and in one transform."""
    column_bytes = lattice.padded_sites * 2 * zt.element_size()
    monkeypatch.setattr(spatial_lattice, "CPU_CHUNK_BYTES", column_bytes * chunk_columns)
    chunked = lattice.weighted_sum_by_column(zt)[0]
    monkeypatch.setattr(spatial_lattice, "CPU_CHUNK_BYTES", column_bytes * zt.shape[0])
    return chunked, lattice.weighted_sum_by_column(zt)[0]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_chunks_on_threads_give_the_whole_batch_result_bitwise(monkeypatch, threads):
    features, positions, _ = lattice_inputs(900, 23, extent=(31, 47))
    zt = unit_vectors(features, 1e-6)[0].t().contiguous()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:  # chunks of 4 columns with a tail of 3, spread over the threads
        chunked, whole = chunked_and_whole(monkeypatch, zt, detect(positions), 4)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(chunked, whole)


def _squares_on_the_pool(queue):
    out = [0] * 8
    spatial_lattice._run_in_parallel(lambda i: out.__setitem__(i, i * i), list(range(8)))
    queue.put((sum(out), id(spatial_lattice._POOL[2])))


def test_a_forked_child_makes_its_own_thread_pool():
    # the parent's pool threads do not exist in a fork: a child that used the parent's pool object
    # would queue its chunks for threads that never run them and wait forever. (Torch ops in a
    # forked child need torch.set_num_threads(1) anyway, as DataLoader workers set: OpenMP is not
    # fork-safe; here the jobs are plain Python.)
    import multiprocessing

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spatial_lattice._run_in_parallel(lambda i: None, list(range(4)))  # the parent's pool
        parent_pool = spatial_lattice._POOL[2]
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_squares_on_the_pool, args=(queue,))
        child.start()
        child.join(timeout=60)
    finally:
        torch.set_num_threads(before)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child waited on the parent's thread pool")
    assert child.exitcode == 0
    total, child_pool = queue.get(timeout=5)
    assert total == sum(i * i for i in range(8))
    assert child_pool != id(parent_pool)  # (a fork keeps addresses: the same id is the same pool)


# --- the loss ----------------------------------------------------------------------------------

def check_loss(features, positions, backend, dtype):
    value_tol, grad_tol, grad_floor = TOLERANCES[dtype]
    results = {}
    for lattice in (True, False):
        x = features.clone().requires_grad_(True)
        loss = ops.spatial_loss(x, positions, backend=backend, lattice=lattice)
        assert ops.last_backend("spatial_loss") == backend + ("+lattice" if lattice else "")
        loss.backward()
        results[lattice] = (loss, x.grad)
    x_ref = features.double().clone().requires_grad_(True)
    expected = ops.reference.spatial_loss(x_ref, positions.double())
    expected.backward()
    for loss, grad in list(results.values()):
        assert loss.dtype == dtype
        assert abs(loss.item() - expected.item()) <= value_tol * abs(expected.item())
        error = (grad.double() - x_ref.grad).norm()
        assert error <= grad_tol * x_ref.grad.norm() + grad_floor, (error, x_ref.grad.norm())
    # lattice against tiles: as close as either is to the reference
    (lattice_loss, lattice_grad), (tiled_loss, tiled_grad) = results[True], results[False]
    assert abs(lattice_loss.item() - tiled_loss.item()) <= value_tol * abs(expected.item())
    assert (lattice_grad - tiled_grad).double().norm() <= grad_tol * x_ref.grad.norm() + grad_floor


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("n_units, batch", [(2, 3), (37, 5), (700, 32)])
def test_loss_and_gradient_match_tiles_and_reference(backend, dtype, n_units, batch):
    features, positions, _ = lattice_inputs(n_units, batch, dtype=dtype)
    if n_units >= 4:
        features[:, 1] = 2.5  # a dead unit
    check_loss(features, positions, backend, dtype)


def test_float64_gradcheck_through_the_lattice():
    features, positions, _ = lattice_inputs(9, 5, extent=(4, 3), dtype=torch.float64)
    features.requires_grad_(True)
    fn = lambda x: ops.spatial_loss(x, positions, lattice=True)
    assert torch.autograd.gradcheck(fn, (features,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_registered_op_uses_the_lattice_and_passes_opcheck():
    features, positions, _ = lattice_inputs(40, 6, extent=(8, 6), dtype=torch.float64)
    z, _ = unit_vectors(features, 1e-6)
    op = torch.ops.topoaudio.spatial_pair_sums.default
    tiled, tiled_wz = op(z, positions, float("inf"), True, "cpp", False)
    lattice, lattice_wz = op(z, positions, float("inf"), True, "cpp", True)
    assert torch.allclose(lattice, tiled, rtol=1e-12) and torch.allclose(lattice_wz, tiled_wz)
    args = (z.clone().requires_grad_(True), positions, float("inf"), True, "cpp", True)
    torch.library.opcheck(op, args)
    with pytest.raises(ValueError, match="lattice=True: positions are on no lattice"):
        op(z, torch.rand(40, 2, dtype=torch.float64), float("inf"), True, "cpp", True)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_lattice_matches_reference(dtype):
    features, positions, _ = lattice_inputs(3000, 64, extent=(60, 50), dtype=dtype)
    backend = ops.available_backends("cuda", "spatial_loss")[0]
    check_loss(features.cuda(), positions.cuda(), backend, dtype)


# --- when the lattice runs ---------------------------------------------------------------------

def test_auto_takes_the_lattice_where_the_cost_model_expects_it_to_win():
    features, positions, _ = lattice_inputs(3000, 8, extent=(20, 20))
    ops.spatial_loss(features, positions)
    assert ops.last_backend("spatial_loss") == "cpp+lattice"
    # 40 units on a 200 x 200 grid: the N^2 tiles are cheaper than the FFT of the padded grid
    features, positions, _ = lattice_inputs(40, 8, extent=(200, 200))
    ops.spatial_loss(features, positions)
    assert ops.last_backend("spatial_loss") == "cpp"
    ops.spatial_loss(features, positions, lattice=True)
    assert ops.last_backend("spatial_loss") == "cpp+lattice"


def test_off_lattice_and_over_budget_keep_the_tiles(monkeypatch):
    features = torch.randn(8, 3000)
    positions = torch.rand(3000, 2) * 10
    ops.spatial_loss(features, positions)
    assert ops.last_backend("spatial_loss") == "cpp"
    with pytest.raises(ValueError, match="lattice=True: positions are on no lattice"):
        ops.spatial_loss(features, positions, lattice=True)
    features, positions, _ = lattice_inputs(3000, 8, extent=(20, 20))
    monkeypatch.setattr(spatial_lattice, "MAX_PADDED_SITES", 100)
    SHEET_CACHE.clear()  # detection is cached per tensor: forget the earlier answers
    ops.spatial_loss(features, positions)
    assert ops.last_backend("spatial_loss") == "cpp"
    with pytest.raises(ValueError, match="on no lattice"):
        ops.spatial_loss(features, positions, lattice=True)
    SHEET_CACHE.clear()


def test_lattice_false_radius_and_absolute_keep_the_tiles():
    features, positions, _ = lattice_inputs(3000, 8, extent=(20, 20))
    ops.spatial_loss(features, positions, lattice=False)
    assert ops.last_backend("spatial_loss") == "cpp"
    for kwargs in ({"radius": 1.0}, {"kind": "absolute"}):
        ops.spatial_loss(features[:, :300], positions[:300], **kwargs)
        assert ops.last_backend("spatial_loss") == "cpp"
        with pytest.raises(ValueError, match="lattice=True runs only the all-pairs relative"):
            ops.spatial_loss(features, positions, lattice=True, **kwargs)
    with pytest.raises(ValueError, match="lattice must be None"):
        ops.spatial_loss(features, positions, lattice=1)


def test_detection_is_cached_and_follows_in_place_changes(monkeypatch):
    features, positions, _ = lattice_inputs(300, 8, dtype=torch.float64)
    calls = []
    real_detect = spatial_lattice.detect
    monkeypatch.setattr(spatial_lattice, "detect", lambda p: calls.append(1) or real_detect(p))
    for _ in range(3):
        ops.spatial_loss(features, positions, lattice=True)
    assert len(calls) == 1
    positions.mul_(1.7)  # still a lattice, another spacing
    ours = ops.spatial_loss(features, positions, lattice=True)
    assert len(calls) == 2
    expected = ops.reference.spatial_loss(features, positions)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-9)


def test_small_lattice_forward_backward_host_cost_stays_flat():
    from test_spatial_loss import HOST_COST_ATEN_CALLS, count_aten_calls

    generator = torch.Generator().manual_seed(10)
    features = torch.randn(16, 64, generator=generator).requires_grad_(True)
    positions = torch.randint(0, 8, (64, 2), generator=generator).float() * 0.5

    def step():
        features.grad = None
        ops.spatial_loss(features, positions, lattice=True).backward()

    step()  # the lattice and its spectra are made on the first call
    counts = [count_aten_calls(step) for _ in range(2)]
    assert counts[0] == counts[1]
    # scatter, four pruned FFTs (each with its padding, views and copies), the product, gather:
    # 33 calls more than the cpp kernel's one (166 measured, 133 tiled); auto never takes the
    # lattice at this size (the cost model prefers the tiles)
    assert counts[0] <= HOST_COST_ATEN_CALLS + 40, counts


def test_module_form_passes_the_option_and_keeps_one_positions_tensor(monkeypatch):
    from topoaudio.sheet import channel_freq_sheet

    sheet = channel_freq_sheet("s", 8, 6, size_mm=1.0)  # 48 units on a 0.05 mm lattice
    calls = []
    real_detect = spatial_lattice.detect
    monkeypatch.setattr(spatial_lattice, "detect", lambda p: calls.append(1) or real_detect(p))
    module = ops.SpatialLoss(sheet, lattice=True)
    activations = torch.randn(5, 8, 6, 3, generator=torch.Generator().manual_seed(2))
    values = [module(activations) for _ in range(3)]
    assert ops.last_backend("spatial_loss") == "cpp+lattice" and len(calls) == 1
    expected = ops.spatial_loss(sheet.responses(activations), sheet.positions, lattice=False)
    assert values[-1].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="lattice must be None"):
        ops.SpatialLoss(sheet, lattice="auto")


def test_repeated_lattice_calls_are_bitwise_identical():
    features, positions, _ = lattice_inputs(3000, 16, extent=(20, 20))  # ~7 units per site
    results = []
    for _ in range(2):
        x = features.clone().requires_grad_(True)
        loss = ops.spatial_loss(x, positions, lattice=True)
        loss.backward()
        results.append((loss.item(), x.grad))
    assert results[0][0] == results[1][0] and torch.equal(results[0][1], results[1][1])
