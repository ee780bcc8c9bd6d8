#!/usr/bin/env bash
# Builds the JavaScript example backend into a WebAssembly component:
#   plugins/examples/js/build.sh OUTPUT.wasm
# Installs the pinned componentize-js (package-lock.json) from npm into node_modules here
# when it is not there yet, so a fresh machine with Node 20 and npm needs nothing else.
# Exit status 3: the toolchain is missing and could not be installed.
#
# package.json lists @bytecodealliance/preview2-shim beside componentize-js because
# componentize-js 0.23.0 imports it while building but declares it only as an optional peer.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: build.sh OUTPUT.wasm}"
mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"

cd "$here"
tool="$here/node_modules/.bin/componentize-js"
if ! "$tool" --version 2>/dev/null | grep -qx "0.23.0"; then
    echo "installing componentize-js from package-lock.json" >&2
    if ! npm ci --no-audit --no-fund --loglevel=error; then
        echo "cannot install componentize-js (needs Node 20 with npm, and the npm registry)" >&2
        exit 3
    fi
fi

# The WIT folder componentize-js reads: this example's world, cairn's contract, and the
# WASI packages the world imports (wasi:filesystem and what it uses), taken from the WIT
# that ships with the pinned jco.
wit="$(dirname "$out")/js-wit"
wasi="$here/node_modules/@bytecodealliance/jco/lib/wit/builtin/0.2.12"
rm -rf "$wit"
mkdir -p "$wit/deps/cairn-storage"
cp "$here/wit/world.wit" "$wit/"
cp "$here/../../../wit/storage.wit" "$wit/deps/cairn-storage/"
for pkg in filesystem io clocks; do
    mkdir -p "$wit/deps/wasi-$pkg"
    cp "$wasi/wasi-$pkg/package.wit" "$wit/deps/wasi-$pkg/"
done

# Only WASI features the cairn host links without extra grants: no wasi:http.
"$tool" backend.js --wit "$wit" --world-name js-backend \
    --disable http fetch-event --out "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out" >&2
