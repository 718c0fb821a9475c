"""Double backward and torch.func transforms (issue 23): the fused backends refuse them in one line
before any work, instead of a silently detached gradient or a traceback from deep inside torch;
the references support them; meta tensors give shapes."""
import pytest
import torch

import topoaudio.ops as ops

SMALL = dict(sr=4000, n=4, sample_factor=2, low_lim=100.0, high_lim=1800.0, env_sr=400,
             window_size=41)


def layer():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(8, 50, generator=generator, dtype=torch.float64)
    positions = torch.rand(50, 2, generator=generator, dtype=torch.float64) * 10
    return features, positions


def gradient_penalty(features, positions, backend):
    features = features.clone().requires_grad_()
    loss = ops.spatial_loss(features, positions, backend=backend)
    (grad,) = torch.autograd.grad(loss, features, create_graph=True)
    return (grad ** 2).sum(), features


@pytest.mark.parametrize("backend", ["cpp", "torch", "triton"])
def test_spatial_loss_refuses_a_graph_of_its_gradient(backend):
    features, positions = layer()
    # (the cpp and torch backends returned a gradient with requires_grad=False: the penalty added 0)
    with pytest.raises(RuntimeError, match="double backward .* backend='reference'"):
        gradient_penalty(features, positions, backend)


def test_spatial_loss_reference_has_a_true_second_derivative():
    features, positions = layer()
    penalty, leaf = gradient_penalty(features, positions, "reference")
    assert penalty.requires_grad and penalty.item() > 0
    (second,) = torch.autograd.grad(penalty, leaf)
    assert second.abs().sum() > 0
    # and the reference's first derivative is the fused one's
    fused = leaf.detach().clone().requires_grad_()
    ops.spatial_loss(fused, positions, backend="cpp").backward()
    ref = leaf.detach().clone().requires_grad_()
    ops.spatial_loss(ref, positions, backend="reference").backward()
    torch.testing.assert_close(fused.grad, ref.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_cochleagram_refuses_a_graph_of_its_gradient(backend):
    x = (0.1 * torch.randn(2, 800, dtype=torch.float64)).requires_grad_()
    out = ops.cochleagram(x, backend=backend, **SMALL)
    with pytest.raises(RuntimeError, match="cochleagram: double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)
    # a plain first derivative still works on the same graph
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all()


def test_cochleagram_reference_has_a_second_derivative():
    x = (0.1 * torch.randn(2, 800, dtype=torch.float64)).requires_grad_()
    out = ops.cochleagram(x, backend="reference", **SMALL)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    (second,) = torch.autograd.grad((grad ** 2).sum(), x)
    assert torch.isfinite(second).all() and second.abs().sum() > 0


@pytest.mark.parametrize("transform", [torch.func.grad, torch.func.vmap, torch.func.jacrev])
def test_spatial_loss_refuses_functorch_transforms_in_one_line(transform):
    features, positions = layer()
    with pytest.raises(ValueError, match="spatial_loss: torch.func transforms"):
        transform(lambda f: ops.spatial_loss(f, positions))(features)


@pytest.mark.parametrize("transform", [torch.func.grad, torch.func.vmap])
def test_cochleagram_refuses_functorch_transforms_in_one_line(transform):
    x = 0.1 * torch.randn(2, 800, dtype=torch.float64)
    with pytest.raises(ValueError, match="cochleagram: torch.func transforms"):
        transform(lambda w: ops.cochleagram(w, **SMALL).sum())(x)


def test_torch_func_grad_runs_on_the_references():
    features, positions = layer()
    got = torch.func.grad(lambda f: ops.spatial_loss(f, positions, backend="reference"))(features)
    leaf = features.clone().requires_grad_()
    ops.spatial_loss(leaf, positions, backend="cpp").backward()
    torch.testing.assert_close(got, leaf.grad, rtol=1e-8, atol=1e-12)


def test_spatial_loss_on_meta_tensors_gives_the_loss_shape():
    features = torch.empty(8, 50, device="meta", requires_grad=True)
    loss = ops.spatial_loss(features, torch.empty(50, 2, device="meta"))
    assert loss.device.type == "meta" and loss.shape == () and loss.dtype == torch.float32
    half = ops.spatial_loss(torch.empty(8, 50, device="meta", dtype=torch.float16),
                            torch.empty(50, 2, device="meta"))
    assert half.dtype == torch.float32  # as on real tensors: float16 is computed in float32
    with pytest.raises(ValueError, match="features have 50 units but positions has 49"):
        ops.spatial_loss(features, torch.empty(49, 2, device="meta"))
