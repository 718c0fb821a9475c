"""Wall-clock per phase of the CPU all-pairs relative loss at N=8192, B=64 (replica of
_CpuSpatialLoss's op sequence), k spinners, 1 vs 2 threads, interleaved."""
import subprocess, sys, time, statistics, collections
import torch
from topoaudio.ops import dispatch
from topoaudio.ops.spatial_common import constant, power_of_two_above, relative_positions
nspin = int(sys.argv[1]); reps = int(sys.argv[2])
ext = dispatch.extension()
g = torch.Generator().manual_seed(0)
features = torch.randn(64, 8192, generator=g)
pos = relative_positions(torch.rand(8192, 2, generator=g) * 20, torch.float32)
T = collections.defaultdict(list)
def step(rec):
    t = [time.perf_counter()]
    def mark(name):
        t.append(time.perf_counter()); rec[name].append(t[-1] - t[-2])
    x = features
    largest = x.abs().amax(dim=0); peak = largest.amax(dim=0, keepdim=True)
    batch, n = x.shape
    scale = power_of_two_above(largest); x = x / scale
    mean = x.sum(dim=0, keepdim=True).div_(constant(batch, x.dtype)); centred = x - mean
    norm2 = (centred * centred).sum(dim=0, keepdim=True)
    live = norm2 > torch.addcmul(norm2, mean, mean, value=batch).mul_(constant(1e-12, x.dtype))
    norm = norm2.sqrt_().view(-1); live = live.view(-1)
    inv = torch.where(live, norm.reciprocal(), constant(0.0, x.dtype)); zt = centred.mul_(inv)
    mark("unit_vectors")
    z = zt.t().contiguous(); mark("transpose")
    wz, w_rows, w2_rows = ext.spatial_weighted_sum_cpu(z, pos); wzt = wz.t(); mark("weighted_sum")
    s = zt.sum(dim=1); gram = torch.mm(zt, zt.t()); mark("s+gram")
    self_dot = (zt * zt).sum(dim=0); fg = gram.view(-1)
    vals = torch.cat([peak, torch.dot(s, s).view(1), self_dot.sum(dim=0, keepdim=True),
        torch.dot(self_dot, self_dot).view(1), torch.dot(fg, fg).view(1),
        (zt * wzt).sum(dim=0).sum(dim=0, keepdim=True)]).tolist(); mark("sums")
    grad_zt = torch.addmm(wzt, gram, zt, beta=0.1, alpha=0.2); grad_zt.add_(s.unsqueeze(1), alpha=0.3)
    mark("bwd_addmm")
    u = grad_zt - zt * (zt * grad_zt).sum(dim=0, keepdim=True)
    u -= u.sum(dim=0, keepdim=True).div_(constant(u.shape[0], u.dtype))
    grad = u.mul_(inv / scale); mark("bwd_elementwise")
    rec["total"].append(t[-1] - t[0])
spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(nspin)]
time.sleep(0.5)
res = {1: collections.defaultdict(list), 2: collections.defaultdict(list)}
try:
    for threads in (1, 2): torch.set_num_threads(threads); step(collections.defaultdict(list))
    for r in range(reps):
        for threads in (1, 2):
            torch.set_num_threads(threads); step(res[threads])
finally:
    for s_ in spin: s_.kill()
names = list(res[1].keys())
print(f"spinners={nspin} reps={reps} load={open('/proc/loadavg').read().split()[:3]}")
for nm in names:
    a, b = (1e3 * statistics.median(res[k][nm]) for k in (1, 2))
    print(f"  {nm:16s} 1thr {a:8.2f}  2thr {b:8.2f}  ratio {b/a:5.2f}")
