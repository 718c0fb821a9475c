"""One training step (forward, backward, optimiser) with and without the topographic loss.

CPU: cochcnn at batch 16; GPU: CochResNet50 at batch 64 with whole-sheet channel_freq spatial loss
on all stages, and with TopoLoss. Target: the topographic loss costs <= 5 % of the step.

test_step_against_today (issue 10): the step a user compares. Ours (fused cochleagram + exact
spatial loss over whole sheets) against what a user runs today (the reference cochleagram + TDANN's
sampled loss, one 500-unit neighbourhood per layer per step, bench/tdann_sampled.py), same model,
batch, layers and alpha; plus the fused cochleagram with the sampled loss (the fused op on the 500
units), which isolates what exactness over the whole sheet costs.
"""
import pytest
import torch
from conftest import bench_device, record, synchronize
from step_bench import time_training_step
from tdann_sampled import NEIGHBOURHOOD, SampledSpatialTerm

import topoaudio.ops as ops
from topoaudio.models import build_model, tapped
from topoaudio.training.config import TrainConfig
from topoaudio.training.topography import TopographicLosses

DEVICE = bench_device()
MODEL, BATCH, LAYERS = (("cochresnet50", 64, ["layer1", "layer2", "layer3", "layer4"]) if DEVICE == "cuda"
                        else ("cochcnn", 16, ["block2", "block3", "block4"]))


@pytest.mark.parametrize("topo", ["none", "spatial", "topoloss"])
def test_training_step(benchmark, topo):
    time_training_step(benchmark, model_name=MODEL, batch=BATCH, layers=LAYERS, topo=topo,
                       device=DEVICE,
                       make_optimizer=lambda params: torch.optim.SGD(params, lr=1e-3, momentum=0.9))


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
    record(benchmark, topo, baseline="none")
    print(f"\ntopographic term alone {topo:9s}: {benchmark.stats.stats.median * 1e3:8.2f} ms")


# variant: (cochleagram backend, topographic term); the first is the baseline of the table
STEP_VARIANTS = {
    "today: reference cochleagram + sampled 500": ("reference", "sampled"),
    "fused cochleagram + sampled 500 (fused op)": ("auto", "sampled_fused"),
    "ours: fused cochleagram + exact whole sheet": ("auto", "exact"),
    "fused cochleagram, no topographic term": ("auto", "none"),
}
TODAY = next(iter(STEP_VARIANTS))


def _spatial_terms(model):
    """The whole-sheet term (the training loop's) and the sampled ones, on the same sheets."""
    config = TrainConfig(model=MODEL, topo="spatial", topo_layers=LAYERS, batch_size=BATCH)
    exact = TopographicLosses(config, model, torch.device(DEVICE), clip_samples=40000)
    sampled = {fused: SampledSpatialTerm(exact.sheets, config.alpha, kind=config.spatial_kind,
                                         fused=fused) for fused in (False, True)}
    terms = {"exact": lambda features: exact(features, 0)[0], "sampled": sampled[False],
             "sampled_fused": sampled[True], "none": lambda features: torch.zeros((), device=DEVICE)}
    return terms, exact


@pytest.mark.parametrize("variant", list(STEP_VARIANTS))
def test_step_against_today(benchmark, variant):
    cochleagram_backend, term_name = STEP_VARIANTS[variant]
    torch.manual_seed(0)
    model = build_model(MODEL, 12).to(DEVICE)
    model.frontend.cochleagram.backend = cochleagram_backend
    terms, exact = _spatial_terms(model)
    term = terms[term_name]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    waveforms = 0.1 * torch.randn(BATCH, 40000, device=DEVICE)
    labels = torch.randint(0, 12, (BATCH,), device=DEVICE)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=DEVICE == "cuda")

    def step():
        with autocast, tapped(model, exact.layers) as features:
            task = torch.nn.functional.cross_entropy(model(waveforms).float(), labels)
        optimizer.zero_grad()
        (task + term(features)).backward()
        optimizer.step()
        synchronize(DEVICE)

    step()
    # the baseline runs the definition, the others a fused backend
    assert (ops.last_backend("cochleagram") == "reference") == (cochleagram_backend == "reference")
    units = {layer: sheet.n_units for layer, sheet in exact.sheets.items()}
    benchmark.group = (f"training step {MODEL} batch {BATCH} {DEVICE}: ours vs today "
                       f"(units {list(units.values())}, sampled {NEIGHBOURHOOD})")
    benchmark.pedantic(step, rounds=5 if DEVICE == "cpu" else 20, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(device=DEVICE, batch=BATCH, peak_mb=None, units=units,
                                clips_per_s=BATCH / median)
    record(benchmark, variant, baseline=TODAY)
    print(f"\ntraining step {MODEL} {variant}: {median * 1e3:8.1f} ms")


@pytest.mark.parametrize("term_name", ["sampled", "sampled_fused", "exact"])
def test_spatial_term_against_today(benchmark, term_name):
    """The spatial terms alone (forward + backward to the activations), on the same features."""
    torch.manual_seed(0)
    model = build_model(MODEL, 12).to(DEVICE)
    terms, exact = _spatial_terms(model)
    with torch.no_grad(), tapped(model, exact.layers) as features:
        model(0.1 * torch.randn(BATCH, 40000, device=DEVICE))
    leaves = {name: value.detach().float().requires_grad_(True) for name, value in features.items()}

    def step():
        terms[term_name](leaves).backward()
        synchronize(DEVICE)

    step()
    names = {"sampled": "today: reference loss, sampled 500 per layer",
             "sampled_fused": "fused op, sampled 500 per layer",
             "exact": "fused op, exact over whole sheets"}
    benchmark.group = f"spatial term alone {MODEL} batch {BATCH} {DEVICE}: ours vs today"
    benchmark.pedantic(step, rounds=10, iterations=1)
    benchmark.extra_info.update(device=DEVICE, batch=BATCH, peak_mb=None,
                                clips_per_s=BATCH / benchmark.stats.stats.median)
    record(benchmark, names[term_name], baseline=names["sampled"])
    print(f"\nspatial term {names[term_name]}: {benchmark.stats.stats.median * 1e3:8.2f} ms")
