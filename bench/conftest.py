"""Benchmark set-up: the device under test, peak memory measured outside the timed loop, the
`--full` option, the correctness check every case passes before it is timed, and the one summary
table printed at the end of the run."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

HERE = pathlib.Path(__file__).resolve().parent
# One row per timed case, appended by record() and printed by pytest_terminal_summary.
ROWS: list[dict] = []


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="topoaudio benchmarks: also the large cases, the chunked PyTorch "
                          "fallbacks and the voxel pipeline (the quick default runs the sizes "
                          "behind the README's claims)")


def pytest_configure(config):
    config.addinivalue_line("markers", "full: a large case, run only with --full")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full"):
        return
    skip = pytest.mark.skip(reason="large case: run with --full")
    for item in items:
        if "full" in item.keywords:
            item.add_marker(skip)


def bench_device() -> str:
    return os.environ.get("TOPOAUDIO_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _tests_module(name: str):
    """A module of tests/, loaded under another name (bench/ has files of the same names), so the
    benchmarks check with the very tolerances the correctness tests assert."""
    spec = importlib.util.spec_from_file_location(f"_tests_{name}", HERE.parent / "tests" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spatial_tolerances(dtype: torch.dtype) -> tuple[float, float, float]:
    """(value rel., gradient rel. of the norm, gradient absolute floor) of tests/test_spatial_loss.py."""
    tests = _tests_module("test_spatial_loss")
    return (*tests.TOLERANCES[dtype], tests.GRADIENT_FLOOR[dtype])


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


def record(benchmark, variant: str, *, baseline: str = "reference", check: str = "-",
           peak_mb: float | None = None) -> None:
    """One row of the end-of-run table: the group's median against its baseline variant's. The
    JSON gets the same fields, for bench/report.py."""
    benchmark.extra_info.update(variant=variant, baseline=baseline, check=check)
    ROWS.append(dict(group=benchmark.group, variant=variant, baseline=baseline, check=check,
                     median=benchmark.stats.stats.median, peak_mb=peak_mb))


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own tables: the run ends with this one
def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    write = terminalreporter.write_line
    terminalreporter.write_sep("=", "topoaudio benchmarks: speed-up and memory against the baseline")
    write(f"device {bench_device()}, {torch.get_num_threads()} torch threads; medians; "
          "check = value and gradient within tests/' tolerances of the reference")
    groups: dict[str, list[dict]] = {}
    for row in ROWS:
        groups.setdefault(row["group"], []).append(row)
    width = max(len(row["variant"]) for row in ROWS)
    for group, rows in groups.items():
        write("")
        write(group)
        write(f"  {'variant':{width}s} {'median ms':>11s} {'speed-up':>9s} {'peak MB':>9s} "
              f"{'memory':>7s}  check")
        base = next((r for r in rows if r["variant"] == r["baseline"]), None)
        for row in rows:
            speed = memory = "-"
            if base is not None:
                speed = f"{base['median'] / row['median']:.2f}x"
                if base["peak_mb"] and row["peak_mb"] is not None:
                    memory = f"{row['peak_mb'] / base['peak_mb']:.3f}"
            peak = "-" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}"
            write(f"  {row['variant']:{width}s} {row['median'] * 1e3:11.1f} {speed:>9s} {peak:>9s} "
                  f"{memory:>7s}  {row['check']}")


@pytest.fixture(scope="session")
def device():
    return bench_device()
