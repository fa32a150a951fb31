#!/usr/bin/env bash
# A/B of two pitboss builds as ingest servers over Kafka (batches of 100), on the same load:
# rounds alternate A and B, each a scripts/bench-ingest.sh run of one binary, with the same
# load generator binary (B's) for both, so host drift hits both sides alike.
#
#   scripts/stack.sh start && source .stack/env
#   scripts/ab-ingest.sh A_BINARY B_BINARY [rounds, default 4] [seconds per run, default 10]
#
# Prints one JSON line per run and a summary: median events/s and CPU per event of each side.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
A=$1 B=$2 ROUNDS=${3:-4} SECS=${4:-10}
[[ -n ${PITBOSS_TEST_KAFKA:-} ]] || { echo "PITBOSS_TEST_KAFKA not set (scripts/stack.sh start; source .stack/env)" >&2; exit 1; }
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  for side in A B; do
    bin=$([[ $side == A ]] && echo "$A" || echo "$B")
    line=$(PITBOSS_BENCH_BIN=$bin PITBOSS_BENCH_LOADGEN_BIN=$B PITBOSS_BENCH_BUSES=kafka \
      PITBOSS_BENCH_BATCHES=100 PITBOSS_BENCH_RUNS=1 "$ROOT/scripts/bench-ingest.sh" "$SECS" 32 2>/dev/null \
      | grep '^{' | tail -1)
    echo "{\"side\":\"$side\",\"round\":$round,${line#\{}" | tee -a "$OUT"
  done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda side, k: statistics.median(r[k] for r in rows if r["side"] == side)
print()
print(f"{'side':<5} {'events/s':>10} {'server us/ev':>13} {'broker us/ev':>13} {'loadgen us/ev':>14} {'raw decode/s':>13}")
for side in "AB":
    print(f"{side:<5} {med(side,'events_per_sec'):>10,.0f} {med(side,'server_cpu_us_per_event'):>13.2f} "
          f"{med(side,'broker_cpu_us_per_event'):>13.2f} {med(side,'loadgen_cpu_us_per_event'):>14.2f} {med(side,'raw_decode_events_per_sec'):>13,.0f}")
a, b = med("A", "events_per_sec"), med("B", "events_per_sec")
sa, sb = med("A", "server_cpu_us_per_event"), med("B", "server_cpu_us_per_event")
print(f"B/A: events/s x{b / a:.2f}, server CPU per event x{sb / sa:.2f}")
PY
