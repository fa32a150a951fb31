#!/usr/bin/env bash
# Fuzzes the decoders of untrusted input (fuzz/fuzz_targets) with cargo-fuzz (libFuzzer, ASan),
# each target for N seconds (default 30). Installs cargo-fuzz when missing; needs nightly Rust.
# A crash fails the run and leaves the reproducer in fuzz/artifacts/.
#
#   scripts/fuzz.sh [seconds per target]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=${1:-30}
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal \
    || { echo "[fuzz] cargo-fuzz needs nightly Rust and it could not be installed" >&2; exit 1; }
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export CARGO_TARGET_DIR=${PITBOSS_FUZZ_TARGET_DIR:-/var/cache/pitboss/fuzz-target}
cd "$ROOT/fuzz"
log=$(mktemp)
for target in $(cargo +nightly fuzz list); do
  if ! cargo +nightly fuzz run "$target" --target-dir "$CARGO_TARGET_DIR" -- -max_total_time="$SECS" >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "[fuzz] $target FAILED; reproducer in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  echo "[fuzz] $target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -1)"
done
rm -f "$log"
