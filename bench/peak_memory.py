"""Peak memory of one op call, in a fresh process so earlier calls cannot hide it.

    python bench/peak_memory.py cochleagram --backend cpp --mode forward --batch 8 --device cpu

Prints one JSON line {"peak_mb": ...}. CPU: the peak resident set (VmHWM, reset right before the
call through /proc/self/clear_refs) above the resident set before the call. Not ru_maxrss: after
fork + exec it still carries the parent's high-water mark. CUDA: torch.cuda.max_memory_allocated
above the memory held before the call.
"""
import argparse
import json

import torch


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_peak_bytes(call) -> int:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident set
    base = _status_kb("VmRSS")
    call()
    return (_status_kb("VmHWM") - base) * 1024


def cochleagram_call(args):
    import topoaudio.ops as ops

    waveform = 0.1 * torch.randn(args.batch, args.length, device=args.device)
    kwargs = dict(backend=args.backend, mode=args.cochleagram_mode)
    ops.cochleagram(waveform[:1, :4000], **kwargs)  # load kernels, plans, filters
    ops.cochleagram(waveform[:1], **kwargs)
    if args.mode == "forward":
        return lambda: ops.cochleagram(waveform, **kwargs)
    leaf = waveform.requires_grad_(True)
    return lambda: ops.cochleagram(leaf, **kwargs).sum().backward()


def spatial_loss_call(args):
    import topoaudio.ops as ops

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(args.batch, args.n, generator=generator).to(args.device)
    positions = (torch.rand(args.n, 2, generator=generator) * 20).to(args.device)
    radius = None if args.radius is None else float(args.radius)
    ops.spatial_loss(features[:, :64], positions[:64], kind=args.kind, radius=radius,
                     backend=args.backend)  # load kernels
    if args.mode == "forward":
        return lambda: ops.spatial_loss(features, positions, kind=args.kind, radius=radius,
                                        backend=args.backend)
    leaf = features.requires_grad_(True)
    return lambda: ops.spatial_loss(leaf, positions, kind=args.kind, radius=radius,
                                    backend=args.backend).backward()


def batch_norm_relu_pool_call(args):
    import topoaudio.ops as ops

    shape = tuple(int(size) for size in args.shape.split(","))
    x = torch.randn(shape, dtype=getattr(torch, args.dtype)).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.ones(shape[1]), torch.zeros(shape[1])
    kwargs = dict(pool=args.pool, backend=args.backend)
    ops.batch_norm_relu_pool(x[:2], weight, bias, **kwargs)  # load the kernels
    if args.mode == "forward":
        return lambda: ops.batch_norm_relu_pool(x, weight, bias, **kwargs)
    leaf = x.requires_grad_(True)
    return lambda: ops.batch_norm_relu_pool(leaf, weight, bias, **kwargs).sum().backward()


CALLS = {"cochleagram": cochleagram_call, "spatial_loss": spatial_loss_call,
         "batch_norm_relu_pool": batch_norm_relu_pool_call}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("op", choices=sorted(CALLS))
    parser.add_argument("--backend", required=True)
    parser.add_argument("--mode", choices=("forward", "forward_backward"), required=True)
    parser.add_argument("--cochleagram_mode", choices=("exact", "fast"), default="exact",
                        help="cochleagram: the exact op or the fast mode (default oversample)")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--length", type=int, default=40000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=8192, help="units (spatial_loss)")
    parser.add_argument("--kind", default="relative")
    parser.add_argument("--radius", type=float, default=None)
    parser.add_argument("--shape", default="16,24,106,195", help="N,C,H,W (batch_norm_relu_pool)")
    parser.add_argument("--dtype", default="float32", help="batch_norm_relu_pool")
    parser.add_argument("--pool", action="store_true", help="batch_norm_relu_pool: the 2x2 max-pool")
    args = parser.parse_args()
    call = CALLS[args.op](args)
    if args.device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = cpu_peak_bytes(call)
    print(json.dumps({"peak_mb": peak / 2 ** 20}))


if __name__ == "__main__":
    main()
