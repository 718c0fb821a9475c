"""The cochleagram op: golden fixtures, every backend against the reference, gradients, shapes,
torch.library registration, and bad input."""
import numpy as np
import pytest
import torch

import topoaudio.ops as ops
from topoaudio.ops import dispatch
from topoaudio.ops.cochlear_filters import (
    CochleagramConfig,
    channel_center_freqs,
    erb_cosine_filters,
    filters_on,
)

CUDA = torch.cuda.is_available()
# Backends that can run on this machine, with the device they run on. Triton runs on CPU tensors
# under the interpreter (conftest sets TRITON_INTERPRET=1 without a GPU).
CPU_BACKENDS = ["cpp", "torch", "triton"]
CUDA_BACKENDS = ["cuda", "triton", "torch"]
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (run bench/gpu.sh on one)")

# A short configuration the Triton interpreter and gradcheck handle in seconds: 13 channels,
# stride 10, 41-tap window.
SMALL = dict(sr=4000, n=4, sample_factor=2, low_lim=100.0, high_lim=1800.0, env_sr=400,
             window_size=41)
# Fixture tolerances (tests/fixtures/README.md): compressed max |diff|, envelope rel. L2,
# gradient rel. L2.
OUT_ATOL, ENV_RTOL, GRAD_RTOL = 5e-5, 1e-4, 1e-3


