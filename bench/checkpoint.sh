#!/usr/bin/env bash
# What checkpoints cost and what they save, measured from outside the process.
#
# 1. Cost: wall time and peak RSS (/usr/bin/time -v) of a first backup of DATASET into a
#    fresh fs repository, with `[checkpoint] interval_secs = 2` vs no checkpoint (an hour,
#    1000 GiB), REPS times each, alternating. Target: within 10%.
# 2. Resume: a backup under strace (interval_secs = 2, interval_bytes = 64MiB), SIGKILLed
#    once it has read KILL% of the source bytes (counted by bench/strace_reads.py from the
#    process's read calls), then the resumed run, also under strace: how many source bytes
#    it read, and how many of them the killed run had read already.
#
# usage: bench/checkpoint.sh [-d DATASET] [-n REPS] [-k KILL_PERCENT] [-o OUT]
#   DATASET: default /tmp/bench/datasets/ds-1g (made by ../shared/bench/gen_dataset.py
#            DATASET --size 1G --seed 42 if missing)
# Needs: strace, /usr/bin/time, python3. Uses a release build of cairn (or $CAIRN).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
DS=/tmp/bench/datasets/ds-1g
REPS=3
KILL=60
OUT=""
while getopts "d:n:k:o:" o; do
  case $o in
    d) DS=$OPTARG;; n) REPS=$OPTARG;; k) KILL=$OPTARG;; o) OUT=$OPTARG;;
    *) sed -n 2,16p "$0"; exit 2;;
  esac
done
command -v strace >/dev/null || { echo "strace is needed: apt-get install strace" >&2; exit 1; }
if [ ! -d "$DS" ]; then
  echo "generating dataset $DS"
  python3 "$SHARED/gen_dataset.py" "$DS" --size 1G --seed 42
fi
DS=$(readlink -f "$DS")
WORK=${WORK:-/tmp/bench/work}/checkpoint
OUT=${OUT:-/tmp/bench/results/checkpoint-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" "$WORK"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${CAIRN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet)
  CAIRN=$TARGET/release/cairn
fi
export CAIRN_BENCH_PASSWORD=bench

# config NAME SECS BYTES: a fresh repository and state folder with that checkpoint interval.
config() {
  local dir=$WORK/$1
  rm -rf "$dir"; mkdir -p "$dir"
  cat >"$dir/cairn.toml" <<EOF
[repository]
backend = "fs"
options = { path = "$dir/repo" }
password_env = "CAIRN_BENCH_PASSWORD"

[backup]
sources = ["$DS"]

[checkpoint]
interval_secs = $2
interval_bytes = "$3"

[state]
dir = "$dir/state"
EOF
  "$CAIRN" --config "$dir/cairn.toml" init >/dev/null
  echo "$dir/cairn.toml"
}

# Warm the page cache (both variants read from memory) and the compiled-plugin cache (the
# first run of a binary compiles the backend plugin): one untimed backup.
tar cf - -C "$DS" . >/dev/null
"$CAIRN" --config "$(config warmup 3600 1000GiB)" backup >/dev/null

echo "== checkpoint cost ($REPS reps, $(du -sh "$DS" | cut -f1) dataset)"
printf 'variant\trep\twall_s\tmax_rss_kb\tcheckpoints\n' >"$OUT/cost.tsv"
for rep in $(seq 1 "$REPS"); do
  for variant in none every-2s; do
    case $variant in
      none) cfg=$(config $variant 3600 1000GiB);;
      every-2s) cfg=$(config $variant 2 1000GiB);;
    esac
    /usr/bin/time -v -o "$OUT/time-$variant-$rep.txt" \
      "$CAIRN" --config "$cfg" -v backup >"$OUT/out-$variant-$rep.txt" 2>"$OUT/err-$variant-$rep.txt"
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,t,":"); s=0; for(i=1;i<=n;i++) s=s*60+t[i]; print s}' "$OUT/time-$variant-$rep.txt")
    rss=$(awk -F': ' '/Maximum resident/ {print $2}' "$OUT/time-$variant-$rep.txt")
    cps=$(grep -c "checkpoint: partial snapshot" "$OUT/err-$variant-$rep.txt" || true)
    printf '%s\t%s\t%s\t%s\t%s\n' "$variant" "$rep" "$wall" "$rss" "$cps" | tee -a "$OUT/cost.tsv"
  done
done
python3 - "$OUT/cost.tsv" <<'EOF' | tee "$OUT/cost-summary.txt"
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()[1:]]
w = {v: [float(r[2]) for r in rows if r[0] == v] for v in ("none", "every-2s")}
for name, f in (("mean", statistics.mean), ("median", statistics.median)):
    a, b = f(w["none"]), f(w["every-2s"])
    print(f"{name} wall: none {a:.2f}s, every 2 s {b:.2f}s: {(b / a - 1) * 100:+.1f}%")
EOF

echo "== resume after a kill at $KILL% of the source bytes read"
cfg=$(config resume 2 64MiB)
total=$(find "$DS" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
kill_at=$((total * KILL / 100))
first=$(python3 "$ROOT/bench/strace_reads.py" --src "$DS" --out "$OUT/reads-killed.json" --kill-at "$kill_at" \
  -- "$CAIRN" --config "$cfg" backup)
second=$(python3 "$ROOT/bench/strace_reads.py" --src "$DS" --out "$OUT/reads-resumed.json" \
  --earlier "$OUT/reads-killed.json" -- "$CAIRN" --config "$cfg" backup)
echo "source $total bytes; killed run: $first; resumed run: $second" | tee "$OUT/resume.txt"
python3 - "$total" "$first" "$second" <<'EOF' | tee -a "$OUT/resume.txt"
import sys
total = int(sys.argv[1])
f = dict(kv.split("=") for kv in sys.argv[2].split())
s = dict(kv.split("=") for kv in sys.argv[3].split())
mib = 1 << 20
print(f"killed run read {int(f['read'])/mib:.0f} MiB ({int(f['read'])/total:.0%}); resumed run read "
      f"{int(s['read'])/mib:.0f} MiB, of it {int(s['again'])/mib:.1f} MiB again "
      f"({int(s['again'])/int(f['read']):.1%} of what the killed run read)")
EOF
echo "results in $OUT"
