#!/usr/bin/env bash
# Whole-slide benchmark (docs/performance.md, Whole slides): synthesizes TMA slides of cores of
# 256 × 256 px (ENVI and Agilent mosaic), runs `ftirflow run` on each with 1 and 2 workers, and
# prints one line per run: format, grid, slide size on disk, workers, peak RSS (run.json), spectra/s
# and seconds. Memory must not follow the slide's size: compare the small and the large grid.
#
#   scripts/bench-slide.sh [WORK_DIR] [GRIDS...]      (default /tmp/ftirflow-slide-bench, 2x2 4x5)
#   REPEAT=3 scripts/bench-slide.sh ...               (1 and 2 workers alternately, 3 times each)
#   FORMATS=envi scripts/bench-slide.sh ...           (default: envi agilent)
#
# Needs a release binary (`cargo build --release`; FTIRFLOW_BIN overrides its path) and about twice
# the largest slide's size free in WORK_DIR (one slide at a time is kept). Warm runs: the slide's
# files are read once before every run, so each run reads them from the page cache when they fit
# in memory (on a machine where they do not, every run reads from disk alike).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${FTIRFLOW_BIN:-${CARGO_TARGET_DIR:-target}/release/ftirflow}"
work="${1:-/tmp/ftirflow-slide-bench}"
shift || true
grids=("${@:-2x2 4x5}")
repeat="${REPEAT:-1}"
read -r -a formats <<<"${FORMATS:-envi agilent}"
read -r -a grids <<<"${grids[*]}"
mkdir -p "$work"

# Models: briefly trained on small synthetic cores (throughput does not depend on their accuracy).
if [ ! -f "$work/type_model/manifest.json" ]; then
    "$bin" synth --out "$work/train" --cores 8 --size 32 --seed 1 >/dev/null 2>&1
    "$bin" train --task type --labels "$work/train/labels.csv" --epochs 1 --folds 0 --spectra-per-epoch 500 \
        "$work/train/images" --out "$work/type_model" >/dev/null 2>&1
fi

printf '%-8s %-5s %10s %8s %12s %12s %12s %10s %8s\n' format grid slide_GB workers spectra classified peak_RSS_GB spectra/s seconds
for format in "${formats[@]}"; do
    for grid in "${grids[@]}"; do
        slide="$work/slide-$format-$grid"
        rm -rf "$slide"
        "$bin" synth --out "$slide" --slide "$grid" --size 256 --pitch 1.2 --format "$format" --seed 5 >/dev/null 2>&1
        bytes=$(du -sb "$slide/images" | cut -f1)
        for workers in $(for _ in $(seq "$repeat"); do echo 1 2; done); do
            cat "$slide/images/"* >/dev/null
            out="$work/out-$format-$grid-$workers"
            rm -rf "$out"
            printf '[report]\nenabled = false\n[run]\ndevice = "cpu"\n' >"$work/bench.toml"
            "$bin" run --config "$work/bench.toml" --model "$work/type_model" "$slide/images" --out "$out" \
                --workers "$workers" >"$out.log" 2>&1 || { echo "run failed: see $out.log" >&2; exit 1; }
            python3 - "$out/run.json" "$format" "$grid" "$bytes" "$workers" <<'EOF'
import json, os, sys
r = json.load(open(sys.argv[1]))
fmt, grid, size, workers = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
c = r["counts"]
try:  # spectra the networks classified (tissue, not outliers), when pyarrow is installed
    import pyarrow.parquet as pq
    classified = sum(pq.read_table(os.path.join(os.path.dirname(sys.argv[1]), "cores.parquet"), columns=["classified"])["classified"].to_pylist())
except ImportError:
    classified = "-"
print(f"{fmt:<8} {grid:<5} {size / 1e9:10.2f} {workers:>8} {c['spectra']:>12} {classified:>12} {r['peak_rss_bytes'] / 1e9:12.2f} "
      f"{r['spectra_per_second_processed']:10.0f} {r['seconds']:8.1f}")
EOF
            rm -rf "$out"
        done
        rm -rf "$slide"
    done
done
