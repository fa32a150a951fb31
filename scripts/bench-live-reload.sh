#!/usr/bin/env bash
# Bus to alert while the rule set reloads (docs/benchmarks.md, "Lists"): scripts/bench-live.sh
# at one rate, with `pitboss up --rules DIR`, DIR the shipped packs plus a lists.toml of
# 1,000,000 values (500,000 devices for every tenant, 400,000 addresses and 100,000 networks
# for tenant demo, all distinct), rewritten every RELOAD_EVERY seconds from 15 s after this
# script starts until the run's end (its settle time included; a comment line changes: each
# rewrite is a reload of the whole set). RELOAD_EVERY=0 never rewrites it: the baseline, same
# set.
#
#   scripts/bench-live-reload.sh [seconds, default 60] [rate, default 10000]
#   (RELOAD_EVERY=10, PITBOSS_BENCH_BIN=path and the rest as bench-live.sh)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=${1:-60}
RATE=${2:-10000}
EVERY=${RELOAD_EVERY:-10}
W=$(mktemp -d); R=$W/rules; mkdir -p "$R"; cp "$ROOT"/rules/*.toml "$R"/
LOOP=""
cleanup() {
  [[ -n $LOOP ]] && { pkill -P "$LOOP" 2>/dev/null; kill "$LOOP" 2>/dev/null; }
  wait 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
python3 - "$W/lists.base" <<'PY'
import sys
out = open(sys.argv[1], "w")
out.write('[[list]]\nname = "blocked_devices"\nvalues = [\n')
for i in range(500_000):
    out.write('  "dev-%016x",\n' % ((i * 0x9E3779B97F4A7C15) % (1 << 64)))
out.write(']\n\n[[list]]\nname = "blocked_ips"\nkind = "ip"\ntenant = "demo"\nvalues = [\n')
for i in range(400_000):
    out.write('  "10.%d.%d.%d",\n' % ((i >> 16) & 255, (i >> 8) & 255, i & 255))
for i in range(100_000):
    j = i >> 1  # 50,000 of each family, all distinct
    out.write('  "%s",\n' % ("172.%d.%d.%d/28" % (16 + ((j >> 12) & 15), (j >> 4) & 255, (j & 15) << 4)
                             if i % 2 == 0 else "2001:db8:%x::/48" % j))
out.write(']\n')
PY
cp "$W/lists.base" "$R/lists.toml"
if ((EVERY > 0)); then
  (
    sleep 15
    i=0
    while :; do
      i=$((i + 1))
      { cat "$W/lists.base"; echo "# rewrite $i"; } >"$R/.lists.toml.new" && mv "$R/.lists.toml.new" "$R/lists.toml"
      sleep "$EVERY"
    done
  ) &
  LOOP=$!
fi
PITBOSS_BENCH_METRICS=$W/metrics PITBOSS_BENCH_UP_ARGS="--rules $R ${PITBOSS_BENCH_UP_ARGS:-}" \
  "$ROOT"/scripts/bench-live.sh "$SECS" "$RATE"
echo "reloads: $(grep -E '^pitboss_antifraud_reloads_total' "$W/metrics/metrics-$RATE.txt" | tr '\n' ' ')"
