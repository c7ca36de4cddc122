#!/usr/bin/env bash
# Is the GPU fed? The nightly run on a synthetic archive of ≥ 5 M spectra with `device = "cuda"`,
# GPU utilisation sampled every 0.5 s (nvidia-smi) and CPU busy time every 1 s (vmstat) beside the
# run's spectra/s, for a few feed settings, then the first part of the same archive on the CPU of
# the same machine as the baseline (docs/performance.md, GPU).
#
# Build here (x86-64) with `cargo build --release --features cuda --bin ftirflow` (build.rs puts the
# GPU machines' torch directory on the rpath), copy the binary and two model bundles
# (e.g. `ftirflow demo`'s model_type and model_subtype) to the GPU machine, then:
#   scripts/gpu-feed.sh FTIRFLOW_BINARY MODELS_DIR OUT_DIR
# Environment: WORK (scratch, default /tmp/ftirflow-feed), CORES and SIZE of the archive (default
# 80 cores of 256×256 px = 5,242,880 spectra, 31.6 GB), CPU_CORES (images of the CPU baseline,
# default 16: one per worker on a 16-core machine; 0 skips it), REUSE_ARCHIVE (set: keep an archive
# already in WORK), FEEDS (the CUDA runs, default
# "default batch=4096 gradcam=false": `default` or `[run]` lines joined by commas, e.g.
# `batch=4096,batch_rows=4096`), RUN_SECONDS (each run's limit, default 120).
# Each run's line gives spectra/s, GPU utilisation, CPU busy time and run.json's
# `inference_service` (the service thread's busy seconds, the workers' waiting seconds).
set -uo pipefail
bin=$(realpath "$1")
models=$(realpath "$2")
out=$(mkdir -p "$3" && cd "$3" && pwd)
work=${WORK:-/tmp/ftirflow-feed}
cores=${CORES:-80}
size=${SIZE:-256}
cpu_cores=${CPU_CORES:-16}
feeds=${FEEDS:-default batch=4096 gradcam=false}
n=$(nproc)
mkdir -p "$work"
step() { echo; echo "== $(date +%T) $*"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
echo "CPU cores: $n; memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
ldd "$bin" | grep -E 'not found|libtorch_cuda|libcudnn' || true
"$bin" --version

step "archive: $cores cores of ${size}×${size} px"
if [ -n "${REUSE_ARCHIVE:-}" ] && [ -d "$work/archive/images" ]; then
    echo "(reusing $work/archive)"
else
    rm -rf "$work/archive"
    /usr/bin/time -f "(synth: %e s, peak RSS %M kB)" "$bin" synth --cores "$cores" --size "$size" --out "$work/archive" 2>&1 | tail -n 2
fi
[ -d "$work/archive/images" ] || { echo "gpu-feed: no archive in $work/archive" >&2; exit 2; }
du -sh "$work/archive/images"
# The CPU baseline's archive: the first CPU_CORES images of the same archive (hard links; the
# CPU is about 5× slower, so a part of the archive keeps the script short).
rm -rf "$work/cpu-archive" && mkdir -p "$work/cpu-archive"
for h in $(ls "$work/archive/images"/*.hdr | head -n "$cpu_cores"); do
    ln "$h" "${h%.hdr}.img" "$work/cpu-archive/"
done
# Warm the page cache: the run then reads as a second night would, and the first feed setting is
# not charged for the disk.
cat "$work/archive/images"/* >/dev/null

# One run with monitoring: name, workers, then config lines.
monitored() {
    local name=$1 workers=$2 archive=$3
    shift 3
    printf '%s\n' "[report]" "enabled = false" "[run]" "$@" >"$work/$name.toml"
    step "run $name: $workers workers, $(sed -n '4,$p' "$work/$name.toml" | tr '\n' ' ')"
    rm -rf "$work/run-$name"
    nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw \
        --format=csv,noheader,nounits -lms 500 >"$out/util-$name.csv" &
    local smi=$!
    vmstat -n 1 >"$work/vmstat-$name.txt" &
    local vm=$!
    local t0 t1
    t0=$(date +%s.%N)
    /usr/bin/time -f "(wall %e s, peak RSS %M kB)" timeout "${RUN_SECONDS:-120}" "$bin" run --config "$work/$name.toml" \
        --model "$models/model_type" --subtype-model "$models/model_subtype" --workers "$workers" \
        --out "$work/run-$name" "$archive" 2>"$work/run-$name.log" | tail -n 3
    tail -n 1 "$work/run-$name.log"
    t1=$(date +%s.%N)
    kill $smi $vm 2>/dev/null
    wait $smi $vm 2>/dev/null
    python3 - "$name" "$t0" "$t1" "$out/util-$name.csv" "$work/vmstat-$name.txt" "$work/run-$name/run.json" <<'EOF' | tee -a "$out/summary.txt"
import sys, json, datetime
name, t0, t1, util, vm, runjson = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:]
rows = []
for line in open(util):
    f = [x.strip() for x in line.split(",")]
    try:
        ts = datetime.datetime.strptime(f[0], "%Y/%m/%d %H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc).timestamp()
        rows.append((ts, float(f[1]), float(f[3]), float(f[4])))
    except (ValueError, IndexError):
        pass
# nvidia-smi prints local time; this machine runs in UTC. The steady state is the middle 80 % of the run.
lo, hi = t0 + 0.1 * (t1 - t0), t1 - 0.1 * (t1 - t0)
steady = [r for r in rows if lo <= r[0] <= hi] or rows
u = [r[1] for r in steady]
# The GPU's active span: from the first to the last sample with kernels running (start-up and the
# tables at the end excluded).
active = [i for i, r in enumerate(rows) if r[1] > 0]
span = [r[1] for r in rows[active[0]:active[-1] + 1]] if active else []
span_s = (rows[active[-1]][0] - rows[active[0]][0]) if active else 0.0
cpu = []
for line in open(vm):
    f = line.split()
    if f and f[0].isdigit():
        cpu.append(100 - int(f[14]))  # us + sy + wa + st = 100 - id
cpu_steady = cpu[len(cpu) // 10: len(cpu) - len(cpu) // 10] or cpu
try:
    r = json.load(open(runjson))
except OSError:
    r = {}
secs = r.get("seconds") or (t1 - t0)
rate = r.get("spectra_per_second_processed") or 0
print(f"{name}: {r.get('counts', {}).get('spectra', 0):,} spectra in {secs:.1f} s = {rate:,.0f} spectra/s, peak RSS {r.get('peak_rss_bytes', 0) / 1e9:.2f} GB; "
      f"GPU utilisation (steady state, {len(u)} samples) mean {sum(u) / max(len(u), 1):.1f} %, "
      f"≥ 80 % in {100 * sum(x >= 80 for x in u) / max(len(u), 1):.0f} % of samples; over the GPU's active span "
      f"({span_s:.1f} s) mean {sum(span) / max(len(span), 1):.1f} %; max memory "
      f"{max((r[2] for r in rows), default=0):.0f} MiB, mean power {sum(r[3] for r in steady) / max(len(steady), 1):.0f} W; "
      f"CPU busy mean {sum(cpu_steady) / max(len(cpu_steady), 1):.0f} % of {__import__('os').cpu_count()} cores; "
      f"inference service {r.get('inference_service')}")
print(f"{name}: CPU busy % per second: {' '.join(map(str, cpu))}")
print(f"{name}: GPU utilisation % per sample: {' '.join(str(int(r[1])) for r in rows)}")
EOF
}

for feed in $feeds; do
    case $feed in
    default) monitored cuda "$n" "$work/archive/images" 'device = "cuda"' ;;
    *) monitored "cuda-${feed//[^a-z0-9]/-}" "$n" "$work/archive/images" 'device = "cuda"' ${feed//,/ } ;;
    esac
done
[ "$cpu_cores" -gt 0 ] && monitored cpu "$n" "$work/cpu-archive" 'device = "cpu"'

# The CUDA runs' outputs against the first one's: the feed settings must not change a result.
step "outputs of the CUDA runs against run-cuda"
python3 - "$work"/run-cuda "$work"/run-cuda-*/ <<'EOF2' | tee -a "$out/summary.txt"
import sys, glob, os
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
def load(d):
    t = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(d + "/predictions/*.parquet"))])
    return t.sort_by([("sample", "ascending"), ("y", "ascending"), ("x", "ascending")])
if not glob.glob(sys.argv[1] + "/predictions/*.parquet"):
    sys.exit(f"no predictions in {sys.argv[1]}: nothing to compare")
ref = load(sys.argv[1])
for d in sys.argv[2:]:
    d = d.rstrip("/")
    if not os.path.isdir(d + "/predictions"):
        continue
    t = load(d)
    same = {c: sum(u == v for u, v in zip(t[c].to_pylist(), ref[c].to_pylist())) for c in ("pred_class", "subtype")}
    x, y = (a["p_CA"].to_numpy(zero_copy_only=False).astype(float) for a in (t, ref))
    ok = ~(np.isnan(x) | np.isnan(y))
    print(f"{os.path.basename(d)} vs run-cuda: {t.num_rows} rows; identical pred_class {same['pred_class']}, "
          f"subtype {same['subtype']}; max |Δ p_CA| {np.abs(x[ok] - y[ok]).max():.3g}")
EOF2
