"""The fast cochleagram's Triton backend (kernels/cochleagram_fast.py) under the CPU interpreter
(conftest sets TRITON_INTERPRET=1 without a GPU): the same numbers and gradients as the torch
backend, its registration, and what it refuses. tests/triton_aot.py compiles the same kernels for
sm_90; neither runs them on a GPU (bench/gpu.sh does, where a card is lent)."""
import pathlib

import numpy as np
import pytest
import torch

import topoaudio.ops as ops
from topoaudio.ops import dispatch

pytest.importorskip("triton")
if not dispatch.triton_interpreted() and not torch.cuda.is_available():
    pytest.skip("the Triton backend needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# 4 kHz, 4 filters: 9 channels, so the interpreter (which pays per program) takes seconds
SMALL = dict(sr=4000, n=4, sample_factor=2, low_lim=100.0, high_lim=1800.0, env_sr=400,
             window_size=41)


def run(x, backend, **kwargs):
    leaf = x.clone().requires_grad_()
    y = ops.cochleagram(leaf, mode="fast", backend=backend, **kwargs)
    weights = torch.rand(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
    (grad,) = torch.autograd.grad((y * weights.to(y.device)).sum(), leaf)
    return y.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("compression", ["power", None])
def test_triton_and_torch_backends_agree(dtype, compression):
    torch.manual_seed(0)
    x = (0.1 * torch.randn(3, 800, dtype=dtype)).to(DEVICE)
    y_t, g_t = run(x, "triton", compression=compression, **SMALL)
    assert ops.last_backend("cochleagram") == "triton+fast"
    y_r, g_r = run(x, "torch", compression=compression, **SMALL)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-6)
    torch.testing.assert_close(y_t, y_r, **tol)
    torch.testing.assert_close(g_t, g_r, **tol)


@pytest.mark.slow
def test_default_setting_on_a_real_clip_matches_the_torch_backend():
    """The default configuration (211 channels, 22 transform sizes, folds of up to 17 bins onto P)
    on 0.2 s of a golden fixture clip, float32: every table and offset at its real size."""
    waveform = torch.tensor(np.load(ROOT / "tests" / "fixtures" / "cochleagram_reference.npz")
                            ["waveforms"][1:2, 8000:12000]).to(DEVICE)
    y_t, g_t = run(waveform, "triton")
    y_r, g_r = run(waveform, "torch")
    assert y_t.shape == (1, 211, 30)
    torch.testing.assert_close(y_t, y_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_t, g_r, rtol=1e-3, atol=1e-3 * g_r.abs().max().item())


def test_float64_gradcheck_of_the_triton_backend():
    torch.manual_seed(0)
    waveform = (10 * torch.randn(1, 400, dtype=torch.float64, device=DEVICE)).requires_grad_(True)
    fn = lambda x: ops.cochleagram(x, mode="fast", backend="triton", **SMALL)  # noqa: E731
    # fast mode (random projections): the interpreter pays seconds per forward, and the full
    # Jacobian would take 800 of them; the torch backend's full gradcheck is in test_cochleagram_fast
    assert torch.autograd.gradcheck(fn, (waveform,), eps=1e-6, atol=1e-6, rtol=1e-4,
                                    fast_mode=True)


def test_twice_on_one_leaf_with_a_backward_after_each():
    x = (0.1 * torch.randn(2, 800, device=DEVICE)).requires_grad_(True)
    grads = []
    for _ in range(2):
        ops.cochleagram(x, mode="fast", backend="triton", **SMALL).sum().backward()
        grads.append(x.grad.clone())
    torch.testing.assert_close(grads[1], 2 * grads[0])


def test_opcheck_on_the_registered_fast_op_with_triton():
    waveform = 0.1 * torch.randn(2, 400, dtype=torch.float64, device=DEVICE, requires_grad=True)
    args = (waveform, 4000, 4, 100.0, 1800.0, 2, 400, 41, True, 0.3, 1e-8, 5.0, 4.0, "triton")
    torch.library.opcheck(torch.ops.topoaudio.cochleagram_fast.default, args)


def test_a_length_the_stride_does_not_divide_is_refused_by_name():
    with pytest.raises(ValueError, match="on the triton backend needs the stride"):
        ops.cochleagram(0.1 * torch.randn(1, 805, device=DEVICE), mode="fast", backend="triton",
                        **SMALL)


def test_auto_on_cpu_never_picks_triton():
    ops.cochleagram(0.1 * torch.randn(1, 800), mode="fast", **SMALL)
    assert ops.last_backend("cochleagram") == "cpp+fast"


def test_torch_compile_fullgraph_with_the_triton_backend():
    module = ops.Cochleagram(mode="fast", backend="triton", **SMALL)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    waveform = (0.1 * torch.randn(2, 400, device=DEVICE)).requires_grad_(True)
    out = compiled(waveform)
    torch.testing.assert_close(out, module(waveform))
    (grad,) = torch.autograd.grad(out.sum(), waveform)
    (grad_eager,) = torch.autograd.grad(module(waveform).sum(), waveform)
    torch.testing.assert_close(grad, grad_eager)
