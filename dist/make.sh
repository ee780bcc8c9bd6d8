#!/usr/bin/env bash
# The release bundle, in one command: a tarball holding the stripped release binary, the
# backend components it bundles (fs, s3, webdav .wasm, the same bytes as embedded), shell
# completions and the man page (when the binary has `cairn completions` / `cairn man`), the
# README, the demo script, and SHA256SUMS over all of them; beside it, the tarball's own
# .sha256. `cairn --version` in it names the commit (git describe at build time).
#
# usage: [DIST_PROFILE=release|debug] dist/make.sh [OUT_DIR]
#        (OUT_DIR default: $CARGO_TARGET_DIR/dist, else target/dist)
# Needs: the toolchain (`rustup toolchain install`), strip, sha256sum, tar.
# Prints the tarball's path as its last line.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${1:-$TARGET/dist}
for tool in strip sha256sum tar; do
  command -v "$tool" >/dev/null || { echo "dist/make.sh: $tool is needed" >&2; exit 1; }
done

# DIST_PROFILE=debug makes the same bundle from a debug build (CI smoke-tests the script that
# way, reusing the test build); releases use the default, release.
case "${DIST_PROFILE:-release}" in
  release) cargo build --release --locked -p cairn --bin cairn >&2; bin=$TARGET/release/cairn;;
  debug) cargo build --locked -p cairn --bin cairn >&2; bin=$TARGET/debug/cairn;;
  *) echo "dist/make.sh: DIST_PROFILE is release or debug" >&2; exit 2;;
esac
wasm=$TARGET/wasm-plugins/wasm32-wasip2/release
version=$("$bin" --version)                        # cairn 0.1.0 (v0.1.0-12-gabcdef012345)
pkg=$(echo "$version" | cut -d' ' -f2)
name=cairn-$pkg-$(uname -m)-$(uname -s | tr '[:upper:]' '[:lower:]')

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
dir=$stage/$name
mkdir -p "$dir/bin" "$dir/plugins" "$dir/examples"
strip -o "$dir/bin/cairn" "$bin"
for p in fs s3 webdav; do cp "$wasm/cairn_plugin_$p.wasm" "$dir/plugins/$p.wasm"; done
cp README.md "$dir/"
cp examples/demo.sh "$dir/examples/"
echo "$version" > "$dir/VERSION"

# Completions and the man page come from the binary itself, when it has the commands.
if "$dir/bin/cairn" completions bash >/dev/null 2>&1; then
  mkdir -p "$dir/completions"
  "$dir/bin/cairn" completions bash > "$dir/completions/cairn.bash"
  "$dir/bin/cairn" completions zsh > "$dir/completions/_cairn"
  "$dir/bin/cairn" completions fish > "$dir/completions/cairn.fish"
else
  echo "dist/make.sh: this cairn has no \`completions\` command; the bundle has no completions" >&2
fi
if "$dir/bin/cairn" man >/dev/null 2>&1; then
  mkdir -p "$dir/man/man1"
  "$dir/bin/cairn" man > "$dir/man/man1/cairn.1"
else
  echo "dist/make.sh: this cairn has no \`man\` command; the bundle has no man page" >&2
fi

(cd "$dir" && find . -type f ! -name SHA256SUMS -printf '%P\n' | LC_ALL=C sort | xargs sha256sum > SHA256SUMS)
mkdir -p "$OUT"
tarball=$OUT/$name.tar.gz
tar -C "$stage" --owner=0 --group=0 --numeric-owner -czf "$tarball.tmp" "$name"
mv "$tarball.tmp" "$tarball"
(cd "$OUT" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
echo "dist/make.sh: $version; binary $(stat -c %s "$dir/bin/cairn") bytes stripped" >&2
echo "$tarball"
