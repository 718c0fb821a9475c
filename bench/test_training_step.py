"""One training step (forward, backward, optimiser) with and without the topographic loss.

CPU: cochcnn at batch 16; GPU: CochResNet50 at batch 64 with whole-sheet channel_freq spatial loss
on all stages, and with TopoLoss. Target: the topographic loss costs <= 5 % of the step.
"""
import pytest
import torch
from conftest import bench_device, peak_memory_mb, synchronize

from topoaudio.models import build_model, tapped
from topoaudio.training.config import TrainConfig
from topoaudio.training.topography import TopographicLosses

DEVICE = bench_device()
MODEL, BATCH, LAYERS = (("cochresnet50", 64, ["layer1", "layer2", "layer3", "layer4"]) if DEVICE == "cuda"
                        else ("cochcnn", 16, ["block2", "block3", "block4"]))


@pytest.mark.parametrize("topo", ["none", "spatial", "topoloss"])
def test_training_step(benchmark, topo):
    config = TrainConfig(model=MODEL, topo=topo, topo_layers=LAYERS, batch_size=BATCH)
    torch.manual_seed(0)
    model = build_model(MODEL, 12).to(DEVICE)
    losses = TopographicLosses(config, model, torch.device(DEVICE), clip_samples=40000)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    waveforms = 0.1 * torch.randn(BATCH, 40000, device=DEVICE)
    labels = torch.randint(0, 12, (BATCH,), device=DEVICE)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=DEVICE == "cuda")
    terms = {}

    def step():
        with autocast, tapped(model, losses.layers) as features:
            task = torch.nn.functional.cross_entropy(model(waveforms).float(), labels)
        topo_total, terms_now = losses(features, 0)
        optimizer.zero_grad()
        (task + topo_total).backward()
        optimizer.step()
        terms.update(terms_now)
        synchronize(DEVICE)

    step()
    benchmark.group = f"training step {MODEL} batch {BATCH} {DEVICE}"
    benchmark.pedantic(step, rounds=10, iterations=1)
    units = {layer: sheet.n_units for layer, sheet in losses.sheets.items()}
    # CUDA: the allocator's peak over one step (weights and optimiser state excluded); CPU: not
    # measured (a whole-process RSS peak of a training step says little about the loss)
    peak = peak_memory_mb([], step) if DEVICE == "cuda" else None
    benchmark.extra_info.update(device=DEVICE, batch=BATCH, peak_mb=peak, units=units,
                                clips_per_s=BATCH / benchmark.stats.stats.median)
    print(f"\ntraining step {MODEL} topo={topo:9s}: {benchmark.stats.stats.median * 1e3:8.1f} ms  "
          f"units per layer {units}")


@pytest.mark.parametrize("topo", ["spatial", "topoloss"])
def test_topographic_term_alone(benchmark, topo):
    """The topographic term by itself (forward + backward to the activations or weights): the
    step-to-step noise of a whole training step is larger than this cost, so it is timed apart."""
    config = TrainConfig(model=MODEL, topo=topo, topo_layers=LAYERS, batch_size=BATCH)
    torch.manual_seed(0)
    model = build_model(MODEL, 12).to(DEVICE)
    losses = TopographicLosses(config, model, torch.device(DEVICE), clip_samples=40000)
    with torch.no_grad(), tapped(model, LAYERS) as features:
        model(0.1 * torch.randn(BATCH, 40000, device=DEVICE))
    leaves = {name: value.detach().requires_grad_(True) for name, value in features.items()}

    def step():
        total, _ = losses(leaves, 0)
        total.backward()
        synchronize(DEVICE)

    step()
    benchmark.group = f"topographic term alone {MODEL} batch {BATCH} {DEVICE}"
    benchmark.pedantic(step, rounds=10, iterations=1)
    benchmark.extra_info.update(device=DEVICE, batch=BATCH, peak_mb=None,
                                clips_per_s=BATCH / benchmark.stats.stats.median)
    print(f"\ntopographic term alone {topo:9s}: {benchmark.stats.stats.median * 1e3:8.2f} ms")
