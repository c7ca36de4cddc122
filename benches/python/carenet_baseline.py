#!/usr/bin/env python3
"""CaReNet-V1 in PyTorch eager: the baseline a user would otherwise write (docs/performance.md).

The same architecture as ftirflow's operators/src/model/arch.rs (stem, three residual stages,
global average pooling, two dense layers, head), loaded with the weights ftirflow saved
(safetensors, read here with numpy), on the same spectra, the same batch size and the same number
of threads. It measures
  * prediction: model.eval() under torch.no_grad(), batch by batch;
  * prediction + Grad-CAM the usual way (as the common Grad-CAM packages do): predict under
    no_grad, then a second forward with a forward hook on the last convolutional stage that keeps
    its activations and a tensor hook for their gradients, model.zero_grad(), backward of the
    predicted classes' scores through the whole network, alpha = mean of the gradients over
    positions, ReLU of the weighted sum, linear interpolation to the input length, division by
    the maximum.
and compares its probabilities and maps with ftirflow's (given with --ours-probs/--ours-cam).

Usage (the Rust bench `cargo bench -p ftirflow-operators --bench model` calls it):
  carenet_baseline.py --weights W.safetensors --spectra X.f32 --rows N --points 467 --classes 2
                      --batch 250 --threads 1 [--device cpu|cuda] [--repeat 3]
                      [--ours-probs P.f32 --ours-cam C.f32]
On CUDA every timed batch goes from host spectra to host results (`.to(device)`, then `.cpu()`,
which waits for the GPU), as ftirflow's are timed.
Prints `predict_spectra_per_s=...`, `gradcam_spectra_per_s=...`, `max_prob_diff=...`,
`max_cam_diff=...`, `maps_within_0.01=...` (the share of maps whose largest difference is at most
0.01) and, on a GPU, the same two for PyTorch's own GPU maps against its CPU maps; or one
`skipped: ...` line when torch cannot be imported.
"""
import argparse
import copy
import json
import struct
import sys
import time

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except Exception as e:  # the Rust bench prints this line and skips the comparison
    print(f"skipped: cannot import torch/numpy ({type(e).__name__}: {str(e).splitlines()[0]})")
    sys.exit(0)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = {"F32": np.float32, "F64": np.float64, "I64": np.int64}[meta["dtype"]]
        a, b = meta["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype=dtype).reshape(meta["shape"]).copy())
    return out


class Residual(nn.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv1 = nn.Conv1d(cin, cout, k, padding=k // 2, bias=False)
        self.bn1 = nn.BatchNorm1d(cout)
        self.conv2 = nn.Conv1d(cout, cout, k, padding=k // 2, bias=False)
        self.bn2 = nn.BatchNorm1d(cout)
        self.proj = nn.Conv1d(cin, cout, 1, bias=False) if cin != cout else None
        self.proj_bn = nn.BatchNorm1d(cout) if cin != cout else None

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        s = self.proj_bn(self.proj(x)) if self.proj is not None else x
        return F.relu(h + s)


class CareNet(nn.Module):
    """CaReNet-V1 as ftirflow defines it (ArchConfig::carenet_v1)."""

    def __init__(self, classes, stem=16, stem_kernel=7, stages=(32, 64, 128), pooled=2, kernel=3, dense=(512, 192), dropout=0.5):
        super().__init__()
        self.stem = nn.Conv1d(1, stem, stem_kernel, padding=stem_kernel // 2, bias=False)
        self.stem_bn = nn.BatchNorm1d(stem)
        ch, self.pooled = stem, pooled
        self.stages = []
        for i, w in enumerate(stages):
            block = Residual(ch, w, kernel)
            setattr(self, f"stage{i + 1}", block)
            self.stages.append(block)
            ch = w
        self.dense = []
        for i, d in enumerate(dense):
            layer = nn.Linear(ch, d)
            setattr(self, f"dense{i + 1}", layer)
            self.dense.append(layer)
            ch = d
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(ch, 1 if classes == 2 else classes)

    def features(self, x):
        """The last stage's activations [batch, channels, length] of spectra [batch, points]."""
        h = F.max_pool1d(F.relu(self.stem_bn(self.stem(x.unsqueeze(1)))), 2)
        for i, s in enumerate(self.stages):
            h = s(h)
            if i < self.pooled:
                h = F.max_pool1d(h, 2)
        return h

    def logits(self, pooled):
        """The dense layers and the output layer on pooled features [batch, channels]."""
        h = pooled
        for d in self.dense:
            h = self.dropout(F.relu(d(h)))
        return self.head(h)

    def forward(self, x):
        return self.logits(self.features(x).mean(2))


def heads(logits, classes):
    if classes == 2:
        l = logits[:, 0]
        p1 = torch.sigmoid(l)
        pred = (l > 0).long()
        return torch.stack([1 - p1, p1], 1), pred, l * (2 * pred - 1).to(l.dtype)
    pred = logits.argmax(1)
    return logits.softmax(1), pred, logits.gather(1, pred[:, None])[:, 0]


def predict(model, x, classes):
    with torch.no_grad():
        probs, pred, _ = heads(model(x), classes)
    return probs, pred


def gradcam_of(model, x, classes, points, pred):
    """Grad-CAM maps of the predicted classes `pred` the usual way: a second forward with a forward
    hook on the last convolutional stage and a tensor hook for its gradients, then a full
    backward."""
    store = {}

    def keep(_module, _inputs, output):
        store["a"] = output
        output.register_hook(lambda g: store.__setitem__("g", g))

    handle = model.stage3.register_forward_hook(keep)
    model.zero_grad()
    logits = model(x)
    if classes == 2:
        score = logits[:, 0] * (2 * pred - 1).to(logits.dtype)
    else:
        score = logits.gather(1, pred[:, None])[:, 0]
    score.sum().backward()
    handle.remove()
    with torch.no_grad():
        alpha = store["g"].mean(2, keepdim=True)
        cam = F.relu((alpha * store["a"]).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=points, mode="linear", align_corners=False)[:, 0]
        mx = cam.amax(1, keepdim=True)
        return torch.where(mx > 0, cam / mx.clamp_min(1e-30), torch.zeros_like(cam))


def gradcam(model, x, classes, points):
    """The usual way: predict under no_grad, then hooks and a full backward."""
    probs, pred = predict(model, x, classes)
    return probs, gradcam_of(model, x, classes, points, pred)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--spectra", required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--points", type=int, default=467)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ours-probs")
    ap.add_argument("--ours-cam")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU")
        sys.exit(1)
    dev = torch.device(a.device)
    model = CareNet(a.classes)
    missing, unexpected = model.load_state_dict(read_safetensors(a.weights), strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        print(f"error: weights do not fit: missing {missing}, unexpected {unexpected}")
        sys.exit(1)
    model.eval().to(dev)
    x = torch.from_numpy(np.fromfile(a.spectra, dtype=np.float32).reshape(a.rows, a.points))
    batches = [x[i : i + a.batch] for i in range(0, a.rows, a.batch)]

    def best(fn):
        times = []
        for _ in range(a.repeat):
            t = time.perf_counter()
            for b in batches:
                fn(b)
            times.append(time.perf_counter() - t)
        return a.rows / min(times)

    def host(ts):
        return [t.cpu() for t in ts]

    def predict_host(b):
        return host(predict(model, b.to(dev), a.classes))

    def gradcam_host(b):
        return host(gradcam(model, b.to(dev), a.classes, a.points))

    predict_host(batches[0])  # warm-up
    gradcam_host(batches[0])
    print(f"predict_spectra_per_s={best(predict_host):.1f}")
    print(f"gradcam_spectra_per_s={best(gradcam_host):.1f}")
    if a.ours_probs and a.ours_cam:
        probs, cam = gradcam_host(batches[0])
        n = batches[0].shape[0]
        ours_p = np.fromfile(a.ours_probs, dtype=np.float32).reshape(n, a.classes)
        ours_c = np.fromfile(a.ours_cam, dtype=np.float32).reshape(n, a.points)
        print(f"max_prob_diff={np.abs(probs.numpy() - ours_p).max():.3g}")
        row_diff = np.abs(cam.numpy() - ours_c).max(1)
        print(f"max_cam_diff={row_diff.max():.3g}")
        print(f"maps_within_0.01={np.mean(row_diff <= 0.01):.4f}")
        if a.device != "cpu":
            # How far the GPU's own arithmetic (cuDNN may use TF32) moves PyTorch's maps.
            cpu_model = copy.deepcopy(model).cpu()
            _, cam_cpu = gradcam(cpu_model, batches[0], a.classes, a.points)
            torch_diff = np.abs(cam.numpy() - cam_cpu.numpy()).max(1)
            print(f"torch_gpu_vs_cpu_max_cam_diff={torch_diff.max():.3g}")
            print(f"torch_gpu_vs_cpu_maps_within_0.01={np.mean(torch_diff <= 0.01):.4f}")


if __name__ == "__main__":
    main()
