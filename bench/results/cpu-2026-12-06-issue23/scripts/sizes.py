"""fwd+bwd step at several N (B=64, all pairs relative, random positions), k spinners, 1 vs 2 threads interleaved."""
import sys, time, statistics, subprocess, os
import torch, topoaudio.ops as ops
nspin = int(sys.argv[1]); reps = int(sys.argv[2]); sizes = [int(a) for a in sys.argv[3:]]
cases = {}
for n in sizes:
    g = torch.Generator().manual_seed(0)
    f = torch.randn(64, n, generator=g, requires_grad=True); p = torch.rand(n, 2, generator=g) * 20
    def step(f=f, p=p):
        l = ops.spatial_loss(f, p, backend="cpp"); l.backward(); f.grad = None
    cases[n] = step
spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(nspin)]
time.sleep(0.5)
res = {}
try:
    for n, step in cases.items():
        for t in (1, 2): torch.set_num_threads(t); step()
        ts = {1: [], 2: []}
        inner = max(1, int(2e8 // (n * n * 64)))
        for _ in range(reps):
            for t in (1, 2):
                torch.set_num_threads(t); w = time.perf_counter()
                for _ in range(inner): step()
                ts[t].append((time.perf_counter() - w) / inner)
        res[n] = [1e3 * statistics.median(ts[t]) for t in (1, 2)]
finally:
    for s in spin: s.kill()
tag = os.environ.get("TAG", "")
for n, (a, b) in res.items():
    print(f"{tag} spinners={nspin} N={n:6d} 1thr {a:8.2f} ms 2thr {b:8.2f} ms ratio {b/a:5.2f}")
