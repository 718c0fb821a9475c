"""The training loop: DDP on one CPU, one GPU or many nodes (torchrun), exact resume.

Data order is a pure function of (seed, step): a resumed run reads the same batches, with the same
RNG state, as a run that never stopped. Rank 0 holds the run directory's lock for the whole run
(run_dir.RunLock: a second run or resume on the same directory is refused, naming the owner's pid),
logs JSON lines and shows a progress bar.
"""
from __future__ import annotations

import copy
import functools
import json
import math
import os
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from topoaudio import checkpoint
from topoaudio.environment import environment
from topoaudio.models import build_model, frontend_of, tapped

from . import run_dir
from .config import ADDED_SETTINGS, TrainConfig
from .data import FrontendCollate, build_datasets, collate
from .divergence import (
    TrainingDiverged,
    all_ranks_agree,
    first_non_finite_output,
    first_non_finite_state,
    state_is_finite,
)
from .objective import Objective, accuracy, correct_and_labelled, fractions, labels_to
from .topography import TopographicLosses


def _init_distributed() -> bool:
    """Join torchrun's process group when there is one to join; True when this call created it.
    Collectives on CPU tensors go through gloo and on CUDA tensors through NCCL, so the group does
    not depend on the run's device, which a resumed run only knows from its checkpoint."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        return False
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return True


def _rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _from_rank_0(value, world: int):
    """Rank 0's `value` on every rank (the default run directory holds the time, which can differ
    between ranks by a second)."""
    if world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def _setup_device(config: TrainConfig):
    rank, world = _rank_and_world()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA GPU is visible")
    device = torch.device(f"cuda:{local_rank}" if want_cuda else "cpu")
    if want_cuda:
        torch.cuda.set_device(device)
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


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (avx512_bf16 or AMX): elsewhere oneDNN emulates
    bf16 convolutions, slower than float32."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line for line in handle if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolved_cpu_amp(setting: str, device: torch.device) -> str:
    """cpu_amp as the run will use it, "on" or "off" (off on GPUs: `amp` rules there)."""
    if device.type != "cpu":
        return "off"
    if setting == "auto":
        return "on" if native_bf16() else "off"
    return setting


def resolved_frontend_in_workers(config: TrainConfig, device: torch.device) -> bool:
    """Whether this run computes its cochleagrams in the DataLoader workers (frontend_in_workers)."""
    if config.frontend_in_workers == "auto":
        return device.type == "cpu" and config.num_workers >= 1
    if config.frontend_in_workers == "on" and device.type != "cpu":
        raise ValueError(f"frontend_in_workers=on computes the cochleagrams on the CPU, in the "
                         f"DataLoader workers; this run trains on {device.type}, where the front "
                         f"end runs on the device: use frontend_in_workers auto or off")
    return config.frontend_in_workers == "on"


@contextmanager
def _threads(count: int):
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _frontend_placement(model: nn.Module, in_workers: bool, num_workers: int):
    """While the workers compute the cochleagrams, the model's front end passes them on and the
    main process keeps the cores the workers leave it: torch threads minus one per worker, at
    least one (2 cores, 1 worker: 1 thread; a second thread in the main process competed with the
    worker and lost 1-4 % in the measurements, bench/RESULTS.md). Both are restored afterwards.
    Yields the thread count from before, for the validation (computed in the main process while
    the workers wait)."""
    threads = torch.get_num_threads()
    if not in_workers:
        yield threads
        return
    model.frontend.precomputed = True
    try:
        with _threads(max(1, threads - num_workers)):
            yield threads
    finally:
        model.frontend.precomputed = False


def _autocast(config: TrainConfig, device: torch.device):
    """bf16 autocast of the forward pass (the loss and its backward follow the autocast dtypes):
    on GPUs by `amp`, on the CPU by `cpu_amp` (resolved to on/off before the run starts)."""
    if device.type == "cuda" and config.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and config.cpu_amp == "on":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


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


@torch.no_grad()
def validation_accuracy(model: nn.Module, dataset, device, batch_size: int = 32,
                        progress: bool = False):
    """Accuracy on `dataset`: a float for a one-head model; for a multi-task model {task: accuracy
    over the clips that task labels, or None when it labels none}."""
    was_training = model.training
    model.eval()
    correct: dict = {}
    labelled: dict = {}
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc="validation", unit="batch", leave=False, disable=not progress,
                      dynamic_ncols=True):
        waveforms, labels = collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
        logits = model(waveforms.to(device))
        if not isinstance(logits, dict):  # one head: every clip is labelled
            logits, labels = {None: logits}, {None: labels}
        batch_correct, batch_labelled = correct_and_labelled(logits, labels)
        for task in batch_correct:
            correct[task] = correct.get(task, 0) + batch_correct[task]
            labelled[task] = labelled.get(task, 0) + batch_labelled[task]
    model.train(was_training)
    result = fractions(correct, labelled)
    return result[None] if list(result) == [None] else result


# channels_last: oneDNN's (and cuDNN's) fast convolution layout; on 2 CPU cores the cochcnn's
# forward+backward took a fraction of the time in it (issue 20, bench/RESULTS.md). Same weights and
# state-dict values, only the strides differ (checkpoints load into either layout);
# bench/train_throughput.py sets it back to measure the step as it was.
MEMORY_FORMAT = torch.channels_last


def train(config: TrainConfig | None = None, resume: bool = False, *,
          requested: dict | None = None) -> dict:
    """Train; returns the final metrics (rank 0) and leaves checkpoint.pt, config.json and
    metrics.jsonl in the run directory (config.out, or runs/<model>-<topo>-<time>).

    resume=True continues the run in config.out (default: the latest under runs/) with the
    settings saved in its checkpoint: `requested` (the settings given on the command line) or every
    setting of `config` must equal the saved ones, except those run_dir.CHANGEABLE_ON_RESUME lets a
    resumed run change."""
    if config is None and not resume:
        raise TypeError("train: a new run needs a TrainConfig")
    if requested is None:
        requested = config.to_dict() if config is not None else {}
    started = time.perf_counter()
    created_group = _init_distributed()
    try:
        result = _train(config, resume, requested, started)
        if created_group:
            # No rank tears the group down while another still talks to it (gloo aborts a peer
            # whose connection closes mid-collective). Only on success: after a failure the
            # other ranks may be gone, and a barrier would wait for them forever.
            dist.barrier()
        return result
    finally:
        if created_group:
            dist.destroy_process_group()


def _train(config: TrainConfig | None, resume: bool, requested: dict, started: float) -> dict:
    rank, world = _rank_and_world()
    out = requested.get("out") or (
        (run_dir.latest_run() if resume else run_dir.default_out(config)) if rank == 0 else "")
    out = _from_rank_0(out, world)
    if resume and not out:
        raise FileNotFoundError("--resume: no run with a checkpoint under runs/; pass --out DIR")
    lock = _lock_run_dir(out, resume, rank, world)
    try:
        return _run(config, resume, requested, started, out)
    finally:
        if lock is not None:
            lock.release()


def _lock_run_dir(out: str, resume: bool, rank: int, world: int) -> run_dir.RunLock | None:
    """Rank 0 locks the run directory before anything reads or writes it, so that one run owns
    it; every rank raises rank 0's refusal. A resume of a directory that is not there takes no
    lock (loading its checkpoint then says what is missing)."""
    lock, failure = None, None
    if rank == 0 and (not resume or os.path.exists(out)):
        try:
            lock = run_dir.RunLock.acquire(out, create=not resume)
        except (OSError, ValueError) as error:
            failure = error
    failure = _from_rank_0(failure, world)
    if failure is not None:
        raise failure
    return lock


def _run(config: TrainConfig | None, resume: bool, requested: dict, started: float,
         out: str) -> dict:
    ckpt_path = os.path.join(out, checkpoint.CHECKPOINT_NAME)
    if resume:
        state = checkpoint.load(ckpt_path)
        if isinstance(state.get("config"), dict):  # a run saved before a setting existed resumes
            state["config"] = {**copy.deepcopy(ADDED_SETTINGS), **state["config"]}
        checkpoint.check_training_state(state, ckpt_path, config_keys=TrainConfig().to_dict())
        config = run_dir.resumed_config(state["config"], requested, state["step"], out)
    else:
        run_dir.check_new_run(out)
        config.out = out
    rank, world, device = _setup_device(config)
    if not resume:  # the saved config says what "auto" chose: a resumed run computes as it began
        config.cpu_amp = resolved_cpu_amp(config.cpu_amp, device)
    in_workers = resolved_frontend_in_workers(config, device)  # refused settings: before any work
    train_set, val_set = build_datasets(config)
    objective = Objective.for_dataset(config, train_set)
    if resume:
        checkpoint.check_tasks(state, objective.tasks, ckpt_path)
    torch.manual_seed(config.seed)
    model = build_model(config.model, **objective.model_heads(), **frontend_of(config.to_dict()),
                        pooling=config.pooling or None).to(device, memory_format=MEMORY_FORMAT)
    topo = TopographicLosses(config, model, device, clip_samples=train_set[0][0].numel())
    optimizer = (torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
                 if config.optimizer == "adamw" else
                 torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                 weight_decay=config.weight_decay))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    start_step = 0
    if resume:
        checkpoint.restore(state, ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler,
                           topography=topo)
        checkpoint.set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0],
                                 ckpt_path)
        start_step = state["step"]
    ddp_model = (nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                                     else None) if world > 1 else model)
    if rank == 0:  # written only now that the run has started, or resumed, without an error
        os.makedirs(config.out, exist_ok=True)
        run_dir.write_json_atomic(os.path.join(config.out, run_dir.CONFIG_NAME), config.to_dict())
        run_dir.keep_metrics_up_to(os.path.join(config.out, run_dir.METRICS_NAME), start_step)
        with open(os.path.join(config.out, run_dir.ENVIRONMENT_NAME), "a") as handle:
            handle.write(json.dumps({**environment(), "start_step": start_step, "world_size": world,
                                     "frontend_in_workers": in_workers}) + "\n")
    autocast = _autocast(config, device)
    metrics_path = os.path.join(config.out, "metrics.jsonl")
    progress = tqdm(total=config.steps, initial=start_step, disable=rank != 0, desc="train",
                    unit="step", dynamic_ncols=True)
    last: dict = {}
    with _frontend_placement(model, in_workers, config.num_workers) as all_threads:
        model.train()
        loader = torch.utils.data.DataLoader(
            train_set, batch_sampler=StepBatches(config, len(train_set), rank, world, start_step),
            num_workers=config.num_workers, pin_memory=device.type == "cuda",
            collate_fn=FrontendCollate(model.frontend) if in_workers else collate)
        tic = time.perf_counter()
        # inputs: waveforms, or cochleagrams when the workers compute them
        for step, (inputs, labels) in zip(range(start_step, config.steps), loader, strict=True):
            inputs, labels = inputs.to(device), labels_to(labels, device)
            with autocast, tapped(model, topo.layers) as features:
                logits = ddp_model(inputs)
                task_loss, task_terms = objective.loss(logits, labels)
            topo_total, topo_terms = topo(features, step)
            loss = task_loss + topo_total
            _check_finite(loss, task_loss, topo_terms, features, step, ckpt_path, world, device,
                          probe=functools.partial(first_non_finite_output, model, inputs))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            done = step + 1
            _check_state(model, optimizer, done, ckpt_path, world, device)
            batch_accuracy = accuracy(logits, labels)
            last = {"step": done, "loss": float(loss.detach()), "task_loss": float(task_loss.detach()),
                    "accuracy": batch_accuracy,
                    **_per_task_losses(task_terms, batch_accuracy),
                    "topo": {name: float(value) for name, value in topo_terms.items()},
                    "lr": scheduler.get_last_lr()[0],
                    "clips_per_s": config.batch_size / (time.perf_counter() - tic)}
            if rank == 0:
                progress.update(1)
                progress.set_postfix(loss=f"{last['loss']:.3f}", batch_acc=_short(batch_accuracy))
                if done % config.log_every == 0 or done == config.steps:
                    _append_json(metrics_path, last)
                if done % config.eval_every == 0 or done == config.steps:
                    with _threads(all_threads):  # the workers wait meanwhile
                        last["val_accuracy"] = validation_accuracy(model, val_set, device,
                                                                   progress=True)
                    last["chance"] = objective.chance()
                    _append_json(metrics_path, {"step": done, "val_accuracy": last["val_accuracy"],
                                                "chance": last["chance"]})
            if done % config.checkpoint_every == 0 or done == config.steps:
                _save(config, model, optimizer, scheduler, topo, objective, done, ckpt_path, rank, world)
            tic = time.perf_counter()  # throughput counts the step, not evaluation or checkpointing
        progress.close()
    _log_skipped_files(metrics_path, config.steps, {"train": train_set, "validation": val_set},
                       rank, world, device)
    if rank == 0:
        print(run_dir.summary(config.out, last, time.perf_counter() - started), flush=True)
    return last


def _kept(ckpt_path: str) -> str:
    return (f"; the last good checkpoint {ckpt_path} is kept" if os.path.exists(ckpt_path)
            else "; no checkpoint was written")


def _check_finite(loss, task_loss, topo_terms, features, step, ckpt_path, world, device,
                  probe) -> None:
    """Stop every rank (all-reduced) when the loss of `step` is not finite, naming where it came
    from: a tapped layer's non-finite features, a layer's topographic term, or the first module
    whose output overflowed (`probe` re-runs the batch, only on this failure path)."""
    if all_ranks_agree(bool(torch.isfinite(loss)), device, world):
        return
    bad_features = [layer for layer, value in features.items()
                    if layer in topo_terms and not bool(torch.isfinite(value).all())]
    culprits = [name for name, value in topo_terms.items() if not math.isfinite(float(value))]
    if bad_features:
        where = f"non-finite features of layer {bad_features[0]} in the spatial loss"
    elif culprits:
        where = f"the topographic loss of layer(s) {culprits}"
    elif not math.isfinite(float(task_loss.detach())):
        layer = probe()
        where = f"the task loss (first non-finite output: layer {layer})" if layer else "the task loss"
    else:
        where = "another rank"
    raise TrainingDiverged(f"non-finite loss at step {step + 1}, from {where}{_kept(ckpt_path)}")


def _check_state(model, optimizer, step, ckpt_path, world, device) -> None:
    """After each optimiser step: one fused, all-reduced finiteness check of the weights and the
    optimiser state, so a non-finite state stops every rank before it can be saved."""
    if state_is_finite(model, optimizer, device, world):
        return
    name = first_non_finite_state(model, optimizer)
    where = f"first in {name}" if name else "on another rank"
    raise TrainingDiverged(f"non-finite weights after step {step}, {where}{_kept(ckpt_path)}")


def _per_task_losses(terms: dict, batch_accuracy) -> dict:
    """{"task_losses": {task: loss}} for a multi-task batch ({} for one head); a task that labels no
    clip of the batch logs None, like its accuracy, rather than the 0 it adds to the loss."""
    if not terms:
        return {}
    values = torch.stack([term.detach().float() for term in terms.values()]).tolist()  # one sync
    return {"task_losses": {task: None if batch_accuracy[task] is None else value
                            for task, value in zip(terms, values, strict=True)}}


def _short(batch_accuracy) -> str:
    if not isinstance(batch_accuracy, dict):
        return f"{batch_accuracy:.2f}"
    return " ".join(f"{task[:4]}={'-' if value is None else f'{value:.2f}'}"
                    for task, value in batch_accuracy.items())


def _save(config, model, optimizer, scheduler, topo, objective, step, ckpt_path, rank,
          world) -> None:
    device = next(model.parameters()).device
    _check_state(model, optimizer, step, ckpt_path, world, device)  # never write a NaN state
    rng = checkpoint.rng_state()
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, rng)
        rng_states = gathered
    else:
        rng_states = [rng]
    failure = None
    if rank == 0:
        try:
            checkpoint.save_atomic({"format_version": checkpoint.FORMAT_VERSION, "step": step,
                                    "config": config.to_dict(), "model": model.state_dict(),
                                    "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(),
                                    "topography": topo.state_dict(), "rng": rng_states,
                                    "tasks": objective.tasks}, ckpt_path)
        except checkpoint.CheckpointWriteError as error:
            failure = error
    # all-reduced, so that every rank stops when rank 0 could not write (it also waits for the write)
    if not all_ranks_agree(failure is None, device, world):
        raise failure or checkpoint.CheckpointWriteError(
            f"rank 0 could not write checkpoint {ckpt_path} at step {step}")


def _log_skipped_files(metrics_path, step, datasets: dict, rank, world, device) -> None:
    """Once per run: how many audio files each split skipped as unreadable (over every rank and
    DataLoader worker), in metrics.jsonl and on the console. Generated data reads no files."""
    counts = {}
    for split, dataset in datasets.items():
        if not hasattr(dataset, "unreadable_mask"):
            continue
        flags = dataset.unreadable_mask().to(device=device, dtype=torch.float32)
        if world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        counts[split] = int(flags.sum())
    if rank == 0 and counts:
        _append_json(metrics_path, {"step": step, "skipped_files": counts})
        if any(counts.values()):
            print("skipped unreadable audio files (named in the warnings above): "
                  + ", ".join(f"{split} {count}" for split, count in counts.items()), flush=True)


def _append_json(path: str, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
