#!/usr/bin/env bash
# The GPU checks of a `--features cuda` build, as one script for a machine with an NVIDIA GPU, a
# CUDA torch 2.11 and python3 with that torch (docs/performance.md and docs/outputs.md, GPU):
#   1. CaReNet-V1 inference and inference + Grad-CAM on CUDA beside PyTorch eager on the same GPU
#      (the model bench, batch 250 and 4096), and on the machine's CPU cores;
#   2. `ftirflow demo` (synthesize, train two models on the GPU, run the pipeline);
#   3. the nightly run on a larger synthetic archive with `device = "cuda"` and `device = "cpu"`
#      (same models, same workers), then a comparison of the two runs' predictions;
#   4. `ftirflow train` (50 epochs, 4-fold patient CV) with `device = "cuda"`: type and subtype on
#      64- and 16-core default-difficulty archives and subtype with `--la-lb-overlap 0.8`, each at
#      most TRAIN_SECONDS (default 180).
#
# Build here (x86-64), then carry BIN_DIR to the GPU machine:
#   cargo build --release --features cuda --bin ftirflow
#   cargo bench --no-run -p ftirflow-operators --features cuda --bench model
#   mkdir -p BIN_DIR && strip -o BIN_DIR/ftirflow target/release/ftirflow
#   strip -o BIN_DIR/model-bench target/release/deps/model-<hash>
# Run from the repository root (the bench finds its Python baseline there):
#   scripts/gpu-check.sh BIN_DIR OUT_DIR
# Environment: WORK (scratch, default /tmp/ftirflow-gpu), CORES and SIZE of the run archive
# (default 32 cores of 128×128 px = 524,288 spectra), WORKERS (default: one per CPU core).
set -uo pipefail
bin=$(cd "$1" && pwd)
out=$(mkdir -p "$2" && cd "$2" && pwd)
work=${WORK:-/tmp/ftirflow-gpu}
cores=${CORES:-32}
size=${SIZE:-128}
workers=${WORKERS:-$(nproc)}
mkdir -p "$work"
step() { echo; echo "== $(date +%T) $*"; }
seconds() { local t0=$SECONDS; "$@"; local rc=$?; echo "(took $((SECONDS - t0)) s, exit $rc)"; return $rc; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "CPU cores: $(nproc)"
python3 -c 'import torch; print("python torch", torch.__version__, "cuda", torch.cuda.is_available())' || true

step "1. CaReNet-V1 bench on CUDA and CPU (ftirflow vs PyTorch eager, same run)"
# The filter matches no criterion benchmark, so only the side-by-side comparison runs.
for spec in "cuda 250 1 32000" "cuda 4096 1 65536" "cpu 250 $(nproc) 8000"; do
    set -- $spec
    FTIRFLOW_BENCH_DEVICE=$1 FTIRFLOW_BENCH_BATCH=$2 FTIRFLOW_BENCH_THREADS=$3 FTIRFLOW_BENCH_ROWS=$4 \
        seconds "$bin/model-bench" --bench only-the-comparison 2>&1 | grep -v '^$' | tee -a "$out/model-bench.txt"
done

step "2. ftirflow demo"
rm -rf "$work/demo"
seconds "$bin/ftirflow" demo --out "$work/demo" 2>&1 | tail -n 25

step "3. nightly run, $cores cores of ${size}×${size} px, $workers workers: cuda vs cpu"
rm -rf "$work/archive"
seconds "$bin/ftirflow" synth --cores "$cores" --size "$size" --out "$work/archive" 2>&1 | tail -n 3
printf '[run]\ndevice = "cuda"\n' >"$work/cuda.toml"
printf '[run]\ndevice = "cuda"\nbatch = 4096\n' >"$work/cuda-batch4096.toml"
printf '[run]\ndevice = "cpu"\n' >"$work/cpu.toml"
for dev in cuda cuda-batch4096 cpu; do
    rm -rf "$work/run-$dev"
    echo "-- $dev: $(tr '\n' ' ' <"$work/$dev.toml")"
    seconds "$bin/ftirflow" run --config "$work/$dev.toml" --model "$work/demo/model_type" \
        --subtype-model "$work/demo/model_subtype" --workers "$workers" --out "$work/run-$dev" \
        "$work/archive/images" 2>&1 | tail -n 8
done
cp "$work/run-cuda/run.json" "$out/run-cuda.json" 2>/dev/null
cp "$work/run-cpu/run.json" "$out/run-cpu.json" 2>/dev/null

step "4. cuda vs cpu predictions"
python3 - "$work/run-cuda" "$work/run-cpu" <<'EOF'
import sys, glob
import numpy as np, pyarrow.parquet as pq, pyarrow as pa
def load(d):
    t = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(d + "/predictions/*.parquet"))])
    return t.sort_by([("sample", "ascending"), ("y", "ascending"), ("x", "ascending")])
a, b = load(sys.argv[1]), load(sys.argv[2])
print("rows", a.num_rows, b.num_rows)
for col in ("pred_class", "subtype"):
    x, y = a[col].to_pylist(), b[col].to_pylist()
    print(f"{col}: {sum(u == v for u, v in zip(x, y))} of {len(x)} identical")
for col in ("p_CA", "p_LA", "p_LB", "p_HER2", "p_TNBC"):
    x = a[col].to_numpy(zero_copy_only=False).astype(float)
    y = b[col].to_numpy(zero_copy_only=False).astype(float)
    ok = ~(np.isnan(x) | np.isnan(y))
    print(f"{col}: max |cuda - cpu| = {np.abs(x[ok] - y[ok]).max():.3g} over {ok.sum()} rows")
ca, cb = (pq.read_table(d + "/cores.parquet").sort_by("sample") for d in sys.argv[1:3])
for col in ("majority", "subtype_majority"):
    x, y = ca[col].to_pylist(), cb[col].to_pylist()
    print(f"cores {col}: {sum(u == v for u, v in zip(x, y))} of {len(x)} identical")
EOF

step "5. training on the GPU (default [train] settings: 50 epochs, 4-fold patient CV)"
printf '[train]\ndevice = "cuda"\nfinal_model = false\n' >"$work/train.toml"
# name, task, synth arguments; each run at most TRAIN_SECONDS (default 180).
experiments=(
    "type-64 type --cores 64"
    "subtype-64 subtype --cores 64"
    "subtype-64-overlap0.8 subtype --cores 64 --la-lb-overlap 0.8"
    "type-16 type --cores 16"
    "subtype-16 subtype --cores 16"
)
for e in "${experiments[@]}"; do
    set -- $e
    name=$1 task=$2
    shift 2
    echo "-- $name: synth $* / train --task $task"
    key=$(echo "$*" | tr -c 'a-z0-9.\n' '_')
    [ -d "$work/synth-$key" ] || "$bin/ftirflow" synth "$@" --out "$work/synth-$key" 2>&1 | tail -n 1
    rm -rf "$work/$name"
    seconds timeout "${TRAIN_SECONDS:-180}" "$bin/ftirflow" train --config "$work/train.toml" --task "$task" \
        --labels "$work/synth-$key/labels.csv" --out "$work/$name" "$work/synth-$key/images" 2>&1 |
        grep -v -E 'epochs: ([0-9]|[0-4][0-9])/' | tail -n 30
    case $name in type-64 | subtype-64) cp "$work/$name/metrics.json" "$out/train-$name.json" 2>/dev/null ;; esac
done
nvidia-smi --query-gpu=memory.used --format=csv,noheader || true
