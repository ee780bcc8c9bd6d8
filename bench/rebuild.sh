#!/usr/bin/env bash
# Journal rebuild benchmark: a repository of about a million chunks (256-byte average
# chunks over 256 MiB of random data), then `cairn repair --rebuild-journal` from index
# objects, and again from pack headers alone (index objects removed). Prints the time and
# the bytes downloaded for each, per million chunks.
#
# usage: bench/rebuild.sh [-m MiB of data (default 256)] [-w WORK (default /tmp/bench/rebuild)]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MIB=256
WORK=/tmp/bench/rebuild
while getopts "m:w:" o; do
  case $o in m) MIB=$OPTARG;; w) WORK=$OPTARG;; *) sed -n 2,8p "$0"; exit 2;; esac
done
(cd "$ROOT" && cargo build --release --quiet)
CAIRN=$ROOT/target/release/cairn
rm -rf "$WORK" && mkdir -p "$WORK/src"
for i in $(seq 1 $((MIB / 32))); do head -c $((32 << 20)) /dev/urandom > "$WORK/src/f$i.bin"; done
cat >"$WORK/cairn.toml" <<TOML
[repository]
backend = "fs"
options = { path = "$WORK/repo", fsync = false }
password_env = "CAIRN_PASSWORD"
[backup]
sources = ["$WORK/src"]
compression = 0
[state]
dir = "$WORK/state"
cache_dir = "$WORK/cache"
TOML
export CAIRN_PASSWORD=bench
C=("$CAIRN" --config "$WORK/cairn.toml")
"${C[@]}" init --chunk-size 256B >/dev/null
echo "backing up $MIB MiB in ~256-byte chunks..."
/usr/bin/time -f "backup: %e s, peak %M KB" "${C[@]}" backup | tail -1

rebuild() {
  rm -rf "$WORK/state"
  sync
  /usr/bin/time -f "%e %M" -o "$WORK/time" "${C[@]}" --json repair --rebuild-journal >"$WORK/out.json"
  read -r secs rss <"$WORK/time"
  python3 - "$WORK/out.json" "$secs" "$rss" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["rebuilt"]
# The rebuild's own time (the command then also runs a repair check, not counted here).
secs, rss, label = r["seconds"], int(sys.argv[3]), sys.argv[4]
chunks = r["blobs"]
print(f"{label}: {chunks} chunks in {secs:.2f} s ({secs / (chunks / 1e6):.2f} s per million chunks); "
      f"{r['index_objects']} index objects, {r['packs_from_index']} packs from indexes, "
      f"{r['packs_from_headers']} packs from headers; downloaded {r['bytes_downloaded'] / 2**20:.1f} MiB; peak {rss // 1024} MiB")
PY
}
du -sh "$WORK/repo"
rebuild "rebuild from index objects"
mkdir -p "$WORK/index-aside" && mv "$WORK/repo/index/"* "$WORK/index-aside/"
rebuild "rebuild from pack headers only"
"${C[@]}" verify >/dev/null && echo "verify after rebuild: whole"
