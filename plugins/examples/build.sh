#!/usr/bin/env bash
# Builds the example backends written in other languages than Rust:
#   plugins/examples/build.sh [OUTPUT_DIR] [python|js ...]
# writes OUTPUT_DIR/python.wasm and OUTPUT_DIR/js.wasm (default: target/lang-plugins at the
# top of the repository). Each language's build.sh installs its pinned toolchain from its
# package registry (pip, npm) when it is missing; exit status 3 means it could not.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/../../target/lang-plugins}"
shift || true
langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(python js)
for lang in "${langs[@]}"; do
    "$here/$lang/build.sh" "$out/$lang.wasm"
done
