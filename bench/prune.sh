#!/usr/bin/env bash
# Forget + prune, measured from outside the process.
#
# 1. History: ROUNDS backups of a copy of DATASET, each round after a churn (mutate.py with
#    the round as seed, and one 32 MiB random file replaced), backed up by cairn and by
#    restic at the same states. Then `forget --keep-last 3 --prune` with each, REPEAT times
#    on copies of the histories made before the first measurement (alternating which tool
#    goes first): wall time and peak RSS (/usr/bin/time -v), medians compared; and, in one
#    more run on a copy, the bytes read from the repository folder (bench/strace_reads.py:
#    read/pread64 calls on files under the repository, distinct byte ranges).
# 2. Big: a cairn repository with >= 1M chunks (`init --chunk-size 256B`, BIG_MIB of random
#    data, then BIG_MIB/2 of it replaced and backed up again), `forget --keep-last 1 --prune`
#    with peak RSS measured: memory stays bounded because the mark and the plan live on disk.
#
# usage: bench/prune.sh [-d DATASET] [-r ROUNDS] [-n REPEAT] [-b BIG_MIB] [-o OUT]
#   DATASET default /tmp/bench/datasets/ds-1g (../shared/bench/gen_dataset.py makes it);
#   ROUNDS default 10 (-r 0 skips part 1); REPEAT default 4; BIG_MIB default 320 (-b 0
#   skips part 2).
# Needs: restic, strace, /usr/bin/time, python3. Uses a release build of cairn (or $CAIRN).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
DS=/tmp/bench/datasets/ds-1g
ROUNDS=10
REPEAT=4
BIG_MIB=320
OUT=""
while getopts "d:r:n:b:o:" o; do
  case $o in
    d) DS=$OPTARG;; r) ROUNDS=$OPTARG;; n) REPEAT=$OPTARG;; b) BIG_MIB=$OPTARG;; o) OUT=$OPTARG;;
    *) sed -n 2,21p "$0"; exit 2;;
  esac
done
for t in restic strace /usr/bin/time python3; do
  command -v $t >/dev/null || { echo "$t is needed" >&2; exit 1; }
done
WORK=${WORK:-/tmp/bench/prune-work}
OUT=${OUT:-/tmp/bench/results/prune-$(date +%Y%m%d-%H%M%S)}
# REUSE_HISTORY=1 keeps the histories of part 1 in $WORK and measures them again (to
# compare builds of cairn on the same history); otherwise $WORK starts empty.
REUSE=${REUSE_HISTORY:-0}
if [ "$REUSE" = 1 ] && [ -d "$WORK/cairn-history" ] && [ -d "$WORK/restic-history" ]; then
  mkdir -p "$OUT"
else
  REUSE=0
  rm -rf "$WORK"; mkdir -p "$WORK" "$OUT"
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${CAIRN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet -p cairn)
  CAIRN=$TARGET/release/cairn
fi
export CAIRN_BENCH_PASSWORD=bench RESTIC_PASSWORD=bench

# measure NAME CMD...: wall seconds and peak RSS (KiB) of CMD, appended to results.tsv.
measure() {
  local name=$1; shift
  /usr/bin/time -v -o "$OUT/time-$name.txt" "$@" >"$OUT/out-$name.txt" 2>&1
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$OUT/time-$name.txt" |
    awk -F: '{ if (NF == 3) print $1 * 3600 + $2 * 60 + $3; else print $1 * 60 + $2 }')
  rss=$(awk -F': ' '/Maximum resident/ {print $2}' "$OUT/time-$name.txt")
  printf '%s\t%s\t%s\n' "$name" "$wall" "$rss" >>"$OUT/results.tsv"
  printf '  %-28s %8.2f s  %6d MiB peak RSS\n' "$name" "$wall" $((rss / 1024))
}

# reads NAME REPO CMD...: bytes read from files under REPO by CMD (strace, from outside).
reads() {
  local name=$1 repo=$2; shift 2
  local line
  line=$(python3 "$ROOT/bench/strace_reads.py" --src "$repo" --out "$OUT/reads-$name.json" -- "$@")
  printf '%s\tread_bytes\t%s\n' "$name" "${line#read=}" >>"$OUT/results.tsv"
  printf '  %-28s %s\n' "$name" "$line"
}

cairn_config() {
  local dir=$1 src=$2
  mkdir -p "$dir"
  cat >"$dir/cairn.toml" <<EOF
[repository]
backend = "fs"
options = { path = "$dir/repo" }
password_env = "CAIRN_BENCH_PASSWORD"

[backup]
sources = ["$src"]

[state]
dir = "$dir/state"
EOF
  echo "$dir/cairn.toml"
}

if [ "$ROUNDS" -gt 0 ]; then
SRC=$WORK/src
CFG=$WORK/cairn/cairn.toml
export RESTIC_REPOSITORY=$WORK/restic/repo
if [ "$REUSE" = 0 ]; then
echo "== history: $ROUNDS backups of $(du -sh "$DS" | cut -f1) with churn"
cp -a "$DS" "$SRC"
CFG=$(cairn_config "$WORK/cairn" "$SRC")
"$CAIRN" --config "$CFG" init >/dev/null
restic init >/dev/null
for r in $(seq 1 "$ROUNDS"); do
  if [ "$r" -gt 1 ]; then
    python3 "$SHARED/mutate.py" "$SRC" --seed "$r" >/dev/null
  fi
  rm -f "$SRC"/churn-*.bin
  head -c 32M /dev/urandom >"$SRC/churn-$r.bin"
  "$CAIRN" --config "$CFG" backup >/dev/null
  restic backup --host bench "$SRC" >/dev/null
  echo "  round $r backed up"
