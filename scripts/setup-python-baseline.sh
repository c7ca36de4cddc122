#!/usr/bin/env bash
# Installs the Python side of the benches (docs/performance.md): PyTorch 2.11.0 — the same wheel that
# setup-libtorch.sh unpacked, so nothing is downloaded twice — with the runtime libraries it needs
# to import (its CUDA wheels, even on a CPU-only machine), plus numpy, scikit-learn and pyarrow
# from benches/python/requirements.txt. Everything goes into the cache directory, nothing into the
# system Python. `scripts/python-baseline` then runs python3 with it (the benches call that).
#
#   FTIRFLOW_CACHE   cache directory (default: $XDG_CACHE_HOME/ftirflow or ~/.cache/ftirflow)
#   PYTHON           python interpreter with pip (default: python3)
#
# About 2.5 GB download (the CUDA wheels), once.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${FTIRFLOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ftirflow}
deps="$cache/torch-py-deps"
python=${PYTHON:-python3}

"$repo/scripts/setup-libtorch.sh"
check='import torch, numpy, sklearn, pyarrow; print(f"setup-python-baseline: torch {torch.__version__}, numpy {numpy.__version__}, scikit-learn {sklearn.__version__}, pyarrow {pyarrow.__version__}")'
if [ -f "$deps/.complete" ] && "$repo/scripts/python-baseline" -c "$check"; then
    exit 0
fi
meta=$(ls "$cache"/libtorch-2.11.0/torch-*.dist-info/METADATA)
# torch's own requirements on Linux (its optional extras and triton, which eager CPU/GPU code
# does not import, left out), then the benches' pinned requirements.
reqs=$(mktemp)
trap 'rm -f "$reqs"' EXIT
sed -n 's/^Requires-Dist: //p' "$meta" | grep -v -e 'extra ==' -e '^triton' | sed 's/; platform_system == "Linux"//' > "$reqs"
grep -v '^#' "$repo/benches/python/requirements.txt" >> "$reqs"
echo "setup-python-baseline: installing $(wc -l < "$reqs") requirements into $deps" >&2
"$python" -m pip install --quiet --disable-pip-version-check --target "$deps" --upgrade -r "$reqs"
"$repo/scripts/python-baseline" -c "$check"
touch "$deps/.complete"
