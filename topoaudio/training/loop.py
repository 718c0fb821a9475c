"""The training loop: DDP on one CPU, one GPU or many nodes (torchrun), exact resume.

Data order is a pure function of (seed, step): a resumed run reads the same batches, with the same
RNG state, as a run that never stopped. Rank 0 logs JSON lines and shows a progress bar.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from topoaudio import checkpoint
from topoaudio.models import build_model, tapped

from .config import TrainConfig
from .data import build_datasets, collate
from .topography import TopographicLosses


class TrainingDiverged(RuntimeError):
    """A non-finite loss: training stopped, the last good checkpoint is kept."""


def _setup_distributed(config: TrainConfig):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA GPU is visible")
    device = torch.device(f"cuda:{local_rank}" if want_cuda else "cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    if config.batch_size % world or config.batch_size // world < 2:
        raise ValueError(f"batch_size {config.batch_size} must split into >= 2 clips on each of "
                         f"{world} ranks")
    return rank, world, device


def batch_indices(step: int, config: TrainConfig, n_items: int, rank: int, world: int) -> list[int]:
    """This rank's dataset indices for `step`: epochs are permutations seeded by (seed, epoch)."""
    start = step * config.batch_size
    indices: list[int] = []
    while len(indices) < config.batch_size:
        epoch, offset = divmod(start + len(indices), n_items)
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(n_items, generator=generator)
        indices += order[offset:offset + config.batch_size - len(indices)].tolist()
    per_rank = config.batch_size // world
    return indices[rank * per_rank:(rank + 1) * per_rank]


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler yielding this rank's indices for steps start..steps-1, so a DataLoader with
    workers prefetches exactly the batches a resumed run would read."""

    def __init__(self, config: TrainConfig, n_items: int, rank: int, world: int, start: int):
        self.config, self.n_items, self.rank, self.world, self.start = config, n_items, rank, world, start

    def __iter__(self):
        for step in range(self.start, self.config.steps):
            yield batch_indices(step, self.config, self.n_items, self.rank, self.world)

    def __len__(self) -> int:
        return self.config.steps - self.start


def _lr_lambda(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_schedule == "constant":
            return 1.0
        horizon = config.schedule_steps or config.steps
        progress = (step - config.warmup_steps) / max(1, horizon - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _default_out(config: TrainConfig) -> str:
    return os.path.join("runs", f"{config.model}-{config.topo}-{time.strftime('%Y%m%d-%H%M%S')}")


def _latest_run() -> str | None:
    if not os.path.isdir("runs"):
        return None
    runs = [os.path.join("runs", name) for name in os.listdir("runs")
            if os.path.isfile(os.path.join("runs", name, checkpoint.CHECKPOINT_NAME))]
    return max(runs, key=os.path.getmtime) if runs else None


@torch.no_grad()
def validation_accuracy(model: nn.Module, dataset, device, batch_size: int = 32) -> float:
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(dataset), batch_size):
        waveforms, labels = collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
        logits = model(waveforms.to(device))
        correct += int((logits.argmax(dim=1).cpu() == labels).sum())
    model.train(was_training)
    return correct / len(dataset)


def train(config: TrainConfig, resume: bool = False) -> dict:
    """Train; returns the final metrics (rank 0) and leaves checkpoint.pt and metrics.jsonl in
    config.out."""
    rank, world, device = _setup_distributed(config)
    if resume and not config.out:
        config.out = _latest_run() or ""
        if not config.out:
            raise FileNotFoundError("--resume: no run with a checkpoint under runs/; pass --out DIR")
    config.out = config.out or _default_out(config)
    ckpt_path = os.path.join(config.out, checkpoint.CHECKPOINT_NAME)
    if not resume and os.path.exists(ckpt_path):
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue that run, or another "
                              "--out, so that nothing is overwritten")
    train_set, val_set = build_datasets(config)
    torch.manual_seed(config.seed)
    model = build_model(config.model, len(train_set.classes)).to(device)
    topo = TopographicLosses(config, model, device, clip_samples=train_set[0][0].numel())
    optimizer = (torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
                 if config.optimizer == "adamw" else
                 torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                 weight_decay=config.weight_decay))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    start_step = 0
    if resume:
        state = checkpoint.load(ckpt_path, expected_model=config.model)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        topo.load_state_dict(state["topography"])
        checkpoint.set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        start_step = state["step"]
    ddp_model = (nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                                     else None) if world > 1 else model)
    if rank == 0:
        os.makedirs(config.out, exist_ok=True)
        with open(os.path.join(config.out, "config.json"), "w") as handle:
            json.dump(config.to_dict(), handle, indent=2)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and config.amp
                else nullcontext())
    metrics_path = os.path.join(config.out, "metrics.jsonl")
    progress = tqdm(total=config.steps, initial=start_step, disable=rank != 0, desc="train",
                    unit="step", dynamic_ncols=True)
    last: dict = {}
    model.train()
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=StepBatches(config, len(train_set), rank, world, start_step),
        num_workers=config.num_workers, collate_fn=collate, pin_memory=device.type == "cuda")
    tic = time.perf_counter()
    for step, (waveforms, labels) in zip(range(start_step, config.steps), loader, strict=True):
        waveforms, labels = waveforms.to(device), labels.to(device)
        with autocast, tapped(model, topo.layers) as features:
            logits = ddp_model(waveforms)
            task_loss = nn.functional.cross_entropy(logits.float(), labels)
        topo_total, topo_terms = topo(features, step)
        loss = task_loss + topo_total
        _check_finite(loss, task_loss, topo_terms, step, ckpt_path, world, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        done = step + 1
        accuracy = float((logits.argmax(dim=1) == labels).float().mean())
        last = {"step": done, "loss": float(loss.detach()), "task_loss": float(task_loss.detach()),
                "accuracy": accuracy,
                "topo": {name: float(value) for name, value in topo_terms.items()},
                "lr": scheduler.get_last_lr()[0],
                "clips_per_s": config.batch_size / (time.perf_counter() - tic)}
        if rank == 0:
            progress.update(1)
            progress.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{accuracy:.2f}")
            if done % config.log_every == 0 or done == config.steps:
                _append_json(metrics_path, last)
            if done % config.eval_every == 0 or done == config.steps:
                last["val_accuracy"] = validation_accuracy(model, val_set, device)
                _append_json(metrics_path, {"step": done, "val_accuracy": last["val_accuracy"],
                                            "chance": 1 / len(train_set.classes)})
        if done % config.checkpoint_every == 0 or done == config.steps:
            _save(config, model, optimizer, scheduler, topo, done, ckpt_path, rank, world)
        tic = time.perf_counter()  # throughput counts the step, not evaluation or checkpointing
    progress.close()
    return last


def _check_finite(loss, task_loss, topo_terms, step, ckpt_path, world, device) -> None:
    bad = torch.tensor([0.0 if bool(torch.isfinite(loss)) else 1.0], device=device)
    if world > 1:
        dist.all_reduce(bad)  # every rank stops together
    if bad.item() == 0:
        return
    culprits = [name for name, value in topo_terms.items() if not math.isfinite(float(value))]
    where = ("the task loss" if not math.isfinite(float(task_loss.detach()))
             else f"the topographic loss of layer(s) {culprits}" if culprits else "another rank")
    kept = f"; the last good checkpoint {ckpt_path} is kept" if os.path.exists(ckpt_path) else ""
    raise TrainingDiverged(f"non-finite loss at step {step + 1}, from {where}{kept}")


def _save(config, model, optimizer, scheduler, topo, step, ckpt_path, rank, world) -> None:
    rng = checkpoint.rng_state()
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, rng)
        rng_states = gathered
    else:
        rng_states = [rng]
    if rank == 0:
        checkpoint.save_atomic({"format_version": checkpoint.FORMAT_VERSION, "step": step,
                                "config": config.to_dict(), "model": model.state_dict(),
                                "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(),
                                "topography": topo.state_dict(), "rng": rng_states}, ckpt_path)
    if world > 1:
        dist.barrier()


def _append_json(path: str, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
