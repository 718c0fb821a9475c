"""What the fused ops refuse of autograd's and torch.func's transforms, in one line each, before
any work (issue 23): a graph of the gradient (double backward) and the functorch transforms.

The fused backwards are kernels with no autograd formula of their own, so a gradient built with
``create_graph=True`` would come back detached (a gradient penalty on it would add 0) or fail deep
inside torch; and torch.func's vmap / grad wrap tensors in a way the ops' autograd Functions and
data-dependent input checks do not support. The plain-PyTorch references (``backend="reference"``)
are ordinary autograd graphs and support both.
"""
from __future__ import annotations

import torch

from . import dispatch

_HOW = "use backend='reference' (plain PyTorch)"


def refuse_double_backward(op: str) -> None:
    """Call at the start of a fused backward: grad mode is on there exactly when the caller asked
    for a graph of the gradient (torch.autograd.grad(..., create_graph=True), backward(create_graph=
    True)). torch.compile's joint tracing differentiates without create_graph, so it passes."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{op}: double backward (a graph of the gradient, create_graph=True) is "
                           f"not supported by the fused backends; {_HOW} for higher derivatives")


def refuse_functorch(op: str, device: torch.device, backend: str | None) -> None:
    """Call at the op's entry, before its input checks (they read values, which vmap cannot):
    ValueError inside torch.func.vmap / grad / jacrev / jvp unless the backend is the reference."""
    if torch.compiler.is_compiling():  # traced graphs see no functorch levels
        return
    if (torch._C._functorch.peek_interpreter_stack() is not None
            and dispatch.choose(op, device, backend) != "reference"):
        raise ValueError(f"{op}: torch.func transforms (vmap, grad, jacrev, jvp) are not supported by "
                         f"the fused backends; call it outside the transform (a loop over the "
                         f"batch, torch.autograd.grad) or {_HOW}")
