"""Batch norm + ReLU (+ 2x2 max-pool) as one op (issue 20): the cpp kernels against the plain
composition, their registration, their input checks, and cochcnn's blocks that use them."""
import pytest
import torch
import torch.nn.functional as F

import topoaudio.ops as ops
from topoaudio.models import build_model
from topoaudio.models.cochcnn import ConvBlock
from topoaudio.ops import reference
from topoaudio.ops.bn_relu_pool import batch_norm_relu_pool, batch_norm_relu_pool_module

CL = torch.channels_last
# odd sizes: the last row / column is in the statistics but in no window
SHAPES = [(3, 5, 7, 9), (2, 4, 6, 8), (1, 24, 11, 13)]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5}


def _inputs(shape, dtype, seed=0, layout=CL):
    generator = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(shape, generator=generator) + 0.5).to(dtype).contiguous(memory_format=layout)
    vector = torch.float64 if dtype == torch.float64 else torch.float32
    weight = torch.randn(shape[1], generator=generator).to(vector)
    bias = torch.randn(shape[1], generator=generator).to(vector)
    return x, weight, bias


def _run(fn, x, weight, bias, pool, grad_seed=1, **kwargs):
    """Output, gradients w.r.t. x, weight, bias, and the running statistics after one call."""
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    running = (torch.zeros(x.shape[1], dtype=weight.dtype), torch.ones(x.shape[1], dtype=weight.dtype))
    out = fn(x, weight, bias, *running, pool=pool, **kwargs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out.dtype)
    out.backward(grad)
    return out.detach(), x.grad, weight.grad, bias.grad, *running


