#!/usr/bin/env bash
# Backs up a sample folder with the built-in local-folder backend, lists the snapshot,
# restores it and compares. Everything lives in ${CAIRN_DEMO:-/tmp/cairn-demo}.
# With CAIRN=/path/to/cairn it runs that binary (an installed or unpacked one) and builds
# nothing; otherwise it builds the debug binary of this checkout first.
set -euo pipefail
demo=${CAIRN_DEMO:-/tmp/cairn-demo}
rm -rf "$demo" && mkdir -p "$demo/sample/docs" "$demo/sample/photos"
for i in $(seq 1 50); do echo "note $i: cairn keeps the only copy safe" > "$demo/sample/docs/note-$i.txt"; done
head -c 8000000 /dev/urandom > "$demo/sample/photos/big.raw"
ln -s docs/note-1.txt "$demo/sample/latest-note"
cat > "$demo/cairn.toml" <<TOML
[repository]
backend = "fs"
options = { path = "$demo/repo" }
password_env = "CAIRN_PASSWORD"

[backup]
sources = ["$demo/sample"]
exclude = ["*.tmp"]

[state]
dir = "$demo/state"
TOML
export CAIRN_PASSWORD=${CAIRN_PASSWORD:-demo-password}
if [ -z "${CAIRN:-}" ]; then
  cd "$(dirname "$0")/.."
  # Not quiet: the first build compiles wasmtime and the plugins (several minutes on a small
  # machine), and cargo's progress shows it is working; later builds take seconds.
  echo "building cairn (the first build takes several minutes; cargo shows its progress)" >&2
  cargo build
  CAIRN=${CARGO_TARGET_DIR:-$PWD/target}/debug/cairn
fi
cairn() { "$CAIRN" --config "$demo/cairn.toml" "$@"; }
cairn init
cairn backup
cairn backup   # nothing changed: nothing is read or uploaded again
cairn snapshots
cairn ls latest --long | head -n 8
cairn restore latest --target "$demo/restored"
diff -r "$demo/sample" "$demo/restored$demo/sample" && echo "restored copy is identical"
