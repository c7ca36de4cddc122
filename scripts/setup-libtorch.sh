#!/usr/bin/env bash
# Installs the lean CPU libtorch 2.11.0 that ftirflow links against (ARCHITECTURE.md, Dependencies) into a cache
# directory owned by the project, and links it into the checkout as `.libtorch`, where
# `.cargo/config.toml` points LIBTORCH. Skips the download when the cache already holds it.
#
#   FTIRFLOW_CACHE   cache directory (default: $XDG_CACHE_HOME/ftirflow or ~/.cache/ftirflow)
#   PYTHON           python interpreter with pip (default: python3)
set -euo pipefail

TORCH_VERSION=2.11.0
CUDA_RUNTIME=13.0.96
CUDA_CUPTI=13.0.85

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${FTIRFLOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ftirflow}
dest="$cache/libtorch-$TORCH_VERSION"
python=${PYTHON:-python3}

if [ ! -f "$dest/torch/lib/libtorch_cpu.so" ]; then
    echo "setup-libtorch: installing libtorch $TORCH_VERSION into $dest (~540 MB download)" >&2
    mkdir -p "$cache"
    tmp="$dest.partial.$$"
    rm -rf "$tmp"
    "$python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$tmp" \
        "torch==$TORCH_VERSION" "nvidia-cuda-runtime==$CUDA_RUNTIME" "nvidia-cuda-cupti==$CUDA_CUPTI"
    if [ ! -f "$tmp/torch/lib/libtorch_cpu.so" ]; then
        echo "setup-libtorch: the torch wheel did not contain torch/lib/libtorch_cpu.so" >&2
        exit 1
    fi
    rm -rf "$dest"
    mv "$tmp" "$dest"   # appears only when complete
else
    echo "setup-libtorch: libtorch $TORCH_VERSION already in $dest" >&2
fi

ln -sfn "$dest" "$repo/.libtorch"
echo "setup-libtorch: LIBTORCH=$repo/.libtorch/torch" >&2
