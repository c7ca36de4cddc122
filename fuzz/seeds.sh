#!/usr/bin/env bash
# Seeds the fuzz corpora (fuzz/corpus/<target>/) from the reference files in ../shared/data/agilent
# and from tiny generated images (`ftirflow synth`, 8×8 px). Nothing here is committed: run it
# before fuzzing. Usage: fuzz/seeds.sh [path/to/ftirflow]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-${CARGO_TARGET_DIR:-$here/../target}/release/ftirflow}
data=$here/../../shared/data/agilent
sep=$'\n--ftirflow-fuzz-part--\n'
c=$here/corpus
mkdir -p "$c"/{envi_header,envi,agilent_tile,agilent_mosaic,orange_csv,parquet_spectra,config}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
join() { local out=$1; shift; : > "$out"; local first=1; for f in "$@"; do
  if [ $first = 0 ]; then printf '%s' "$sep" >> "$out"; fi; first=0; cat "$f" >> "$out"; done; }

# Reference Agilent files.
if [ -d "$data" ]; then
  for s in 4_noimage_agg256 background_agg1024 background_agg256; do
    join "$c/agilent_tile/$s" "$data/$s.bsp" "$data/$s.dat"
  done
  join "$c/agilent_mosaic/ref_mosaic" "$data/5_mosaic_agg1024.dmt" "$data/5_Mosaic_agg1024_0000_0000.dmd" /dev/null "$data/5_Mosaic_agg1024_0000_0001.dmd"
  for h in "$data"/*.hdr; do cp "$h" "$c/envi_header/ref_$(basename "$h")"; done
fi
# Generated images in every format.
for fmt in envi agilent parquet; do
  "$bin" synth --out "$tmp/$fmt" --cores 2 --size 8 --format "$fmt" --seed 1 > /dev/null
done
for h in "$tmp"/envi/images/*.hdr; do
  n=$(basename "$h" .hdr)
  cp "$h" "$c/envi_header/gen_$n"
  join "$c/envi/gen_$n" "$h" "${h%.hdr}.img"
done
# Tiny ENVI images (4×4 px, 16 bands, every interleave and both byte orders): a generated image
# is 385 KB, which holds libFuzzer to ~12 runs/s on the `envi` target; these run at thousands.
wl=$(seq -s ', ' 1000 2 1030)
for il in bip bil bsq; do
  for bo in 0 1; do
    printf 'ENVI\nsamples = 4\nlines = 4\nbands = 16\nheader offset = 0\ndata type = 4\ninterleave = %s\nbyte order = %s\nwavelength units = cm-1\nwavelength = {%s}\n' \
      "$il" "$bo" "$wl" > "$tmp/tiny.hdr"
    head -c 1024 /dev/zero > "$tmp/tiny.img"
    join "$c/envi/tiny_${il}_$bo" "$tmp/tiny.hdr" "$tmp/tiny.img"
  done
done
for d in "$tmp"/agilent/images/*.dmt; do
  n=$(basename "$d" .dmt)
  tiles=("${d%.dmt}"_0000_0000.dmd)
  join "$c/agilent_mosaic/gen_$n" "$d" "${tiles[@]}"
done
for d in "$tmp"/agilent/images/*.bsp; do
  [ -e "$d" ] || continue
  n=$(basename "$d" .bsp)
  join "$c/agilent_tile/gen_$n" "$d" "${d%.bsp}.dat"
done
for p in "$tmp"/parquet/images/*.parquet; do cp "$p" "$c/parquet_spectra/gen_$(basename "$p")"; done
# Orange CSV: a 3-row Orange header and a plain header.
printf '1000.0,1001.0,1002.0,class,map_x,map_y\ncontinuous,continuous,continuous,discrete,continuous,continuous\n,,,class,meta,meta\n0.1,0.2,0.3,A,0,0\n0.4,0.5,nan,B,1,0\n' > "$c/orange_csv/orange3"
printf 'class,patient,900.5,901.5\nDNA,p1,0.1,0.2\nlipid,p2,inf,-0.3\n' > "$c/orange_csv/plain"
# Config: the documented example and a few sections.
cp "$here/../examples/ftirflow.toml" "$c/config/example.toml"
printf '[run]\nworkers = 2\nbatch = 64\n[preprocess.resample]\nstart = 900\nend = 1800\npoints = 467\n' > "$c/config/run.toml"
echo "seeded: $(for t in "$c"/*; do printf '%s=%s ' "$(basename "$t")" "$(ls "$t" | wc -l)"; done)"
