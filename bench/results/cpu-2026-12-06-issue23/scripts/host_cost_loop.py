import os
import sys, time
sys.path.insert(0, "/work/main/tests")
import torch
import test_spatial_loss as T
kw = {}
v = sys.argv[1]
if v != "none":
    kw = {"radius": 1.0} if v == "radius" else {"kind": "absolute"}
step = T.host_cost_step(**kw); step()
for th in [int(a) for a in sys.argv[2:]]:
    torch.set_num_threads(th)
    best = []
    for r in range(15):
        t = time.perf_counter()
        for _ in range(100): step()
        best.append((time.perf_counter() - t) * 10)
    best.sort(); print(v, th, "thr median ms %.3f min %.3f" % (best[7], best[0]))
