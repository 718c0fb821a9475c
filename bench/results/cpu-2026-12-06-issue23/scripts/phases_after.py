"""Wall-clock per phase of the fused CPU loss (after issue 23) at N=8192, B=64, k spinners,
1 vs 2 threads interleaved: the unit-vector region alone (mode 1 = lattice mode: unit vectors, s,
Gram), the whole forward op (unit vectors + W z region), the backward op, the whole step."""
import sys, time, statistics, collections, subprocess, math, os
import torch, importlib
import topoaudio.ops as ops
SL = importlib.import_module("topoaudio.ops.spatial_loss")
nspin = int(sys.argv[1]); reps = int(sys.argv[2])
fwd, bwd = SL._fused_ops()
g = torch.Generator().manual_seed(0)
features = torch.randn(64, 8192, generator=g, requires_grad=True)
positions = torch.rand(8192, 2, generator=g) * 20
sheet = SL._sheet(positions, torch.float32, None, True, None)
x = features.detach(); P = sheet.positions; O = SL._NO_ORDER
stats, z, factor, wz, s, gram = fwd(x, P, O, 1e-6, 0, math.inf, False)
gl = torch.tensor(1.0)
def step():
    l = ops.spatial_loss(features, positions, backend="cpp"); l.backward(); features.grad = None
parts = {"unit_vectors+gram (region 1)": lambda: fwd(x, P, O, 1e-6, 1, math.inf, False),
         "forward op (regions 1+2)": lambda: fwd(x, P, O, 1e-6, 0, math.inf, False),
         "backward op (region 3)": lambda: bwd(gl, z, factor, O, wz, gram, s, P, math.inf, [0.1, 0.2, 0.3, 0.0], 0),
         "whole step": step}
spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(nspin)]
time.sleep(0.5)
res = {t: collections.defaultdict(list) for t in (1, 2)}
try:
    for t in (1, 2):
        torch.set_num_threads(t)
        for fn in parts.values(): fn()
    for _ in range(reps):
        for t in (1, 2):
            torch.set_num_threads(t)
            for name, fn in parts.items():
                w = time.perf_counter(); fn(); res[t][name].append(time.perf_counter() - w)
finally:
    for p_ in spin: p_.kill()
print(f"after: spinners={nspin} reps={reps} load={open('/proc/loadavg').read().split()[:3]}")
for name in parts:
    a, b = (1e3 * statistics.median(res[t][name]) for t in (1, 2))
    print(f"  {name:30s} 1thr {a:8.2f}  2thr {b:8.2f}  ratio {b/a:5.2f}")
