"""Two losses on one input, a backward after each (issue 20, "also found").

The issue's example, `x = 0.1 * torch.randn(2, 40000, requires_grad=True)`, failed on the second
backward on every backend. The cause is the example, not the ops: `0.1 * leaf` is not a leaf. It is
a MulBackward0 node that saved its scalar operand, and the first backward freed it. `x.sum()`
fails the same way with no cochleagram in the graph (the last test). On a real leaf every backend
and both modes take any number of backwards, and the gradients add up.
"""
import pytest
import torch

import topoaudio.ops as ops

CASES = [dict(backend="cpp"), dict(backend="torch"), dict(backend="reference"),
         dict(mode="fast", backend="cpp"), dict(mode="fast", backend="torch")]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda kw: "-".join(kw.values()))
def test_two_backwards_on_one_leaf_add_up(kwargs):
    torch.manual_seed(0)
    x = (0.1 * torch.randn(2, 4000)).requires_grad_()
    ops.cochleagram(x, **kwargs).sum().backward()
    first = x.grad.clone()
    ops.cochleagram(x, **kwargs).pow(2).sum().backward()
    (second,) = torch.autograd.grad(ops.cochleagram(x, **kwargs).pow(2).sum(), x)
    torch.testing.assert_close(x.grad, first + second)


def test_the_issues_example_fails_without_any_op_of_ours():
    x = 0.1 * torch.randn(2, 400, requires_grad=True)
    assert not x.is_leaf
    x.sum().backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        x.sum().backward()
