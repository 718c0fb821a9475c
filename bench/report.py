"""Markdown tables from a pytest-benchmark JSON file, with ratios against the reference.

    python bench/report.py bench/last.json
"""
import json
import platform
import subprocess
import sys
from collections import defaultdict


def machine(info: dict) -> str:
    cpu = info.get("cpu", {}).get("brand_raw", platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {torch.get_num_threads()} threads; {gpu}; torch {torch.__version__}, "
            f"python {platform.python_version()}; commit {commit}")


def _label(bench: dict) -> str:
    if "variant" in bench["extra_info"]:  # written by conftest.record
        return bench["extra_info"]["variant"]
    params = bench.get("params") or {}
    for key in ("backend", "topo", "dtype"):
        if key in params:
            return str(params[key])
    return bench["name"]


def main(path: str) -> None:
    data = json.load(open(path))
    print(f"Machine: {machine(data.get('machine_info', {}))}\n")
    groups = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench["group"]].append(bench)
    for group, benches in groups.items():
        # the baseline each row is compared with: the one conftest.record names (the reference op,
        # the step without topography, today's step), else a row labelled reference or none
        named = benches[0]["extra_info"].get("baseline")
        reference = next((b for b in benches if _label(b) in ((named,) if named else ("reference", "none"))),
                         None)
        print(f"**{group}**\n")
        rate_key = "clips_per_s" if "clips_per_s" in benches[0]["extra_info"] else "tflops_per_product"
        rate_name = "clips/s" if rate_key == "clips_per_s" else "TFLOP/s (2 N² B)"
        print(f"| variant | median ms | {rate_name} | peak MB | speed-up vs baseline "
              "| memory vs baseline | check against the reference |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for bench in benches:
            median, extra = bench["stats"]["median"], bench["extra_info"]
            speed = memory = "-"
            if reference is not None:
                speed = f"{reference['stats']['median'] / median:.2f}x"
                if reference["extra_info"].get("peak_mb") and extra.get("peak_mb") is not None:
                    memory = f"{extra['peak_mb'] / reference['extra_info']['peak_mb']:.3f}"
            backend = _label(bench)
            rate = extra.get(rate_key, extra.get("tflops", float("nan")))
            peak = "n/a" if extra.get("peak_mb") is None else f"{extra['peak_mb']:.0f}"
            print(f"| {backend} | {median * 1e3:.1f} | {rate:.{1 if rate_key == 'clips_per_s' else 3}f} "
                  f"| {peak} | {speed} | {memory} | {extra.get('check', '-')} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/last.json")
