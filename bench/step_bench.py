"""One training step (forward, backward, optimiser) with a topographic term, timed by
pytest-benchmark: shared by bench/test_training_step.py (the CNNs) and bench/test_ast_step.py."""
from __future__ import annotations

import torch
from conftest import peak_memory_mb, record, synchronize

from topoaudio.models import build_model, tapped
from topoaudio.training.config import TrainConfig
from topoaudio.training.topography import TopographicLosses


def time_training_step(benchmark, *, model_name: str, batch: int, layers: list[str], topo: str,
                       device: str, make_optimizer) -> dict:
    """Times one step of `model_name` (12 classes, 2 s clips of noise) with topo none / spatial /
    topoloss on `layers`; records it against the "none" variant. Returns the step's last terms."""
    config = TrainConfig(model=model_name, topo=topo, topo_layers=layers, batch_size=batch)
    torch.manual_seed(0)
    model = build_model(model_name, 12).to(device)
    losses = TopographicLosses(config, model, torch.device(device), clip_samples=40000)
    optimizer = make_optimizer(model.parameters())
    waveforms = 0.1 * torch.randn(batch, 40000, device=device)
    labels = torch.randint(0, 12, (batch,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    terms = {}

    def step():
        with autocast, tapped(model, losses.layers) as features:
            task = torch.nn.functional.cross_entropy(model(waveforms).float(), labels)
        topo_total, terms_now = losses(features, 0)
        optimizer.zero_grad()
        (task + topo_total).backward()
        optimizer.step()
        terms.update(terms_now)
        synchronize(device)

    step()
    benchmark.group = f"training step {model_name} batch {batch} {device}"
    benchmark.pedantic(step, rounds=5 if device == "cpu" else 10, iterations=1)
    units = {layer: sheet.n_units for layer, sheet in losses.sheets.items()}
    # CUDA: the allocator's peak over one step (weights and optimiser state excluded); CPU: not
    # measured (a whole-process RSS peak of a training step says little about the loss)
    peak = peak_memory_mb([], step) if device == "cuda" else None
    benchmark.extra_info.update(device=device, batch=batch, peak_mb=peak, units=units,
                                clips_per_s=batch / benchmark.stats.stats.median)
    record(benchmark, topo, baseline="none", peak_mb=peak)
    print(f"\ntraining step {model_name} topo={topo:9s}: {benchmark.stats.stats.median * 1e3:8.1f} ms  "
          f"units per layer {units}")
    return terms
