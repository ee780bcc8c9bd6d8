#!/usr/bin/env bash
# Builds the Python example backend into a WebAssembly component:
#   plugins/examples/python/build.sh OUTPUT.wasm
# Installs the pinned componentize-py into a virtual environment beside the output when it
# is not there yet (from PyPI, with pip), so a fresh machine with Python 3 needs nothing else.
# Exit status 3: the toolchain is missing and could not be installed.
set -euo pipefail
COMPONENTIZE_PY_VERSION=0.25.1

here="$(cd "$(dirname "$0")" && pwd)"
wit="$here/../../../wit"
out="${1:?usage: build.sh OUTPUT.wasm}"
mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"

venv="$(dirname "$out")/py-venv"
tool="$venv/bin/componentize-py"
if ! "$tool" --version 2>/dev/null | grep -qx "componentize-py $COMPONENTIZE_PY_VERSION"; then
    echo "installing componentize-py $COMPONENTIZE_PY_VERSION into $venv" >&2
    if ! python3 -m venv "$venv" ||
        ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "componentize-py==$COMPONENTIZE_PY_VERSION"; then
        echo "cannot install componentize-py $COMPONENTIZE_PY_VERSION (needs Python 3 with venv and pip, and PyPI)" >&2
        exit 3
    fi
fi

# componentize-py generates the bindings (the `wit_world` package) itself while building.
cd "$here"
"$tool" --wit-path "$wit/storage.wit" --world storage-backend \
    componentize backend --python-path "$here" --output "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out" >&2