done
du -sb "$WORK/cairn/repo" "$RESTIC_REPOSITORY" | tee "$OUT/sizes-before.txt"

# Each measured run gets its own copy of both histories, all made (and synced) before the
# first is measured: nothing is deleted between measurements but what the tools delete
# (freeing gigabytes of page cache in this VM makes the next writes slow for seconds, so a
# copy made just before would slow whichever tool runs first). The pairs alternate which
# tool goes first (an even REPEAT puts each first equally often); medians are compared.
mv "$WORK/cairn" "$WORK/cairn-history"
mv "$WORK/restic" "$WORK/restic-history"
else
  echo "== the history kept in $WORK (REUSE_HISTORY=1)"
fi
rm -rf "$WORK"/run-*
for i in $(seq 1 "$REPEAT") traced; do
  cp -a "$WORK/cairn-history" "$WORK/run-$i-cairn"
  cp -a "$WORK/restic-history" "$WORK/run-$i-restic"
  sed -i "s#$WORK/cairn/#$WORK/run-$i-cairn/#g" "$WORK/run-$i-cairn/cairn.toml"
done
settle() { # nothing left to write back
  sync
  sleep 5
}
settle
cairn_run() { # NAME I: forget --keep-last 3 --prune on copy I, measured
  measure "$1" "$CAIRN" --config "$WORK/run-$2-cairn/cairn.toml" --json forget --keep-last 3 --prune
}
restic_run() {
  measure "$1" restic -r "$WORK/run-$2-restic/repo" forget --keep-last 3 --prune
}
echo "== forget --keep-last 3 --prune ($REPEAT pairs)"
"$CAIRN" --config "$WORK/run-1-cairn/cairn.toml" --json forget --keep-last 3 --prune --dry-run \
  >"$OUT/cairn-plan.json"
for i in $(seq 1 "$REPEAT"); do
  if [ $((i % 2)) -eq 1 ]; then
    cairn_run cairn_forget_prune_$i "$i"
    settle
    restic_run restic_forget_prune_$i "$i"
  else
    restic_run restic_forget_prune_$i "$i"
    settle
    cairn_run cairn_forget_prune_$i "$i"
  fi
  settle
done
python3 - "$OUT/results.tsv" <<'PY' | tee "$OUT/summary.txt"
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]) if "_forget_prune_" in l]
def med(tool, col):
    return statistics.median(float(r[col]) for r in rows if r[0].startswith(tool + "_forget_prune_"))
c, r = med("cairn", 1), med("restic", 1)
print(f"  median wall: cairn {c:.2f} s, restic {r:.2f} s, ratio {c / r:.2f}")
print(f"  median peak RSS: cairn {med('cairn', 2) / 1024:.0f} MiB, restic {med('restic', 2) / 1024:.0f} MiB")
PY
du -sb "$WORK/run-1-cairn/repo" "$WORK/run-1-restic/repo" | tee "$OUT/sizes-after.txt"
"$CAIRN" --config "$WORK/run-1-cairn/cairn.toml" verify --read-data >/dev/null &&
  echo "  cairn verify --read-data: clean"

# Bytes read from the repository folder (strace; a separate run, on one more copy).
reads cairn_forget_prune "$WORK/run-traced-cairn/repo" \
  "$CAIRN" --config "$WORK/run-traced-cairn/cairn.toml" forget --keep-last 3 --prune
reads restic_forget_prune "$WORK/run-traced-restic/repo" \
  restic -r "$WORK/run-traced-restic/repo" forget --keep-last 3 --prune
rm -rf "$WORK"/run-* "$SRC"
[ "${REUSE_HISTORY:-0}" = 1 ] || rm -rf "$WORK/cairn-history" "$WORK/restic-history"
fi

if [ "$BIG_MIB" -gt 0 ]; then
  echo "== big: $BIG_MIB MiB at 256 B average chunks"
  BIG=$WORK/big-src
  # 1 MiB files, 32 per folder: about 4096 chunks per file. (Memory follows the largest
  # folder listing, which holds every chunk id of its files: ten 32 MiB files in one folder
  # at 256 B chunks make a 42 MB listing, like ten 128 GiB disk images at 1 MiB chunks.)
  big_files() { # FIRST LAST: (re)write files FIRST..LAST
    for i in $(seq "$1" "$2"); do
      mkdir -p "$BIG/d$((i / 32))"
      head -c 1M /dev/urandom >"$BIG/d$((i / 32))/f$i.bin"
    done
  }
  big_files 1 "$BIG_MIB"
  BCFG=$(cairn_config "$WORK/big" "$BIG")
  "$CAIRN" --config "$BCFG" init --chunk-size 256B >/dev/null
  measure big_backup_1 "$CAIRN" --config "$BCFG" backup
  # Half the files replaced: their chunks are needed only by the first snapshot.
  big_files 1 $((BIG_MIB / 2))
  measure big_backup_2 "$CAIRN" --config "$BCFG" backup
  "$CAIRN" --config "$BCFG" --json stats >"$OUT/big-stats.json"
  journal=$(ls "$WORK"/big/state/*/journal.sqlite)
  python3 -c "import sqlite3,sys; print('  chunks in the journal:', sqlite3.connect(sys.argv[1]).execute('select count(*) from blobs').fetchone()[0])" "$journal" |
    tee "$OUT/big-chunks.txt"
  measure big_forget_prune "$CAIRN" --config "$BCFG" --json forget --keep-last 1 --prune
  "$CAIRN" --config "$BCFG" verify >/dev/null && echo "  cairn verify: clean"
  rm -rf "$BIG"
fi
echo "results in $OUT"
