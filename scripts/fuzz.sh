#!/usr/bin/env bash
# Fuzzes the SFTP framing + request decoding path and VirtualPath normalisation with
# libFuzzer, each for a fixed time (not part of CI). A crash leaves its input under
# fuzz/artifacts/<target>/: turn it into a regression test before fixing it.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz needs nightly-only flags; the stable toolchain accepts them with this set.
export RUSTC_BOOTSTRAP=1
for target in virtual_path sftp_framing; do
  echo "== $target for ${SECS}s"
  cargo fuzz run "$target" --fuzz-dir fuzz -- -max_total_time="$SECS" -max_len=65536
done
