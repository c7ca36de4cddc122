#!/usr/bin/env python3
"""What a GPU can do with CaReNet-V1 when fed perfectly (docs/performance.md, Is the GPU fed?):
device-side spectra/s of predict and of ftirflow's Grad-CAM (features under no_grad, backward
through the head only, then the sum of alpha times A), inputs already on the GPU, with
cudnn.benchmark off and on; CUDA-graph replay (no launch overhead); host to host with page-locked
inputs and one result copy; and the top kernels by CUDA time. Random weights, 467 points, eval
mode (PyTorch's own model from benches/python/carenet_baseline.py, batch norms not folded). Run
with a CUDA PyTorch:
  python3 scripts/gpu-ceiling.py
Without a GPU it runs the first part on the CPU (a check that it works)."""
import sys, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent / "benches" / "python"))
import torch
from carenet_baseline import CareNet
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
model = CareNet(2).eval().to(dev)

def predict(x):
    with torch.no_grad():
        return torch.sigmoid(model.logits(model.features(x).mean(2)))

def cam(x):
    with torch.no_grad():
        a = model.features(x)
    pooled = a.mean(2).requires_grad_(True)
    l = model.logits(pooled)[:, 0]
    pred = (l > 0)
    s = l * (2 * pred.to(l.dtype) - 1)
    (g,) = torch.autograd.grad(s.sum(), pooled)
    with torch.no_grad():
        raw = (g / a.shape[2]).unsqueeze(1).bmm(a).squeeze(1)
    return torch.cat([torch.sigmoid(l.detach())[:, None], pred.float()[:, None], raw], 1)

def rate(fn, x, iters):
    fn(x); fn(x); sync()
    t = time.perf_counter()
    for _ in range(iters):
        out = fn(x)
    sync()
    return x.shape[0] * iters / (time.perf_counter() - t)

iters = 200 if dev.type == "cuda" else 2
for bench in (False, True):
    torch.backends.cudnn.benchmark = bench
    for batch in (1024, 4096):
        x = torch.randn(batch, 467, device=dev)
        print(f"cudnn.benchmark={bench} batch={batch}: predict {rate(predict, x, iters):,.0f}/s, "
              f"cam {rate(cam, x, iters):,.0f}/s (inputs on the device, one thread)", flush=True)
torch.backends.cudnn.benchmark = False
if dev.type == "cuda":
    for batch in (1024, 4096):
        x = torch.randn(batch, 467, device=dev)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                predict(x)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = predict(x)
        print(f"CUDA graph replay, predict, batch={batch}: {rate(lambda _: g.replay(), x, iters):,.0f}/s", flush=True)
    # Host to host, as the service does it: pinned input, one result copy.
    for batch in (1024, 4096):
        xh = torch.randn(batch, 467).pin_memory()
        print(f"host→host cam batch={batch}: {rate(lambda b: cam(b.to(dev, non_blocking=True)).cpu(), xh, iters):,.0f}/s", flush=True)
    x = torch.randn(1024, 467, device=dev)
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            cam(x)
        sync()
    ka = prof.key_averages()
    cuda_total = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in ka)
    cpu_total = sum(e.self_cpu_time_total for e in ka)
    print(f"profile of 20 cam batches of 1024: self CUDA time {cuda_total / 1e3:.1f} ms, self CPU time {cpu_total / 1e3:.1f} ms")
    try:
        print(ka.table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=60))
    except Exception:
        print(ka.table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=60))
