"""Benchmark set-up: the device under test, and peak memory measured outside the timed loop."""
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

HERE = pathlib.Path(__file__).resolve().parent


def bench_device() -> str:
    return os.environ.get("TOPOAUDIO_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(script_args: list[str], step=None) -> float:
    """Peak memory (MB) of one call. CPU: measured in a fresh process by bench/peak_memory.py (peak
    RSS above the process's baseline; earlier calls in this process would hide it). CUDA, when the
    benchmark's own `step` is given: in this process, torch.cuda.max_memory_allocated above what was
    allocated before the call; the caching allocator's counters see every allocation, so no fresh
    process is needed (one costs seconds of CUDA start-up per case)."""
    if step is not None and bench_device() == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    result = subprocess.run([sys.executable, str(HERE / "peak_memory.py"), *script_args],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"peak_memory.py {' '.join(script_args)} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"]


@pytest.fixture(scope="session")
def device():
    return bench_device()
