#!/usr/bin/env bash
# Time to notify under load, embedded: `pitboss up` (release) and `pitboss loadgen --live` with
# 10,000 player sockets and 2 operators connected, at each rate given; one JSON line per rate
# (loadgen's report), plus the server's CPU seconds. Server and load generator share this
# machine's cores.
#
#   scripts/bench-live.sh [seconds per rate, default 60] [rates..., default 1000 10000]
#   (PITBOSS_BENCH_SOCKETS=10000, PITBOSS_BENCH_RISKY_SHARE=0.02, PITBOSS_BENCH_BIN=path,
#    PITBOSS_BENCH_UP_ARGS="--snapshot-interval-ms 60000" adds flags to `pitboss up`;
#    PITBOSS_BENCH_KAFKA=host:port runs it on Kafka, PITBOSS_BENCH_CLICKHOUSE=url stores in
#    ClickHouse: fresh topics (a prefix) and database per rate, the database dropped after)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_PER_RATE=${1:-60}
shift || true
RATES=("${@:-1000 10000}")
# shellcheck disable=SC2206
RATES=(${RATES[*]})
SOCKETS=${PITBOSS_BENCH_SOCKETS:-10000}
RISKY=${PITBOSS_BENCH_RISKY_SHARE:-0.02}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/pitboss/target}
cd "$ROOT"
if [[ -n ${PITBOSS_BENCH_BIN:-} ]]; then
  BIN=$PITBOSS_BENCH_BIN
else
  cargo build --release -q -p pitboss
  BIN=$CARGO_TARGET_DIR/release/pitboss
fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SERVER=""
WORK=""
cleanup() { [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null; [[ -n $WORK ]] && rm -rf "$WORK"; }
trap cleanup EXIT

for rate in "${RATES[@]}"; do
  WORK=$(mktemp -d)
  API=$(port); GW=$(port); ADMIN=$(port)
  RUN=bench_$(date +%s)_$RANDOM
  DISTRIBUTED=()
  [[ -n ${PITBOSS_BENCH_KAFKA:-} ]] && DISTRIBUTED+=(--kafka-bootstrap "$PITBOSS_BENCH_KAFKA" --topic-prefix "${RUN}_")
  [[ -n ${PITBOSS_BENCH_CLICKHOUSE:-} ]] && DISTRIBUTED+=(--clickhouse-url "$PITBOSS_BENCH_CLICKHOUSE" --clickhouse-database "$RUN")
  RUST_LOG=warn "$BIN" up --data-dir "$WORK/data" --listen "127.0.0.1:$API" --admin-listen "127.0.0.1:$ADMIN" \
    --gateway-listen "127.0.0.1:$GW" "${DISTRIBUTED[@]}" ${PITBOSS_BENCH_UP_ARGS:-} >"$WORK/up.log" 2>&1 &
  SERVER=$!
  ready=0
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$API/readyz" >/dev/null 2>&1 && { ready=1; break; }; sleep 0.2; done
  if ((!ready)); then cat "$WORK/up.log" >&2; echo "pitboss up did not get ready" >&2; exit 1; fi
  set +e
  RUST_BACKTRACE=0 RUST_LOG=warn "$BIN" loadgen --live --url "http://127.0.0.1:$API" --gateway "ws://127.0.0.1:$GW" \
    --key-file "$WORK/data/demo-api-key" --jwt-secret-file "$WORK/data/gateway-jwt-secret" \
    --rate "$rate" --seconds "$SECONDS_PER_RATE" --sockets "$SOCKETS" --operators 2 \
    --risky-share "$RISKY" --settle-secs 30 >"$WORK/loadgen.out" 2>"$WORK/loadgen.err"
  rc=$?
  set -e
  cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$SERVER/stat")
  # The rules engine's own bus-to-alert histogram (the event on the bus to its alert or push
  # on the bus): the bucket bounds under which half and 99 % of them fell.
  curl -sf "http://127.0.0.1:$ADMIN/metrics" >"$WORK/metrics.txt" || true
  # PITBOSS_BENCH_METRICS=DIR keeps the server's /metrics after each rate (DIR/metrics-RATE.txt).
  if [[ -n ${PITBOSS_BENCH_METRICS:-} ]]; then
    mkdir -p "$PITBOSS_BENCH_METRICS"
    curl -sf "http://127.0.0.1:$ADMIN/metrics" >"$PITBOSS_BENCH_METRICS/metrics-$rate.txt" || true
  fi
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
  grep -v '^{' "$WORK/loadgen.out" >&2 || true
  grep -v '^\s' "$WORK/loadgen.err" | tail -5 >&2 || true
  # A run that failed before its report still gets a line (and the next rate still runs).
  python3 - "$(grep '^{' "$WORK/loadgen.out" | tail -1)" "$cpu" "$rc" "$rate" "$WORK/metrics.txt" <<'PY'
import json, re, sys
r = json.loads(sys.argv[1] or "{}")
r.update(rate=float(sys.argv[4]), server_cpu_s=float(sys.argv[2]), exit=int(sys.argv[3]))
buckets = []
try:
    for line in open(sys.argv[5]):
        m = re.match(r'pitboss_antifraud_bus_to_alert_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
except OSError:
    pass
if buckets and buckets[-1][1] > 0:
    total = buckets[-1][1]
    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        le = next(b for b, c in buckets if c >= q * total)
        r[f"bus_to_alert_{name}_le_ms"] = le * 1000
    r["bus_to_alert_count"] = int(total)
print(json.dumps(r))
PY
  SERVER=""
  rm -rf "$WORK"
  if [[ -n ${PITBOSS_BENCH_CLICKHOUSE:-} ]]; then
    curl -sf "$PITBOSS_BENCH_CLICKHOUSE" --data-binary "DROP DATABASE IF EXISTS $RUN" >/dev/null || true
  fi
done
