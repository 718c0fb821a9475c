"""The ops on unusual but valid input give the right answer, bad settings a clear error, and the
backend is chosen once, reported truly and never switched silently (issue 9, "Ops" and
"Backends")."""
import warnings

import numpy as np
import pytest
import torch

import topoaudio.ops as ops
from topoaudio.ops import cochleagram_torch, dispatch
from topoaudio.ops.cochlear_filters import largest_safe_sample
from topoaudio.ops.spatial_common import unit_vectors

# Triton runs on CPU tensors under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
CPU_BACKENDS = ["cpp", "torch", "reference", "triton"]
# The small cochleagram of tests/test_cochleagram.py: 13 channels, stride 10, 41-tap window.
SMALL = dict(sr=4000, n=4, sample_factor=2, low_lim=100.0, high_lim=1800.0, env_sr=400,
             window_size=41)
SCALES = [1e-20, 1e-8, 1.0, 2e19, 1e30]


def tdann_loss(features: np.ndarray, positions: np.ndarray) -> float:
    """TDANN's relative spatial loss in float64 NumPy: np.corrcoef, no dead-unit rule."""
    corr = np.corrcoef(features.T)
    dist = np.sqrt(((positions[:, None, :] - positions[None, :, :]) ** 2).sum(-1))
    upper = np.triu_indices(len(positions), k=1)
    return (1.0 - np.corrcoef(corr[upper], 1.0 / (1.0 + dist[upper]))[0, 1]) / 2.0


def random_layer(n_units=48, batch=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, n_units, generator=generator, dtype=torch.float64)
    positions = torch.rand(n_units, 2, generator=generator, dtype=torch.float64) * 5
    return features, positions


# --- spatial loss: scale invariance and the dead-unit rule -------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_spatial_loss_is_scale_invariant_in_float32(backend):
    # float32 squares overflow above 1.8e19 and underflow below 1e-19: the loss must not notice
    features, positions = random_layer()
    expected = tdann_loss(features.numpy(), positions.numpy())
    exact = features.clone().requires_grad_(True)
    ops.spatial_loss(exact, positions, backend="reference").backward()
    for scale in SCALES:
        x = (features * scale).float().requires_grad_(True)
        loss = ops.spatial_loss(x, positions.float(), backend=backend)
        assert loss.item() == pytest.approx(expected, abs=1e-4), scale
        loss.backward()
        # d loss / d x scales as 1 / c; compare in float64 (the float32 norm would underflow)
        grad = x.grad.double() * scale
        assert torch.isfinite(grad).all() and grad.abs().max() > 0, scale
        assert (grad - exact.grad).norm() <= 1e-3 * exact.grad.norm(), scale


@pytest.mark.parametrize("kind, radius", [("relative", None), ("absolute", 2.0)])
def test_spatial_loss_scale_invariance_in_float64_every_variant(kind, radius):
    features, positions = random_layer(seed=1)
    base = ops.spatial_loss(features, positions, kind=kind, radius=radius, backend="cpp").item()
    for scale in [1e-200, 1e-20, 1e20, 1e200]:
        scaled = ops.spatial_loss(features * scale, positions, kind=kind, radius=radius,
                                  backend="cpp")
        assert scaled.item() == pytest.approx(base, rel=1e-9), scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_units_at_a_small_scale_are_live(backend, dtype):
    # Units responding at 1e-8 of their neighbours' level have exact, meaningful correlations
    # (TDANN correlates them); the old rule std <= eps * max(1, |mean|) dropped them.
    features, positions = random_layer(n_units=60, batch=16, seed=2)
    features[:, :10] *= 1e-8
    expected = tdann_loss(features.numpy(), positions.numpy())
    loss = ops.spatial_loss(features.to(dtype), positions.to(dtype), backend=backend)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    _, live = unit_vectors(features.to(dtype), 1e-6)
    assert bool(live.all())


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_constant_units_are_dead_at_any_level(scale):
    features, _ = random_layer(n_units=6, batch=8, seed=3)
    features = features.float() * scale
    features[:, 0] = 0.0  # a dead ReLU
    features[:, 1] = 3.0 * scale  # exactly constant
    # constant plus float32 rounding: 1000 + tiny noise quantised to float32's 6e-5 steps
    features[:, 2] = (1000.0 + 1e-5 * torch.randn(8)).float() * scale
    _, live = unit_vectors(features, 1e-6)
    assert live.tolist() == [False, False, False, True, True, True]


# --- any valid layout on every backend ---------------------------------------------------------

