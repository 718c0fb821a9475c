"""Launch configurations of the Triton weighted-sum kernel (W Z over all pairs), on a GPU.

    python bench/sweep_spatial_triton.py [OUTFILE]

For each configuration: a correctness check against the float64 chunked PyTorch sums (N = 1000),
then the median time (triton.testing.do_bench) at the sheet sizes that matter: a CochResNet50
stage in training (N = 14,336, B = 64) and the issue's benchmark size (N = 16,384, B = 256).
Prints a table, best first per size; the chosen default is WEIGHTED_SUM in
kernels/spatial_loss.py.
"""
import json
import sys

import torch
import triton.testing
from topoaudio.kernels import spatial_loss as kernels

from topoaudio.ops import spatial_torch
from topoaudio.ops.spatial_common import unit_vectors

SIZES = [(14336, 64), (16384, 256)]
CONFIGS = [
    dict(BLOCK_I=64, BLOCK_J=64, BLOCK_B=64, num_warps=4, num_stages=2),
    dict(BLOCK_I=32, BLOCK_J=64, BLOCK_B=64, num_warps=4, num_stages=2),
    dict(BLOCK_I=128, BLOCK_J=64, BLOCK_B=64, num_warps=4, num_stages=2),
    dict(BLOCK_I=128, BLOCK_J=64, BLOCK_B=64, num_warps=8, num_stages=2),
    dict(BLOCK_I=64, BLOCK_J=32, BLOCK_B=64, num_warps=4, num_stages=2),
    dict(BLOCK_I=64, BLOCK_J=128, BLOCK_B=64, num_warps=4, num_stages=2),
    dict(BLOCK_I=64, BLOCK_J=64, BLOCK_B=64, num_warps=8, num_stages=2),
    dict(BLOCK_I=64, BLOCK_J=64, BLOCK_B=64, num_warps=4, num_stages=3),
    dict(BLOCK_I=64, BLOCK_J=64, BLOCK_B=64, num_warps=4, num_stages=4),
    dict(BLOCK_I=128, BLOCK_J=64, BLOCK_B=64, num_warps=8, num_stages=3),
    dict(BLOCK_I=128, BLOCK_J=128, BLOCK_B=64, num_warps=8, num_stages=3),
    dict(BLOCK_I=64, BLOCK_J=128, BLOCK_B=64, num_warps=4, num_stages=3),
    dict(BLOCK_I=32, BLOCK_J=64, BLOCK_B=64, num_warps=4, num_stages=3),
    dict(BLOCK_I=32, BLOCK_J=128, BLOCK_B=64, num_warps=4, num_stages=3),
    dict(BLOCK_I=64, BLOCK_J=64, BLOCK_B=128, num_warps=8, num_stages=2),
    dict(BLOCK_I=128, BLOCK_J=64, BLOCK_B=128, num_warps=8, num_stages=3),
]


def inputs(n_units, batch, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, n_units, generator=generator)
    positions = torch.rand(n_units, 2, generator=generator) * 20
    z, _ = unit_vectors(features.cuda(), 1e-6)
    return z, positions.cuda()


def max_error(config, splits=None):
    z, positions = inputs(1000, 64)
    got = kernels.weighted_sum(z, positions, config, splits)
    expected = spatial_torch.weighted_sum(z.double().cpu(), positions.double().cpu())
    return max(float((g.double().cpu() - e).abs().max() / e.abs().max())
               for g, e in zip(got, expected, strict=True))


def main(out_path=None):
    rows = []
    cases = [(config, None) for config in CONFIGS] + [(CONFIGS[0], 1)]  # last: no column split
    for config, splits in cases:
        label = " ".join(f"{k}={v}" for k, v in config.items()) + ("" if splits is None else " splits=1")
        try:
            error = max_error(config, splits)
        except Exception as failure:  # a configuration the compiler rejects (registers, shared memory)
            print(f"FAIL {label}: {type(failure).__name__}: {str(failure)[:200]}", flush=True)
            continue
        for n_units, batch in SIZES:
            z, positions = inputs(n_units, batch)
            used = kernels.n_splits(n_units, batch, dict(kernels.WEIGHTED_SUM, **config)) \
                if splits is None else splits
            def call(z=z, positions=positions, config=config, splits=splits):
                return kernels.weighted_sum(z, positions, config, splits)

            ms = triton.testing.do_bench(call, warmup=10, rep=60, return_mode="median")
            tflops = 2 * n_units ** 2 * batch / ms / 1e9
            rows.append(dict(config=config, forced_splits=splits, splits=used, n=n_units, batch=batch,
                             ms=ms, tflops=tflops, max_rel_error=error))
            print(f"{label:70s} N={n_units:6d} B={batch:3d} splits={used:2d}: {ms:7.3f} ms "
                  f"{tflops:6.1f} TFLOP/s  err {error:.1e}", flush=True)
    print("\nbest per size:")
    for n_units, batch in SIZES:
        mine = sorted((r for r in rows if (r["n"], r["batch"]) == (n_units, batch)
                       and r["max_rel_error"] < 1e-5), key=lambda r: r["ms"])
        for r in mine[:3]:
            print(f"  N={n_units} B={batch}: {r['ms']:.3f} ms {r['tflops']:.1f} TFLOP/s "
                  f"splits={r['splits']} {r['config']}")
    if out_path:
        with open(out_path, "w") as out:
            json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), out,
                      indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
