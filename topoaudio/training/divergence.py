"""Stopping a run that diverged, before a non-finite state reaches a checkpoint.

After every optimiser step the loop asks `state_is_finite`: one fused max-abs reduction over the
parameters, buffers and optimiser state (NaN propagates through max, and a max cannot overflow the
way a sum would), all-reduced so that every rank stops at the same step. Only when it fails does
`first_non_finite_state` walk the tensors one by one to name the culprit.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class TrainingDiverged(RuntimeError):
    """A non-finite loss, weight or optimiser state: training stopped, the last good checkpoint is
    kept."""


def named_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every floating-point tensor a checkpoint saves, in layer order."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    tensors = [(f"parameter {name}", parameter.detach()) for name, parameter in model.named_parameters()]
    tensors += [(f"buffer {name}", buffer) for name, buffer in model.named_buffers()
                if buffer.is_floating_point()]
    for parameter, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                tensors.append((f"optimiser {key} of {names.get(id(parameter), '?')}", value))
    return tensors


def all_ranks_agree(ok: bool, device, world: int) -> bool:
    """True when `ok` holds on every rank (an all-reduce: every rank must call it)."""
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    if world > 1:
        dist.all_reduce(flag)
    return flag.item() == 0


def state_is_finite(model: nn.Module, optimizer: torch.optim.Optimizer, device, world: int) -> bool:
    tensors = [tensor for _, tensor in named_state(model, optimizer)]
    local = bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors, float("inf"), foreach=None)))
    return all_ranks_agree(local, device, world)


def first_non_finite_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
    """The first parameter (then buffer, then optimiser state) holding NaN or Inf on this rank."""
    for name, tensor in named_state(model, optimizer):
        if not bool(torch.isfinite(tensor).all()):
            return name
    return None


@torch.no_grad()
def first_non_finite_output(model: nn.Module, waveforms: torch.Tensor) -> str | None:
    """Run the batch again with a hook on every module and name the first (in execution order)
    whose output holds NaN or Inf: the layer where a finite-weight forward overflowed. Only called
    once training has already failed, so the extra forward costs nothing in a healthy run."""
    found: list[str] = []

    def hook(name):
        def check(_module, _inputs, output):
            if not found and isinstance(output, torch.Tensor) and output.is_floating_point() \
                    and not bool(torch.isfinite(output).all()):
                found.append(name)
        return check

    handles = [module.register_forward_hook(hook(name)) for name, module in model.named_modules() if name]
    try:
        model(waveforms)
    except Exception:  # noqa: BLE001 - a probe only; the divergence itself is what gets reported
        pass
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None
