#!/usr/bin/env bash
# Checks a release tarball the way a facility installs it (README.md, Install for facilities):
# unpacked into an empty directory and run with a clean environment — no cargo, no LIBTORCH, no
# ~/.cache/ftirflow, no LD_LIBRARY_PATH — `ftirflow --version` and `ftirflow demo` must work, and
# every shared library must resolve to the system or to the tarball's own lib/.
#
#   scripts/test-package.sh dist/ftirflow-<version>-<target>.tar.gz
set -euo pipefail
tarball=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/install" "$work/home" "$work/run"
tar -C "$work/install" -xzf "$tarball"
bin=$(echo "$work"/install/*/bin/ftirflow)
[ -x "$bin" ] || { echo "test-package: no bin/ftirflow in $tarball" >&2; exit 1; }

clean() { env -i PATH=/usr/bin:/bin HOME="$work/home" "$@"; }
libs=$(clean ldd "$bin")
if echo "$libs" | grep -q 'not found'; then
    echo "$libs" >&2; echo "test-package: unresolved libraries" >&2; exit 1
fi
# libtorch comes from the tarball, nothing from a build tree or a cache.
if echo "$libs" | grep -E 'lib(torch|c10)' | grep -vq "$work/install"; then
    echo "$libs" >&2; echo "test-package: libtorch resolved outside the unpacked tarball" >&2; exit 1
fi
clean "$bin" --version | tee "$work/version.txt"
grep -q '^libtorch 2.11.0 (works)' "$work/version.txt"
(cd "$work/run" && clean "$bin" demo --out demo) > "$work/demo.log" 2>&1 || { cat "$work/demo.log" >&2; exit 1; }
tail -n 3 "$work/demo.log"
[ -f "$work/run/demo/run/cores.parquet" ] && [ -f "$work/run/demo/run/status.json" ] \
    || { echo "test-package: the demo wrote no tables" >&2; exit 1; }
echo "test-package: $(basename "$tarball") installs and runs the demo with a clean environment"
