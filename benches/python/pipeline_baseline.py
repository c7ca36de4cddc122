#!/usr/bin/env python3
"""The whole ftirflow pipeline as a lab would write it in Python (docs/performance.md).

numpy reads each ENVI image of the archive; scikit-learn K-means (k = 2) finds tissue on the
amide I/II band and paraffin on the CH2 band of the non-tissue spectra; spectra whose amide I peak
is out of range or that hold NaN/inf are outliers; a batched weighted least-squares EMSC (ftirflow's
default model: reference, polynomial of order 2 in the scaled wavenumber, zero weight over the
paraffin band; the reference taken from the ftirflow model bundle) corrects the tissue spectra and
flags residual outliers (median + k MAD per image); numpy resamples onto the model grid and
L2-normalizes; the same CaReNet-V1 weights, loaded into the PyTorch module of carenet_baseline.py,
predict in batches under no_grad and then explain with Grad-CAM the usual way (forward hook, full
backward); pyarrow writes one Parquet file of per-spectrum predictions per image.

Every setting comes from the bundle's manifest (`preprocess`, `emsc`, `wavenumbers`, classes), so
both pipelines compute the same method. The one deliberate difference is the K-means boundary:
this baseline assigns each spectrum to its nearest centroid (plain K-means, as the paper does),
ftirflow's default moves the boundary by the clusters' spreads (`boundary = "spread"`).

Usage:
  pipeline_baseline.py --archive DIR --model BUNDLE --out DIR [--threads 1] [--batch 1024]
                       [--no-gradcam] [--compare RUN_DIR]
Prints one JSON object: seconds per stage (read, segment, emsc, resample_normalize, inference,
gradcam, write), end-to-end seconds, spectra counts, peak RSS, and with --compare the agreement of
the predicted classes with an ftirflow run's predictions (spectra classified by both).
"""
import argparse
import glob
import json
import os
import resource
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

try:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from sklearn.cluster import KMeans
except Exception as e:  # callers print this line and skip
    print(json.dumps({"skipped": f"cannot import numpy/pyarrow/torch/scikit-learn ({type(e).__name__}: {str(e).splitlines()[0]})"}))
    sys.exit(0)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from carenet_baseline import CareNet, gradcam_of, heads, read_safetensors  # noqa: E402


def read_envi(hdr_path):
    """An ENVI float32 image as (height, width, wavenumbers, spectra[pixels, points])."""
    text = open(hdr_path).read()
    fields, key, buf = {}, None, None
    for line in text.splitlines()[1:]:
        if buf is not None:
            buf += line
            if "}" in line:
                fields[key], buf = buf.strip("{} \n"), None
            continue
        if "=" in line:
            key, value = (s.strip() for s in line.split("=", 1))
            if value.startswith("{") and "}" not in value:
                buf = value
            else:
                fields[key] = value.strip("{} ")
    w, h, n = int(fields["samples"]), int(fields["lines"]), int(fields["bands"])
    assert fields.get("data type") == "4", "float32 only"
    dtype = ">f4" if fields.get("byte order", "0") == "1" else "<f4"
    wn = np.array([float(v) for v in fields["wavelength"].split(",")])
    raw = np.fromfile(os.path.splitext(hdr_path)[0] + ".img", dtype=dtype, offset=int(fields.get("header offset", 0)))
    il = fields.get("interleave", "bip").lower()
    if il == "bip":
        cube = raw.reshape(h * w, n)
    elif il == "bsq":
        cube = raw.reshape(n, h * w).T
    else:  # bil
        cube = raw.reshape(h, n, w).transpose(0, 2, 1).reshape(h * w, n)
    return h, w, wn, np.ascontiguousarray(cube, dtype=np.float32)


def band_cols(wn, band):
    return np.where((wn >= band["lo"]) & (wn <= band["hi"]))[0]


