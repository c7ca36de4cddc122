#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 120), one job, and prints a line per target:
# runs, seconds, crashes (files in fuzz/artifacts/<target>/). Build first with
# `cargo +nightly fuzz build -O` and seed with fuzz/seeds.sh. Usage: fuzz/run-all.sh [SECONDS] [TARGET...]
# FUZZ_MAX_LEN=N caps the input size (libFuzzer -max_len; e.g. 8192 keeps `envi` on the tiny seeds).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-120}; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(envi_header envi agilent_tile agilent_mosaic orange_csv parquet_spectra config)
bin=${CARGO_TARGET_DIR:-$here/target}/x86_64-unknown-linux-gnu/release
export LD_LIBRARY_PATH=${LIBTORCH:?set LIBTORCH}/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
for t in "${targets[@]}"; do
  mkdir -p "$here/corpus/$t" "$here/artifacts/$t"
  log=$here/artifacts/$t.log
  "$bin/$t" "$here/corpus/$t" -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 ${FUZZ_MAX_LEN:+-max_len=$FUZZ_MAX_LEN} \
    -artifact_prefix="$here/artifacts/$t/" -print_final_stats=1 > "$log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  [ -n "$runs" ] || runs=$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || echo '?')
  crashes=$(ls "$here/artifacts/$t" | wc -l)
  echo "$t: exit $rc, runs ${runs:-?}, ${secs}s, crash files $crashes, corpus $(ls "$here/corpus/$t" | wc -l)"
done
