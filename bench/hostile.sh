#!/usr/bin/env bash
# Peak memory of cairn under hostile answers: a test plugin (plugins/chaos) whose listing
# cycles, never ends or floods a page, whose `stat` claims 4 GiB, whose `read` answers
# ~120 MiB whatever was asked; and a repository holding hostile objects (forged key files,
# a 3 GiB index object, a 400 MiB unknown object moved by `repair --quarantine`). Each command must fail with one clear line (or succeed, skipping
# the hostile objects); the table gives the peak RSS of the cairn process (/usr/bin/time)
# with the default thread count and plugin memory cap (256 MiB). tests/bounded.rs checks
# the same cases against the budget of 150 MiB + the plugin memory cap.
#
# usage: bench/hostile.sh [-w WORK (default /tmp/bench/hostile)]
#        (CAIRN=path/to/cairn skips the release build and measures that binary)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=/tmp/bench/hostile
while getopts "w:" o; do
  case $o in w) WORK=$OPTARG;; *) sed -n 2,11p "$0"; exit 2;; esac
done
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${CAIRN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet -p cairn --bin cairn)
  CAIRN=$TARGET/release/cairn
fi
CHAOS=$TARGET/wasm-plugins/wasm32-wasip2/release/cairn_plugin_chaos.wasm
rm -rf "$WORK" && mkdir -p "$WORK/src" "$WORK/repo"
for i in 1 2 3 4 5 6; do head -c $((4 << 20)) /dev/urandom >"$WORK/src/f$i.bin"; done
export CAIRN_PASSWORD=bench

config() { # $1: backend, $2: faults
  cat >"$WORK/cairn.toml" <<TOML
[repository]
backend = "$1"
options = { path = "$WORK/repo"$( [ "$1" = fs ] || echo ", faults = \"$2\"" ) }
password_env = "CAIRN_PASSWORD"
$( [ "$1" = fs ] || echo "grants = { dirs = [\"$WORK/repo\"] }" )
[backup]
sources = ["$WORK/src"]
pack_size = "4MiB"
[state]
dir = "$WORK/state"
cache_dir = "$WORK/cache"
TOML
  rm -f "$WORK"/repo/.chaos-count-*
}
C=("$CAIRN" --config "$WORK/cairn.toml")
config "$CHAOS" ""
"${C[@]}" init >/dev/null
"${C[@]}" backup >/dev/null

measure() { # $1: label, rest: cairn arguments
  local label=$1
  shift
  local rc=0
  /usr/bin/time -f "%M" -o "$WORK/rss" "${C[@]}" "$@" >/dev/null 2>"$WORK/err" || rc=$?
  printf '| %s | %d MiB | %d | %d |\n' "$label" $(($(tail -1 "$WORK/rss") / 1024)) "$rc" \
    "$(grep -c 'skipping' "$WORK/err" || true)"
  grep '^cairn: ' "$WORK/err" | sed "s/^/    ($label) /" >>"$WORK/messages" || true
}

: >"$WORK/messages"
echo "| hostile answer | peak RSS | exit code | objects skipped with a warning |"
echo "|---|---|---|---|"
measure "none (snapshots, for reference)" snapshots
for f in list:cycle list:endless list:flood stat:huge; do
  config "$CHAOS" "$f"
  measure "$f (snapshots)" snapshots
done
config "$CHAOS" "read:flood"
rm -rf "$WORK/restored"
measure "read:flood (restore)" restore latest --target "$WORK/restored"

config fs ""
good=$(ls "$WORK/repo/keys" | head -1)
zeros=000000000000000000000000000000000000000000000000000000000000
printf '{ not JSON' >"$WORK/repo/keys/${zeros}0001"
sed 's/"memory_kib": *[0-9]*/"memory_kib": 67108864/' "$WORK/repo/keys/$good" >"$WORK/repo/keys/${zeros}0002"
truncate -s 2G "$WORK/repo/keys/${zeros}0003"
measure "3 forged key files beside the good one (snapshots)" snapshots
rm "$WORK/repo/keys/${zeros}"000*
huge_index=$WORK/repo/index/$(printf 'ab%.0s' $(seq 32))
truncate -s 3G "$huge_index"
measure "a 3 GiB index object (snapshots)" snapshots
rm "$huge_index"
truncate -s 400M "$WORK/repo/index/$(printf 'cd%.0s' $(seq 32))"
measure "a 400 MiB unknown object (repair --quarantine)" repair --quarantine
echo
echo "messages:"
cat "$WORK/messages"