def _relative_error(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _relative_rms(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpp_matches_the_composition(dtype, shape, pool):
    x, weight, bias = _inputs(shape, dtype)
    fused = _run(batch_norm_relu_pool, x, weight, bias, pool, backend="cpp")
    plain = _run(reference.batch_norm_relu_pool, x, weight, bias, pool)
    names = ("out", "grad x", "grad weight", "grad bias", "running mean", "running var")
    for name, a, b in zip(names, fused, plain, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert _relative_error(a, b) < TOLERANCE[dtype], name
    assert fused[0].is_contiguous(memory_format=CL)


@pytest.mark.parametrize("pool", [True, False])
def test_bfloat16_picks_the_same_windows_as_the_composition(pool):
    """In bfloat16 many values of a window tie once rounded; both pick the first of them, so the
    gradient reaches the same positions and agrees to bfloat16's rounding."""
    x, weight, bias = _inputs((4, 8, 10, 12), torch.bfloat16)
    fused = _run(batch_norm_relu_pool, x, weight, bias, pool, backend="cpp")
    plain = _run(reference.batch_norm_relu_pool, x, weight, bias, pool)
    assert torch.equal(fused[0], plain[0])
    assert torch.equal(fused[1] != 0, plain[1] != 0)  # the same positions receive a gradient
    assert _relative_error(fused[1], plain[1]) < 2e-2
    for a, b in zip(fused[2:], plain[2:], strict=True):
        assert _relative_error(a, b) < 1e-4


def test_float32_stays_accurate_at_block1s_size():
    """330,720 values per channel (cochcnn's block1 at batch 16): float32 within 1e-6 of float64,
    output and gradient. The statistics are summed in float64 over fixed chunks; torch's own float32
    batch norm drifts there (~2e-3 relative RMS in the gradient, bench/RESULTS.md)."""
    x, weight, bias = _inputs((16, 24, 106, 195), torch.float32)
    fused = _run(batch_norm_relu_pool, x, weight, bias, True, backend="cpp")
    exact = _run(reference.batch_norm_relu_pool, x.double(), weight.double(), bias.double(), True)
    for a, b in zip(fused[:4], exact[:4], strict=True):
        assert _relative_rms(a, b) < 1e-6


def test_any_input_layout_gives_the_same_result():
    x, weight, bias = _inputs((2, 6, 8, 10), torch.float32)
    channels_last = _run(batch_norm_relu_pool, x, weight, bias, True, backend="cpp")
    contiguous = _run(batch_norm_relu_pool, x.contiguous(), weight, bias, True, backend="cpp")
    for a, b in zip(channels_last, contiguous, strict=True):
        assert torch.equal(a, b)


def test_results_do_not_depend_on_the_thread_count():
    x, weight, bias = _inputs((8, 16, 40, 50), torch.float32)
    previous = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(_run(batch_norm_relu_pool, x, weight, bias, True, backend="cpp"))
    finally:
        torch.set_num_threads(previous)
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)


def test_nan_propagates_as_in_the_composition():
    x, weight, bias = _inputs((2, 3, 4, 4), torch.float32)
    x[0, 1, 2, 3] = float("nan")
    fused = batch_norm_relu_pool(x, weight, bias, pool=True, backend="cpp")
    plain = reference.batch_norm_relu_pool(x, weight, bias, pool=True)
    assert torch.equal(fused.isnan(), plain.isnan())
    assert fused[:, 1].isnan().all() and not fused[:, 0].isnan().any()  # its channel's statistics


def test_a_channel_that_never_fires_gets_only_the_mean_terms():
    """ReLU closed everywhere: no output's gradient reaches the channel, so its input gradient is
    zero (dy = 0 gives mean dy = mean dy xhat = 0), as in the composition."""
    x, weight, bias = _inputs((2, 3, 6, 6), torch.float32)
    bias[1] = -100.0
    fused = _run(batch_norm_relu_pool, x, weight, bias, True, backend="cpp")
    assert torch.equal(fused[1][:, 1], torch.zeros_like(fused[1][:, 1]))
    assert fused[2][1] == 0 and fused[3][1] == 0


def test_evaluation_mode_and_other_devices_take_the_reference():
    x, weight, bias = _inputs((2, 3, 6, 6), torch.float32)
    running = (torch.randn(3), torch.rand(3) + 0.5)
    out = batch_norm_relu_pool(x, weight, bias, *running, training=False, pool=True)
    assert ops.last_backend("batch_norm_relu_pool") == "reference"
    torch.testing.assert_close(out, F.max_pool2d(F.relu(F.batch_norm(x, *running, weight, bias)), 2))
    batch_norm_relu_pool(x, weight, bias, pool=True)
    assert ops.last_backend("batch_norm_relu_pool") == "cpp"
    with pytest.raises(ValueError, match="cpp backend runs training mode"):
        batch_norm_relu_pool(x, weight, bias, *running, training=False, backend="cpp")


def test_a_forced_torch_backend_runs_the_composition():
    """TOPOAUDIO_BACKEND=torch / use_backend("torch") force the other ops' PyTorch backends; here
    that is the composition, so a cochcnn training under it still runs."""
    x, weight, bias = _inputs((2, 3, 6, 6), torch.float32)
    with ops.use_backend("torch"):
        out = batch_norm_relu_pool(x, weight, bias, pool=True)
    assert ops.last_backend("batch_norm_relu_pool") == "torch"
    torch.testing.assert_close(out, reference.batch_norm_relu_pool(x, weight, bias, pool=True))


def test_module_wrapper_follows_batch_norm2d():
    """Running statistics, the batch counter and momentum=None (a cumulative average) as
    nn.BatchNorm2d updates them."""
    x, _, _ = _inputs((4, 5, 6, 8), torch.float32)
    for momentum in (0.1, None):
        fused, plain = (torch.nn.BatchNorm2d(5, momentum=momentum) for _ in range(2))
        for step in range(3):
            batch = x * (step + 1)
            out = batch_norm_relu_pool_module(batch, fused, pool=True, backend="cpp")
            torch.testing.assert_close(out, F.max_pool2d(F.relu(plain(batch)), 2))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(fused, name), getattr(plain, name))


def test_opcheck_on_the_registered_op():
    x, weight, bias = _inputs((2, 3, 6, 8), torch.float64)
    for pool in (True, False):
        torch.library.opcheck(torch.ops.topoaudio.batch_norm_relu_pool.default,
                              (x, weight.requires_grad_(), bias, 1e-5, pool))


def test_float64_gradcheck():
    x, weight, bias = _inputs((2, 3, 5, 6), torch.float64)
    for pool in (True, False):
        assert torch.autograd.gradcheck(
            lambda x, w, b, pool=pool: batch_norm_relu_pool(x, w, b, pool=pool, backend="cpp"),
            (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_()))


def test_torch_compile_fullgraph():
    block = ConvBlock(1, 4, 3, 1, pool=True).train()
    x = torch.randn(2, 1, 10, 12).contiguous(memory_format=CL)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    assert out.shape == (2, 4, 5, 6) and block[1].weight.grad is not None


def test_double_backward_is_refused():
    x, weight, bias = _inputs((2, 3, 4, 4), torch.float64)
    x.requires_grad_()
    out = batch_norm_relu_pool(x, weight, bias, pool=True, backend="cpp")
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


@pytest.mark.parametrize("call, message", [
    (lambda: batch_norm_relu_pool(torch.randn(3, 4, 5), None, None), "4-D tensor"),
    (lambda: batch_norm_relu_pool(torch.randn(2, 4, 5, 5), torch.ones(3), None),
     "weight must be a vector of x's 4 channels"),
    (lambda: batch_norm_relu_pool(torch.randn(2, 4, 5, 5), None, None, torch.zeros(4)),
     "both running_mean and running_var"),
    (lambda: batch_norm_relu_pool(torch.randn(2, 4, 1, 5), None, None, pool=True), "H and W >= 2"),
    (lambda: batch_norm_relu_pool(torch.randn(2, 4, 5, 5).half(), None, None, backend="cpp"),
     "cpp backend runs training mode"),
    (lambda: batch_norm_relu_pool(torch.randn(2, 4, 5, 5), None, None, backend="cuda"),
     "cannot run here"),
])
def test_bad_input_is_refused_by_name(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_cochcnn_blocks_train_alike_fused_or_layer_by_layer():
    """A training step of cochcnn's four blocks with the fused op and with the layers one by one
    (float64, on a real cochleagram): the same features, gradients and running statistics to
    rounding, and the state-dict keys of the plain nn.Sequential blocks."""
    torch.manual_seed(0)
    model = build_model("cochcnn", n_classes=5, frontend="fast").train()
    with torch.no_grad():
        cochleagram = model.frontend(0.1 * torch.randn(3, 40000)).double()
    results = []
    for fused in (True, False):
        copy = build_model("cochcnn", n_classes=5, frontend="fast").train()
        copy.load_state_dict(model.state_dict())
        copy = copy.double().to(memory_format=CL)
        blocks = (copy.block1, copy.block2, copy.block3, copy.block4)
        for block in blocks:
            block.fused = fused
        features = cochleagram
        for block in blocks:
            features = block(features)
        features.square().sum().backward()
        if fused:
            assert ops.last_backend("batch_norm_relu_pool") == "cpp"
        results.append((features.detach(), {n: p.grad for n, p in copy.named_parameters()
                                            if p.grad is not None}, copy.state_dict()))
    (out_a, grads_a, state_a), (out_b, grads_b, state_b) = results
    assert list(state_a) == list(state_b) == list(model.state_dict())
    assert "block1.1.running_mean" in state_a and "block1.0.weight" in state_a
    assert len(grads_a) == 12
    assert _relative_error(out_a, out_b) < 1e-12
    for name in grads_a:
        assert _relative_error(grads_a[name], grads_b[name]) < 1e-10, name
    for name in state_a:
        assert _relative_error(state_a[name], state_b[name]) < 1e-12, name
