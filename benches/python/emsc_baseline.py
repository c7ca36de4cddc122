#!/usr/bin/env python3
"""Batched numpy least-squares EMSC: the baseline a user would otherwise write (docs/performance.md).

Same model and formulas as ftirflow's EMSC (operators/src/emsc.rs): model matrix
M = [reference, x^0..x^order, interferents] (n x k), weights w, true weighted least squares
min ||w * (s - M c)||^2 solved for the whole batch with one np.linalg.lstsq call, then
residual = s - M c, corrected = reference + residual / b, residual_rms = sqrt(sum w^2 r^2 / sum w^2).

Usage:
  emsc_baseline.py --spectra S.npy --model M.npy --weights W.npy [--expect C.npy] [--repeat 5]
  emsc_baseline.py                  # synthetic data of the benchmark's shapes (16384 x 467, k = 7)

The spectra are kept in their file's dtype (float32 in the benchmark: numpy's fastest path);
--dtype float64 converts everything. BLAS runs on one thread (set below, before numpy loads).
Prints `spectra_per_s=<number>` (best of --repeat runs of the lstsq version),
`spectra_per_s_pinv=<number>` (the same EMSC with the pseudo-inverse computed once per batch and
applied with matrix products: the stronger baseline) and, with --expect, the largest relative
difference from the given corrected spectra.
"""
import argparse
import os
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS"):
    os.environ[_var] = "1"

try:
    import numpy as np
except ImportError:  # the Rust bench prints this line and skips the comparison
    print("skipped: numpy is not installed (pip install -r benches/python/requirements.txt)")
    sys.exit(0)


def emsc(spectra, model, weights):
    """Weighted least-squares EMSC of a whole batch: (corrected, coefficients, residual_rms)."""
    a = model * weights[:, None]  # n x k
    rhs = (spectra * weights).T  # n x rows
    coef, *_ = np.linalg.lstsq(a, rhs, rcond=None)  # k x rows
    residual = spectra - (model @ coef).T  # rows x n
    b = coef[0]
    corrected = model[:, 0] + residual / b[:, None]
    w2 = weights * weights
    rms = np.sqrt((residual * residual) @ w2 / w2.sum())
    return corrected, coef.T, rms


def emsc_pinv(spectra, model, weights):
    """The same EMSC with the model pseudo-inverse computed once and applied with matrix products
    (what a user who knows the model is fixed would write)."""
    p = np.linalg.pinv(model * weights[:, None]) * weights  # k x n
    coef = spectra @ p.T  # rows x k
    residual = spectra - coef @ model.T
    corrected = model[:, 0] + residual / coef[:, :1]
    w2 = weights * weights
    rms = np.sqrt((residual * residual) @ w2 / w2.sum())
    return corrected, coef, rms


def synthetic(rows=16384, n=467, seed=0):
    rng = np.random.default_rng(seed)
    nu = np.linspace(1800.0, 900.0, n)
    x = (nu - nu.mean()) / ((nu[0] - nu[-1]) / 2)
    g = lambda c, s: np.exp(-(((nu - c) / s) ** 2))
    ref = 0.8 * g(1655, 20) + 0.5 * g(1545, 18) + 0.2 * g(1240, 25) + 0.18 * g(1080, 20)
    par = [g(1462, 6), g(1473, 4), g(1373, 5)]
    model = np.column_stack([ref, np.ones(n), x, x * x] + par)
    coef = np.column_stack(
        [rng.uniform(0.3, 1.5, rows)] + [rng.uniform(-0.1, 0.2, rows) for _ in range(6)]
    )
    spectra = (coef @ model.T + 1e-3 * rng.standard_normal((rows, n))).astype(np.float32)
    weights = np.where(nu < 1000, 0.3, 1.0)
    return spectra, model, weights


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spectra")
    p.add_argument("--model")
    p.add_argument("--weights")
    p.add_argument("--expect")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--dtype", choices=["float32", "float64"], default=None)
    args = p.parse_args()

    if args.spectra:
        spectra, model, weights = np.load(args.spectra), np.load(args.model), np.load(args.weights)
    else:
        spectra, model, weights = synthetic()
    dtype = np.dtype(args.dtype) if args.dtype else spectra.dtype
    spectra, model, weights = spectra.astype(dtype), model.astype(dtype), weights.astype(dtype)
    rows, n = spectra.shape

    best = float("inf")
    corrected = None
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        corrected, _coef, _rms = emsc(spectra, model, weights)
        best = min(best, time.perf_counter() - t0)
    print(f"numpy {np.__version__}, dtype {dtype}, {rows} spectra x {n} points, k = {model.shape[1]}, "
          f"best of {max(1, args.repeat)}: {best * 1e3:.2f} ms")
    print(f"spectra_per_s={rows / best:.1f}")
    best_pinv = float("inf")
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        emsc_pinv(spectra, model, weights)
        best_pinv = min(best_pinv, time.perf_counter() - t0)
    print(f"spectra_per_s_pinv={rows / best_pinv:.1f}")
    if args.expect:
        expect = np.load(args.expect).astype(np.float64)
        got = corrected.astype(np.float64)
        ok = np.isfinite(expect).all(axis=1)
        err = np.abs(got[ok] - expect[ok]).max(axis=1) / np.abs(expect[ok]).max(axis=1)
        print(f"max_rel_diff_vs_expect={err.max():.3e}")


if __name__ == "__main__":
    main()