@pytest.mark.parametrize("kind, radius", [("relative", None), ("absolute", 2.0)])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_spatial_loss_takes_non_contiguous_inputs(backend, kind, radius):
    features, positions = random_layer(n_units=40, batch=6, seed=4)
    strided_positions = positions.t().contiguous().t()  # a transposed [2, N] view
    strided_features = features.t().contiguous().t()
    assert not strided_positions.is_contiguous() and not strided_features.is_contiguous()
    x = strided_features.clone().requires_grad_(True)
    loss = ops.spatial_loss(x, strided_positions, kind=kind, radius=radius, backend=backend)
    x_ref = features.clone().requires_grad_(True)
    expected = ops.reference.spatial_loss(x_ref, positions, kind=kind, radius=radius)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cochleagram_takes_a_non_contiguous_waveform(backend):
    waveform = 0.1 * torch.randn(300, 2)
    strided = waveform.t()
    assert not strided.is_contiguous()
    out = ops.cochleagram(strided, backend=backend, **SMALL)
    torch.testing.assert_close(out, ops.reference.cochleagram(strided.contiguous(), **SMALL),
                               atol=2e-6, rtol=1e-5)


# --- settings: numbers are numbers, non-finite ones are refused by name -------------------------

@pytest.mark.parametrize("setting", ["power", "offset", "clip_value", "low_lim", "high_lim"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_cochleagram_settings_are_refused_by_name(setting, value):
    with pytest.raises(ValueError, match=f"{setting} must be a finite number, got {value}"):
        ops.cochleagram(torch.zeros(300), **dict(SMALL, **{setting: value}))
    with pytest.raises(ValueError, match=f"{setting} must be a finite number"):
        ops.Cochleagram(**dict(SMALL, **{setting: value}))


@pytest.mark.parametrize("setting, value", [("radius", float("nan")), ("radius", float("inf")),
                                            ("eps", float("nan")), ("eps", 0.0)])
def test_bad_spatial_settings_are_refused_by_name(setting, value):
    features, positions = random_layer()
    with pytest.raises(ValueError, match=f"{setting} must be a"):
        ops.spatial_loss(features, positions, **{setting: value})


def test_numpy_scalars_and_0d_tensors_are_numbers():
    features, positions = random_layer(seed=5)
    expected = ops.spatial_loss(features, positions, radius=2.0, eps=1e-6).item()
    for radius in (np.float32(2.0), np.float64(2.0), np.int64(2), torch.tensor(2.0)):
        assert ops.spatial_loss(features, positions, radius=radius,
                                eps=np.float32(1e-6)).item() == pytest.approx(expected, rel=1e-12)
    waveform = 0.1 * torch.randn(2, 300)
    expected_cochleagram = ops.cochleagram(waveform, **SMALL)
    numpy_settings = dict(sr=np.int64(4000), n=np.int32(4), sample_factor=np.int64(2),
                          low_lim=np.float32(100.0), high_lim=np.float64(1800.0),
                          env_sr=np.int64(400), window_size=np.int64(41), power=np.float32(0.3),
                          offset=np.float64(1e-8), clip_value=np.float32(5.0))
    out = ops.cochleagram(waveform, **numpy_settings)
    torch.testing.assert_close(out, expected_cochleagram, rtol=1e-6, atol=1e-7)
    assert type(ops.Cochleagram(**numpy_settings).config.power) is float


def test_bool_is_not_a_number():
    features, positions = random_layer()
    with pytest.raises(ValueError, match="radius must be a real number, got True"):
        ops.spatial_loss(features, positions, radius=True)


def test_backend_none_means_auto_for_both_ops():
    features, positions = random_layer()
    ops.spatial_loss(features, positions, backend=None)
    assert ops.last_backend("spatial_loss") == dispatch.available_backends("cpu", "spatial_loss")[0]
    ops.cochleagram(0.1 * torch.randn(300), backend=None, **SMALL)
    assert ops.last_backend("cochleagram") == dispatch.available_backends("cpu", "cochleagram")[0]
    ops.Cochleagram(backend=None, **SMALL)(0.1 * torch.randn(300))


@pytest.mark.parametrize("op", ["spatial", "cochleagram"])
def test_unknown_backend_names_are_refused_alike(op):
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        if op == "spatial":
            ops.spatial_loss(*random_layer(), backend="fast")
        else:
            ops.cochleagram(0.1 * torch.randn(300), backend="fast", **SMALL)


# --- waveforms whose squares would overflow ----------------------------------------------------

def test_oversized_waveform_is_refused_naming_the_largest_sample_and_the_bound():
    waveform = 0.1 * torch.randn(2, 300)
    waveform[1, 5] = 1e30
    bound = f"{largest_safe_sample(torch.float32, 300):.3g}".replace("+", r"\+")
    with pytest.raises(ValueError, match=r"largest \|sample\| is 1e\+30, above " + bound):
        ops.cochleagram(waveform, **SMALL)
    with pytest.raises(ValueError, match=r"largest \|sample\| is 1e\+30"):
        ops.reference.cochleagram(waveform, **SMALL)


@pytest.mark.parametrize("backend", ["cpp", "torch", "reference"])
def test_loud_waveform_below_the_bound_is_exact(backend):
    # envelopes are homogeneous: cochleagram(c x) = c cochleagram(x) without compression
    waveform = 0.1 * torch.randn(2, 300)
    scale = 0.5 * largest_safe_sample(torch.float32, 300) / float(waveform.abs().max())
    out = ops.cochleagram(waveform * scale, compression=None, backend=backend, **SMALL)
    assert torch.isfinite(out).all()
    expected = ops.cochleagram(waveform, compression=None, backend=backend, **SMALL) * scale
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=0.0)


# --- backends: chosen once, reported truly, never switched silently -----------------------------

def spy_on(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def test_cochleagram_backward_runs_on_the_forward_backend(monkeypatch):
    torch_backward = spy_on(monkeypatch, cochleagram_torch, "envelope_downsample_backward")
    waveform = (0.1 * torch.randn(2, 300)).requires_grad_(True)
    with ops.use_backend("torch"):
        out = ops.cochleagram(waveform, **SMALL)
    assert dispatch.available_backends("cpu", "cochleagram")[0] == "cpp"  # auto would pick cpp
    out.sum().backward()  # outside the block
    assert torch_backward and ops.last_backend("cochleagram") == "torch"
    expected = waveform.detach().clone().requires_grad_(True)
    ops.reference.cochleagram(expected, **SMALL).sum().backward()
    torch.testing.assert_close(waveform.grad, expected.grad, rtol=1e-4, atol=1e-6)


def test_cochleagram_backward_ignores_a_block_entered_after_the_forward(monkeypatch):
    torch_backward = spy_on(monkeypatch, cochleagram_torch, "envelope_downsample_backward")
    waveform = (0.1 * torch.randn(300)).requires_grad_(True)
    out = ops.cochleagram(waveform, **SMALL)  # auto: cpp
    with ops.use_backend("torch"):
        out.sum().backward()
    assert not torch_backward and ops.last_backend("cochleagram") == "cpp"


@pytest.mark.parametrize("how", ["use_backend", "environment"])
def test_reference_request_runs_the_reference(monkeypatch, how):
    reference_calls = spy_on(monkeypatch, ops.reference, "cochleagram")
    torch_forward = spy_on(monkeypatch, cochleagram_torch, "envelope_downsample_forward")
    waveform = 0.1 * torch.randn(300)
    if how == "environment":
        monkeypatch.setenv("TOPOAUDIO_BACKEND", "reference")
        out = ops.cochleagram(waveform, **SMALL)
    else:
        with ops.use_backend("reference"):
            out = ops.cochleagram(waveform, **SMALL)
    assert reference_calls and not torch_forward
    assert ops.last_backend("cochleagram") == "reference"
    assert out.shape == (13, 26)


def test_a_bad_environment_backend_is_named(monkeypatch):
    monkeypatch.setenv("TOPOAUDIO_BACKEND", "fastest")
    with pytest.raises(ValueError, match="TOPOAUDIO_BACKEND: unknown backend 'fastest'"):
        ops.cochleagram(0.1 * torch.randn(300), **SMALL)


def test_registered_op_takes_only_a_resolved_backend():
    with pytest.raises(ValueError, match="runs one of the fused backends"):
        torch.ops.topoaudio.cochleagram(0.1 * torch.randn(2, 300), 4000, 4, 100.0, 1800.0, 2, 400,
                                        41, True, 0.3, 1e-8, 5.0, "auto")


def test_auto_warns_once_per_op_and_device_when_the_first_choice_cannot_run(monkeypatch):
    # as if topoaudio._C had not been built
    monkeypatch.setattr(dispatch, "_extension", None)
    monkeypatch.setattr(dispatch, "_extension_error", "topoaudio._C is not built (test)")
    monkeypatch.setattr(dispatch, "_warned", set())
    features, positions = random_layer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            ops.spatial_loss(features, positions)
            ops.cochleagram(0.1 * torch.randn(300), **SMALL)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 2, messages
    assert all("cpp backend cannot run" in m and "topoaudio._C is not built (test)" in m
               and "using the slower torch backend" in m for m in messages)
    assert {m.split(":")[0] for m in messages} == {"spatial_loss", "cochleagram"}
    assert ops.last_backend("spatial_loss") == ops.last_backend("cochleagram") == "torch"


def test_no_warning_when_the_first_choice_runs(monkeypatch):
    monkeypatch.setattr(dispatch, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.spatial_loss(*random_layer())


def test_automatic_order_never_lists_a_backend_it_cannot_reach(monkeypatch):
    class BuiltWithoutCuda:
        with_cuda = False

    monkeypatch.setattr(dispatch, "extension", lambda: BuiltWithoutCuda())
    for op in ("spatial_loss", "cochleagram"):
        assert "cuda" not in dispatch.automatic_order(op, "cuda")
        assert dispatch.automatic_order(op, "cuda")[0] == "triton"
    monkeypatch.setattr(dispatch, "triton_interpreted", lambda: False)
    assert "triton" not in dispatch.automatic_order("cochleagram", "cpu")
    assert dispatch.automatic_order("cochleagram", "cpu")[0] == "cpp"