def kmeans_class(x, fit_rows, min_abs, seed):
    """Plain K-means (k = 2) on x; the brighter cluster is the class when its mean reaches min_abs."""
    out = np.zeros(x.shape[0], dtype=bool)
    if x.shape[0] < 2:
        return out
    km = KMeans(n_clusters=2, n_init=1, random_state=seed).fit(x[fit_rows])
    labels = km.predict(x)
    means = [x[labels == k].mean() if (labels == k).any() else -np.inf for k in range(2)]
    bright = int(np.argmax(means))
    if means[bright] >= min_abs:
        out = labels == bright
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archive", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--no-gradcam", action="store_true")
    ap.add_argument("--compare")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    manifest = json.load(open(os.path.join(a.model, "manifest.json")))
    pre, emsc_state, classes = manifest["preprocess"], manifest["emsc"], manifest["classes"]
    model = CareNet(len(classes))
    model.load_state_dict(read_safetensors(os.path.join(a.model, "weights.safetensors")), strict=False)
    model.eval()
    grid = np.array(manifest["wavenumbers"])
    seg, out_cfg, emsc_cfg = pre["segment"], pre["outliers"], pre["emsc"]
    assert emsc_cfg["paraffin"] == "mask" and pre["normalize"]["method"] == "vector", "baseline covers the default method"

    # EMSC model on its axis, factored once (the pseudo-inverse of the weighted model).
    ewn = np.array(emsc_state["wavenumbers"])
    ref = np.array(emsc_state["reference"])
    x_scaled = (ewn - (ewn.min() + ewn.max()) / 2) / (abs(ewn[0] - ewn[-1]) / 2)
    mmat = np.column_stack([ref] + [x_scaled ** p for p in range(emsc_cfg["order"] + 1)])
    pb = emsc_cfg["paraffin_band"]
    weights = np.where((ewn >= pb["lo"]) & (ewn <= pb["hi"]), 0.0, 1.0)
    pinv = np.linalg.pinv(mmat * weights[:, None]) * weights  # k x n
    w2 = weights * weights

    os.makedirs(a.out, exist_ok=True)
    stage = dict.fromkeys(["read", "segment", "emsc", "resample_normalize", "inference", "gradcam", "write"], 0.0)
    counts = {"images": 0, "spectra": 0, "tissue": 0, "classified": 0}
    hdrs = sorted(glob.glob(os.path.join(a.archive, "**", "*.hdr"), recursive=True))
    for hdr in hdrs:
        t = time.perf_counter()
        h, w, wn, spectra = read_envi(hdr)
        stage["read"] += time.perf_counter() - t
        sample = os.path.relpath(os.path.splitext(hdr)[0], a.archive)
        n = spectra.shape[0]

        t = time.perf_counter()
        finite = np.isfinite(spectra).all(axis=1)
        rng = np.random.default_rng(seg["seed"])
        valid = np.where(finite)[0]
        fit = rng.choice(valid, size=min(seg["fit_sample"], valid.size), replace=False) if valid.size else valid
        xt = np.nan_to_num(spectra[:, band_cols(wn, seg["tissue_band"])])
        tissue = kmeans_class(xt, fit, seg["min_tissue_absorbance"], seg["seed"]) & finite
        xp = np.nan_to_num(spectra[:, band_cols(wn, seg["paraffin_band"])])
        xp[tissue] = 0.0
        paraffin = kmeans_class(xp, fit, seg["min_paraffin_absorbance"], seg["seed"]) & finite & ~tissue
        amide = spectra[:, band_cols(wn, out_cfg["amide_band"])].max(axis=1)
        outlier = ~finite | (tissue & ((amide < out_cfg["min"]) | (amide > out_cfg["max"])))
        stage["segment"] += time.perf_counter() - t

        t = time.perf_counter()
        rows = np.where(tissue & ~outlier)[0]
        ecols = band_cols(wn, pre["emsc_range"])
        s = spectra[np.ix_(rows, ecols)].astype(np.float64)
        coef = s @ pinv.T
        residual = s - coef @ mmat.T
        corrected = mmat[:, 0] + residual / coef[:, :1]
        rms = np.sqrt((residual * residual) @ w2 / w2.sum())
        if rows.size >= 10:
            med = np.median(rms)
            bad = rms > med + out_cfg["residual_mad_k"] * np.median(np.abs(rms - med))
            outlier[rows[bad]] = True
            rows, corrected = rows[~bad], corrected[~bad]
        stage["emsc"] += time.perf_counter() - t

        t = time.perf_counter()
        ax = wn[ecols]
        if ax[0] > ax[-1]:
            ax, corrected = ax[::-1], corrected[:, ::-1]
        idx = np.clip(np.searchsorted(ax, grid) - 1, 0, ax.size - 2)
        frac = np.clip((grid - ax[idx]) / (ax[idx + 1] - ax[idx]), 0.0, 1.0)
        res = corrected[:, idx] * (1 - frac) + corrected[:, idx + 1] * frac
        res /= np.linalg.norm(res, axis=1, keepdims=True)
        x_in = torch.from_numpy(res.astype(np.float32))
        stage["resample_normalize"] += time.perf_counter() - t

        probs = np.zeros((rows.size, len(classes)), dtype=np.float32)
        pred = np.zeros(rows.size, dtype=np.int64)
        for b in range(0, rows.size, a.batch):
            xb = x_in[b : b + a.batch]
            t = time.perf_counter()
            with torch.no_grad():
                p, c, _ = heads(model(xb), len(classes))
            probs[b : b + a.batch], pred[b : b + a.batch] = p.numpy(), c.numpy()
            stage["inference"] += time.perf_counter() - t
            if not a.no_gradcam:
                t = time.perf_counter()
                gradcam_of(model, xb, len(classes), grid.size, c)
                stage["gradcam"] += time.perf_counter() - t

        t = time.perf_counter()
        yy, xx = np.divmod(np.arange(n, dtype=np.uint32), np.uint32(w))
        pred_class = np.full(n, None, dtype=object)
        pred_class[rows] = np.array(classes, dtype=object)[pred]
        cols = {"sample": pa.array([sample] * n), "x": xx, "y": yy, "tissue": tissue, "paraffin": paraffin,
                "outlier": outlier, "pred_class": pa.array(pred_class, type=pa.string())}
        for k, name in enumerate(classes):
            full = np.full(n, np.nan, dtype=np.float32)
            full[rows] = probs[:, k]
            cols[f"p_{name}"] = pa.array(full, mask=~np.isin(np.arange(n), rows))
        pq.write_table(pa.table(cols), os.path.join(a.out, sample.replace(os.sep, "_") + ".parquet"))
        stage["write"] += time.perf_counter() - t
        counts["images"] += 1
        counts["spectra"] += n
        counts["tissue"] += int(tissue.sum())
        counts["classified"] += int(rows.size)

    result = {"stages": stage, "seconds": time.perf_counter() - t_start, "counts": counts, "threads": a.threads,
              "gradcam": not a.no_gradcam, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if a.compare:
        theirs = pa.concat_tables([pq.read_table(f, columns=["sample", "x", "y", "tissue", "pred_class"])
                                   for f in sorted(glob.glob(os.path.join(a.compare, "predictions", "*.parquet")))])
        mine = pa.concat_tables([pq.read_table(f, columns=["sample", "x", "y", "tissue", "pred_class"])
                                 for f in sorted(glob.glob(os.path.join(a.out, "*.parquet")))])
        key = lambda t: {(s, x, y): (ti, c) for s, x, y, ti, c in zip(*(t.column(k).to_pylist() for k in ["sample", "x", "y", "tissue", "pred_class"]))}
        ft, py = key(theirs), key(mine)
        both = [k for k, v in py.items() if v[1] is not None and k in ft and ft[k][1] is not None]
        same = sum(1 for k in both if py[k][1] == ft[k][1])
        tissue_same = sum(1 for k, v in py.items() if k in ft and ft[k][0] == v[0])
        result["compare"] = {
            "spectra_both": len(py.keys() & ft.keys()),
            "tissue_agreement": tissue_same / max(1, len(py.keys() & ft.keys())),
            "classified_by_both": len(both),
            "classified_only_python": sum(1 for k, v in py.items() if v[1] is not None and (k not in ft or ft[k][1] is None)),
            "classified_only_ftirflow": sum(1 for k, v in ft.items() if v[1] is not None and (k not in py or py[k][1] is None)),
            "identical_classes": same,
            "identical_fraction": same / max(1, len(both)),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
