"""One training step (forward, backward, optimiser) of the Audio Spectrogram Transformer with topo
none / spatial / topoloss, as bench/test_training_step.py does for the CNNs (issue 13).

CPU: the "ast" preset at batch 16, spatial loss on channel_freq sheets of block2-4.mlp (512 hidden
units x 12 frequency rows of patches = 6144 units per layer). GPU: "ast_base" at batch 64, all 12
blocks' MLP units. The topographic term's share of the step is the spatial/topoloss row against none.
"""
import pytest
import torch
from conftest import bench_device
from step_bench import time_training_step

DEVICE = bench_device()
MODEL, BATCH, LAYERS = (("ast_base", 64, [f"block{i}.mlp" for i in range(1, 13)]) if DEVICE == "cuda"
                        else ("ast", 16, ["block2.mlp", "block3.mlp", "block4.mlp"]))


@pytest.mark.parametrize("topo", ["none", "spatial", "topoloss"])
def test_ast_training_step(benchmark, topo):
    time_training_step(benchmark, model_name=MODEL, batch=BATCH, layers=LAYERS, topo=topo,
                       device=DEVICE, make_optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4))