def rel_l2(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# The chirp (clip 2) has an ill-conditioned float32 gradient: far from the chirp's instantaneous
# frequency a subband's magnitude is ~1e-9 of the signal, so its phase, and d|z|/dz = z/|z| with
# it, is float32 rounding noise. The exact (float64) gradient differs from the float32 fixture by
# 2.3 % on that clip (1e-6 on the others). A float32 CPU run matches the fixture to 2e-7 because it
# rounds like the original (same FFT library); a GPU (cuFFT) rounds differently and lands 1.5 % off.
# Off the original's CPU path the chirp's gradient is therefore checked against float64, at 5 %.
ILL_CONDITIONED_CLIPS = [2]
CHIRP_FLOAT64_RTOL = 5e-2


def check_fixture(fixture, backend, device, clips):
    waveforms = torch.tensor(fixture["waveforms"][clips], dtype=torch.float32, device=device)
    waveforms.requires_grad_(True)
    out = ops.cochleagram(waveforms, backend=backend)
    assert ops.last_backend("cochleagram") == backend
    assert np.abs(out.detach().cpu().numpy() - fixture["cochleagram"][clips]).max() <= OUT_ATOL
    weights = torch.tensor(fixture["grad_weights"][clips], device=device)
    (grad,) = torch.autograd.grad((out * weights).sum(), waveforms)
    envelopes = ops.cochleagram(waveforms.detach(), compression=None, backend=backend)
    assert rel_l2(envelopes.cpu(), fixture["envelopes_downsampled"][clips]) <= ENV_RTOL
    if device == "cpu":
        assert rel_l2(grad.cpu(), fixture["grad_waveforms"][clips]) <= GRAD_RTOL
        return
    indices = range(len(fixture["waveforms"]))[clips]
    for row, index in enumerate(indices):
        if index not in ILL_CONDITIONED_CLIPS:
            assert rel_l2(grad[row].cpu(), fixture["grad_waveforms"][index]) <= GRAD_RTOL, index
            continue
        exact = torch.tensor(fixture["waveforms"][index], dtype=torch.float64).requires_grad_(True)
        (grad_exact,) = torch.autograd.grad(
            (ops.cochleagram(exact, backend="reference") * weights[row].cpu().double()).sum(), exact)
        assert rel_l2(grad[row].cpu(), grad_exact) <= CHIRP_FLOAT64_RTOL, index


# --- the filters -------------------------------------------------------------------------------

def test_filter_bank_shape_and_power_partition():
    config = CochleagramConfig()
    filters = erb_cosine_filters(config, 40000)
    assert filters.shape == (211, 20001) == (config.n_channels, 40000 // 2 + 1)
    # squared responses sum to 1 / sample_factor * sample_factor = 1 at every frequency
    np.testing.assert_allclose((filters ** 2).sum(0) * 1.0, 1.0, atol=1e-9)
    assert config.n_frames(40000) == 390


def test_centre_frequencies_span_the_band():
    freqs = channel_center_freqs(CochleagramConfig())
    assert len(freqs) == 211 and np.all(np.diff(freqs) > 0)
    assert freqs[4] > 50 and freqs[-5] < 10000


def test_filters_are_built_once_per_device_and_dtype():
    config = CochleagramConfig(**SMALL)
    first = filters_on(config, 300, torch.device("cpu"), torch.float32)
    assert filters_on(config, 300, torch.device("cpu"), torch.float32)[0] is first[0]
    assert filters_on(config, 300, torch.device("cpu"), torch.float64)[0].dtype == torch.float64


# --- golden fixtures ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "torch", "cpp"])
def test_matches_golden_fixture_on_cpu(cochleagram_fixture, backend):
    check_fixture(cochleagram_fixture, backend, "cpu", slice(0, 4))


@pytest.mark.slow
def test_triton_interpreter_matches_golden_fixture(cochleagram_fixture):
    # One clip: the interpreter pays per program, and a full clip is 211 x 25 programs.
    check_fixture(cochleagram_fixture, "triton", "cpu", slice(1, 2))


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_matches_the_originals_example_clip(cochleagram_fixture, backend):
    waveform = torch.tensor(cochleagram_fixture["example_waveform"], dtype=torch.float32)
    out = ops.cochleagram(waveform, backend=backend).numpy()
    assert np.abs(out - cochleagram_fixture["example_cochleagram"]).max() <= OUT_ATOL


@needs_cuda
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_matches_golden_fixture_on_cuda(cochleagram_fixture, backend):
    check_fixture(cochleagram_fixture, backend, "cuda", slice(0, 4))


# --- every backend against the reference on odd shapes -----------------------------------------

SHAPES = [(257,), (3, 301), (2, 3, 263), (1, 1, 240)]


def compare_with_reference(backend, device, shape, compression="power", dtype=torch.float32):
    torch.manual_seed(sum(shape))
    waveform = (0.1 * torch.randn(shape, dtype=dtype, device=device)).requires_grad_(True)
    out = ops.cochleagram(waveform, compression=compression, backend=backend, **SMALL)
    ref = ops.reference.cochleagram(waveform, compression=compression, **SMALL)
    assert out.shape == ref.shape == (*shape[:-1], 13, (shape[-1] - 41) // 10 + 1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    weights = torch.randn_like(ref)
    (grad,) = torch.autograd.grad((out * weights).sum(), waveform)
    (grad_ref,) = torch.autograd.grad((ref * weights).sum(), waveform)
    assert rel_l2(grad.detach().cpu(), grad_ref.detach().cpu()) < 1e-4


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backends_match_reference_on_odd_shapes(backend, shape):
    compare_with_reference(backend, "cpu", shape)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_uncompressed_envelopes_match_reference(backend):
    compare_with_reference(backend, "cpu", (2, 311), compression=None)


@needs_cuda
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", CUDA_BACKENDS)
def test_cuda_backends_match_reference_on_odd_shapes(backend, shape):
    compare_with_reference(backend, "cuda", shape)


def test_cpp_results_do_not_depend_on_the_thread_count():
    # The CPU op hands (clip, 8-channel) blocks to whichever thread is free (issue 10); each block's
    # numbers, and the fixed-order sum of the blocks' spectrum gradients, must not depend on that.
    waveform = 0.1 * torch.randn(3, 4000, generator=torch.Generator().manual_seed(1))
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            x = waveform.clone().requires_grad_(True)
            out = ops.cochleagram(x, backend="cpp", **SMALL)
            (grad,) = torch.autograd.grad((out * out).sum(), x)
            results.append((out.detach(), grad))
    finally:
        torch.set_num_threads(previous)
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize("compression", ["power", None])
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_float64_gradcheck(backend, compression):
    # Loud enough that every envelope sits above 0.018, where the compression slope 0.3 x^-0.7 is
    # below the clip at 5: there the clipped gradient is the true derivative gradcheck expects.
    torch.manual_seed(0)
    waveform = (10 * torch.randn(2, 97, dtype=torch.float64)).requires_grad_(True)
    fn = lambda x: ops.cochleagram(x, backend=backend, compression=compression, **SMALL)
    assert fn(waveform).dtype == torch.float64
    assert ops.reference.cochleagram(waveform, compression=None, **SMALL).min() > 0.018
    assert torch.autograd.gradcheck(fn, (waveform,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_compression_gradient_is_clipped():
    # Near the 1e-8 floor the power's derivative 0.3 x^-0.7 is huge; the contract clips it at 5.
    config = CochleagramConfig()
    from topoaudio.ops.cochlear_filters import power_compression_grad

    slope = power_compression_grad(torch.tensor([0.0, 1e-6, 1.0, -3.0]), config)
    assert slope[0] == 5.0 and slope[1] == 5.0 and slope[3] == 5.0
    assert slope[2] == pytest.approx(0.3, rel=1e-6)


def test_half_precision_input_is_computed_in_float32():
    waveform = 0.1 * torch.randn(2, 300)
    out = ops.cochleagram(waveform.to(torch.bfloat16), **SMALL)
    assert out.dtype == torch.float32
    ref = ops.cochleagram(waveform.to(torch.bfloat16).float(), **SMALL)
    torch.testing.assert_close(out, ref)


# --- the module form, dispatch and torch.library -----------------------------------------------

def test_module_matches_function_and_reports_shape():
    module = ops.Cochleagram(**SMALL)
    waveform = 0.1 * torch.randn(2, 300)
    torch.testing.assert_close(module(waveform), ops.cochleagram(waveform, **SMALL))
    assert module.n_channels == 13 and module.n_frames(300) == 26
    assert "window_size=41" in repr(module)


def test_dispatch_picks_cpp_on_cpu_and_can_be_forced():
    assert dispatch.extension() is not None, "topoaudio._C did not build"
    assert dispatch.available_backends("cpu")[0] == "cpp"
    ops.cochleagram(0.1 * torch.randn(300), **SMALL)
    assert ops.last_backend("cochleagram") == "cpp"
    with ops.use_backend("torch"):
        ops.cochleagram(0.1 * torch.randn(300), **SMALL)
    assert ops.last_backend("cochleagram") == "torch"


def test_cuda_kernels_were_compiled_when_nvcc_is_present():
    import os
    import shutil

    nvcc = os.path.exists("/usr/local/cuda/bin/nvcc") or shutil.which("nvcc")
    if os.environ.get("TOPOAUDIO_NO_CUDA") == "1" or not nvcc:
        pytest.skip("no nvcc on this machine: the CUDA kernels are not built")
    assert dispatch.extension().with_cuda


def test_unavailable_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="cuda backend needs CUDA tensors"):
        ops.cochleagram(0.1 * torch.randn(300), backend="cuda", **SMALL)
    with pytest.raises(ValueError, match="unknown backend"):
        ops.cochleagram(0.1 * torch.randn(300), backend="fast", **SMALL)


def test_opcheck_on_the_registered_op():
    waveform = 0.1 * torch.randn(2, 263, requires_grad=True)
    args = (waveform, 4000, 4, 100.0, 1800.0, 2, 400, 41, True, 0.3, 1e-8, 5.0, "cpp")
    torch.library.opcheck(torch.ops.topoaudio.cochleagram.default, args)


@needs_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_opcheck_on_cuda(backend):
    waveform = (0.1 * torch.randn(2, 263, device="cuda")).requires_grad_(True)
    args = (waveform, 4000, 4, 100.0, 1800.0, 2, 400, 41, True, 0.3, 1e-8, 5.0, backend)
    torch.library.opcheck(torch.ops.topoaudio.cochleagram.default, args)


@needs_cuda
def test_torch_compile_fullgraph_on_cuda():
    module = ops.Cochleagram(**SMALL)
    compiled = torch.compile(module, fullgraph=True)
    waveform = (0.1 * torch.randn(2, 263, device="cuda")).requires_grad_(True)
    out = compiled(waveform)
    torch.testing.assert_close(out, module(waveform))
    (grad,) = torch.autograd.grad(out.sum(), waveform)
    (grad_eager,) = torch.autograd.grad(module(waveform).sum(), waveform)
    torch.testing.assert_close(grad, grad_eager)


def test_torch_compile_fullgraph():
    module = ops.Cochleagram(**SMALL)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    waveform = (0.1 * torch.randn(2, 263)).requires_grad_(True)
    out = compiled(waveform)
    torch.testing.assert_close(out, module(waveform))
    (grad,) = torch.autograd.grad(out.sum(), waveform)
    (grad_eager,) = torch.autograd.grad(module(waveform).sum(), waveform)
    torch.testing.assert_close(grad, grad_eager)


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("waveform, message", [
    (torch.zeros(4000, dtype=torch.int16), r"int16 PCM: use waveform.float\(\) / 32768"),
    (torch.zeros(4000, dtype=torch.complex64), "real floating-point"),
    (torch.zeros(0), "empty"),
    (torch.zeros(3, 0), "empty"),
    (torch.zeros(500), "fewer than the 1001-tap"),
    (torch.tensor([0.0, float("nan")]).repeat(1000), "NaN or Inf"),
    (torch.tensor([0.0, float("inf")]).repeat(1000), "NaN or Inf"),
])
def test_bad_waveforms_are_rejected(waveform, message):
    with pytest.raises(ValueError, match=message):
        ops.cochleagram(waveform)


def test_non_tensor_is_rejected():
    with pytest.raises(ValueError, match="torch.Tensor"):
        ops.cochleagram(np.zeros(4000))


@pytest.mark.parametrize("kwargs, message", [
    (dict(env_sr=50000), "is below env_sr"),
    (dict(high_lim=12000.0), "above the Nyquist"),
    (dict(low_lim=0.0), "low_lim"),
    (dict(compression="log"), "compression must be one of"),
    (dict(n=0), "n must be a positive integer"),
])
def test_bad_configurations_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ops.cochleagram(torch.zeros(4000), **kwargs)
    with pytest.raises(ValueError, match=message):
        ops.Cochleagram(**kwargs)


def test_nan_is_rejected_inside_the_fused_op_too():
    # The fused op checks values itself, so compiled graphs (no Python-side check) are covered.
    waveform = torch.zeros(2, 300)
    waveform[1, 7] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or Inf"):
        torch.ops.topoaudio.cochleagram(waveform, 4000, 4, 100.0, 1800.0, 2, 400, 41, True, 0.3,
                                        1e-8, 5.0, "cpp")


@pytest.mark.parametrize("backend", ["cpp", "torch", "reference"])
def test_two_losses_on_one_leaf_waveform_each_backward_once(backend):
    # Issue 20 "also found": `x = 0.1 * torch.randn(..., requires_grad=True)` is not a leaf but the
    # output of a multiply, whose graph the first backward frees: the second backward then fails
    # in any chain of torch ops, ours or not (x * 2 alone fails the same way). On a true leaf two
    # losses, each with its own backward, accumulate both gradients.
    x = (0.1 * torch.randn(2, 800, dtype=torch.float64)).requires_grad_()
    weights = [torch.rand(2, 13, 76, dtype=torch.float64) for _ in range(2)]
    grads = []
    for weight in weights:
        (ops.cochleagram(x, backend=backend, **SMALL) * weight).sum().backward()
        grads.append(x.grad.clone())
    alone = x.detach().clone().requires_grad_()
    (ops.cochleagram(alone, backend=backend, **SMALL) * weights[1]).sum().backward()
    torch.testing.assert_close(grads[1] - grads[0], alone.grad)
