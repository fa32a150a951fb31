#!/usr/bin/env bash
# The whole Pitboss test suite on a fresh machine: installs what is missing (apt, pip, Maven),
# starts the real services on loopback (scripts/stack.sh), runs every test, stops the services
# (also on failure). Build output goes to a fixed directory outside the clone so warm runs reuse it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/pitboss/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
mkdir -p "$CARGO_TARGET_DIR"
# Incremental artifacts do not help a test run and grew the shared target dir by GBs per run.
export CARGO_INCREMENTAL=0
# Each clone in a new directory builds its own workspace test binaries next to the old ones:
# when the shared target dir grows past 40 GB or the disk has under 10 GB free, start it over.
target_gb=$(du -s --block-size=1G "$CARGO_TARGET_DIR" 2>/dev/null | cut -f1)
free_gb=$(df --output=avail --block-size=1G "$CARGO_TARGET_DIR" | tail -1 | tr -d ' ')
if (( ${target_gb:-0} > 40 || ${free_gb:-100} < 10 )); then
  echo "[test] target dir ${target_gb} GB, ${free_gb} GB free: clearing $CARGO_TARGET_DIR/debug" >&2
  rm -rf "$CARGO_TARGET_DIR/debug"
fi
if ! command -v cargo >/dev/null; then
  # rustup installs into ~/.cargo; a non-login shell may not have it on PATH yet.
  # shellcheck disable=SC1091
  [[ -f $HOME/.cargo/env ]] && source "$HOME/.cargo/env"
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup" >&2; exit 1; }

t0=$SECONDS
scripts/stack.sh install
# Every feature: the Kinesis bus (pitboss `aws`, pitboss-bus `kinesis`) and the Lambda functions
# (`lambda`) are off by default so the quickstart does not compile the AWS SDK; their tests run here.
features=(--all-features)
# Compile before starting services, so they do not idle through a cold build.
cargo test --workspace --locked "${features[@]}" --no-run
trap 'scripts/stack.sh stop' EXIT
scripts/stack.sh start --cluster
# shellcheck disable=SC1091
source "${PITBOSS_STACK_DIR:-$ROOT/.stack}/env"
cargo test --workspace --locked "${features[@]}" "$@"
PITBOSS_TEST_CLICKHOUSE_URL=$PITBOSS_TEST_CLICKHOUSE PITBOSS_BIN="$CARGO_TARGET_DIR/debug/pitboss" scripts/deploy-check.sh
# The TypeScript client (clients/typescript) against the real gateway (`pitboss up`, built above).
command -v npm >/dev/null || { echo "npm not found: install Node.js 20 or later" >&2; exit 1; }
(cd clients/typescript && npm ci --no-audit --no-fund && PITBOSS_BIN="$CARGO_TARGET_DIR/debug/pitboss" npm test)
# The operator console in headless Chromium (Debian chromium, npm playwright-core) against a real
# `pitboss up --demo`; its screenshot lands in target/artifacts/console.png.
(cd tests/browser && npm ci --no-audit --no-fund && PITBOSS_BIN="$CARGO_TARGET_DIR/debug/pitboss" npm test)
# The served OpenAPI document (kept equal to docs/openapi.json by a test) must be valid 3.1.
python3 -c 'import openapi_spec_validator' 2>/dev/null \
  || python3 -m pip install -q --disable-pip-version-check 'openapi-spec-validator>=0.7,<1' 2>&1 | grep -v 'Running pip as' >&2 || true
python3 -c 'import json, openapi_spec_validator as v; v.validate(json.load(open("docs/openapi.json"))); print("docs/openapi.json: valid OpenAPI 3.1")'
# Fuzz the JSON and protobuf decoders briefly (longer runs: scripts/fuzz.sh 600).
scripts/fuzz.sh "${PITBOSS_FUZZ_SECONDS:-20}"
echo "[test] all tests passed in $((SECONDS - t0))s"
