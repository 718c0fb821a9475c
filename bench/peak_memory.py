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
    ops.cochleagram(waveform[:1, :4000], backend=args.backend)  # load kernels, plans, filters
    ops.cochleagram(waveform[:1], backend=args.backend)
    if args.mode == "forward":
        return lambda: ops.cochleagram(waveform, backend=args.backend)
    leaf = waveform.requires_grad_(True)
    return lambda: ops.cochleagram(leaf, backend=args.backend).sum().backward()


CALLS = {"cochleagram": cochleagram_call}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("op", choices=sorted(CALLS))
    parser.add_argument("--backend", required=True)
    parser.add_argument("--mode", choices=("forward", "forward_backward"), required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--length", type=int, default=40000)
    parser.add_argument("--device", default="cpu")
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
