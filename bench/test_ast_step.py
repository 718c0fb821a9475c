"""One training step (forward, backward, optimiser) of the Audio Spectrogram Transformer with topo
none / spatial / topoloss, as bench/test_training_step.py does for the CNNs (issue 13).

CPU: the "ast" preset at batch 16, spatial loss on channel_freq sheets of block2-4.mlp (512 hidden
units x 12 frequency rows of patches = 6144 units per layer). GPU: "ast_base" at batch 64, all 12
blocks' MLP units. The topographic term's share of the step is the spatial/topoloss row against none.
"""
import pytest
import torch
from conftest import bench_device, record, synchronize

from topoaudio.models import build_model, tapped
from topoaudio.training.config import TrainConfig
from topoaudio.training.topography import TopographicLosses

DEVICE = bench_device()
MODEL, BATCH, LAYERS = (("ast_base", 64, [f"block{i}.mlp" for i in range(1, 13)]) if DEVICE == "cuda"
                        else ("ast", 16, ["block2.mlp", "block3.mlp", "block4.mlp"]))


@pytest.mark.parametrize("topo", ["none", "spatial", "topoloss"])
def test_ast_training_step(benchmark, topo):
    config = TrainConfig(model=MODEL, topo=topo, topo_layers=LAYERS, batch_size=BATCH)
    torch.manual_seed(0)
    model = build_model(MODEL, 12).to(DEVICE)
    losses = TopographicLosses(config, model, torch.device(DEVICE), clip_samples=40000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    waveforms = 0.1 * torch.randn(BATCH, 40000, device=DEVICE)
    labels = torch.randint(0, 12, (BATCH,), device=DEVICE)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=DEVICE == "cuda")

    def step():
        with autocast, tapped(model, losses.layers) as features:
            task = torch.nn.functional.cross_entropy(model(waveforms).float(), labels)
        topo_total, _ = losses(features, 0)
        optimizer.zero_grad()
        (task + topo_total).backward()
        optimizer.step()
        synchronize(DEVICE)

    step()
    benchmark.group = f"training step {MODEL} batch {BATCH} {DEVICE}"
    benchmark.pedantic(step, rounds=5 if DEVICE == "cpu" else 10, iterations=1)
    units = {layer: sheet.n_units for layer, sheet in losses.sheets.items()}
    benchmark.extra_info.update(device=DEVICE, batch=BATCH, peak_mb=None, units=units,
                                clips_per_s=BATCH / benchmark.stats.stats.median)
    record(benchmark, topo, baseline="none")
    print(f"\ntraining step {MODEL} topo={topo:9s}: {benchmark.stats.stats.median * 1e3:8.1f} ms  "
          f"units per layer {units}")
