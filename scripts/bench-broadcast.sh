#!/usr/bin/env bash
# Broadcast to one room, Pitboss against Socket.IO 4, in the same run on this machine
# (docs/benchmarks.md, "Edge gateway"). For each server in turn: the server alone on loopback,
# then `pitboss loadgen --broadcast` — the same Rust client for both — opens the sockets, each
# joined to one room, and publishes to the room at each rate for the given seconds:
#   Pitboss:   `pitboss up --no-rules`, an operator token, clients on /v1/ws subscribed to
#              room:demo:bench, pushes through `POST /v1/publish` (onto the bus, like every push);
#   Socket.IO: bench/socketio/server.js (socket.io pinned in its package-lock.json, `npm ci`),
#              websocket transport only, every client in one room, `POST /publish` does
#              `io.to(room).emit("push", body)`.
# Each message carries its send time; each client records receive time minus send time. One JSON
# line per server and rate, then a table. Server and client share the machine's cores.
#
#   scripts/bench-broadcast.sh [seconds per rate, default 15] [rates..., default 1 10 50 100 200 500]
#   (PITBOSS_BENCH_SOCKETS=10000, PITBOSS_BENCH_SERVERS="pitboss socketio",
#    PITBOSS_BENCH_BIN=path (skips the build), PITBOSS_BENCH_UP_ARGS adds flags to `pitboss up`,
#    PITBOSS_BENCH_CLIENT_ARGS adds flags to the Pitboss client, e.g. "--rooms 10000
#    --publish-batch-ms 10": one socket per room, so each message is one push to one socket,
#    PITBOSS_BENCH_HISTOGRAM=1 prints the gateway's own time-to-notify histogram of pushes
#    (accepted to written to the socket, from /metrics) after Pitboss's run, over all its rates,
#    PITBOSS_BENCH_MAX_P99_MS=1000 (a rate is sustained with nothing lost and p99 under it;
#    higher rates are skipped after the first that is not), PITBOSS_BENCH_OUT=file for the lines)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_PER_RATE=${1:-15}
shift || true
RATES=("${@:-1 10 50 100 200 500}")
# shellcheck disable=SC2206
RATES=(${RATES[*]})
RATES_CSV=$(IFS=,; echo "${RATES[*]}")
SOCKETS=${PITBOSS_BENCH_SOCKETS:-10000}
SERVERS=${PITBOSS_BENCH_SERVERS:-pitboss socketio}
MAX_P99=${PITBOSS_BENCH_MAX_P99_MS:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/pitboss/target}
cd "$ROOT"
if [[ -n ${PITBOSS_BENCH_BIN:-} ]]; then
  BIN=$PITBOSS_BENCH_BIN
else
  cargo build --release -q -p pitboss
  BIN=$CARGO_TARGET_DIR/release/pitboss
fi
(cd bench/socketio && npm ci --no-audit --no-fund --silent)
# Both processes hold ~10,000 sockets.
ulimit -n "$(ulimit -Hn)"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SERVER=""
WORK=$(mktemp -d)
OUT=${PITBOSS_BENCH_OUT:-$WORK/lines.jsonl}
: >"$OUT"
cleanup() { [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

wait_for() { # url
  for _ in $(seq 1 150); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

client() { # server-kind url label [extra args...]
  local kind=$1 url=$2 label=$3
  shift 3
  set +e
  RUST_BACKTRACE=0 RUST_LOG=warn "$BIN" loadgen --broadcast "$kind" --gateway "$url" \
    --sockets "$SOCKETS" --seconds "$SECONDS_PER_RATE" --rates "$RATES_CSV" --settle-secs 20 \
    --server-pid "$SERVER" --max-p99-ms "$MAX_P99" --label "$label" "$@" \
    >"$WORK/client.out" 2>"$WORK/client.err"
  local rc=$?
  set -e
  grep -v '^\s' "$WORK/client.err" | tail -5 >&2 || true
  grep '^{' "$WORK/client.out" | tee -a "$OUT" || true
  ((rc == 0)) || echo "the client exited with $rc" >&2
}

for server in $SERVERS; do
  case $server in
    pitboss)
      API=$(port); GW=$(port); ADMIN=$(port)
      RUST_LOG=warn "$BIN" up --no-rules --data-dir "$WORK/data" --listen "127.0.0.1:$API" \
        --admin-listen "127.0.0.1:$ADMIN" --gateway-listen "127.0.0.1:$GW" \
        --max-connections-per-subject "$SOCKETS" ${PITBOSS_BENCH_UP_ARGS:-} \
        >"$WORK/up.log" 2>&1 &
      SERVER=$!
      if ! wait_for "http://127.0.0.1:$API/readyz"; then cat "$WORK/up.log" >&2; echo "pitboss up did not get ready" >&2; exit 1; fi
      TOKEN=$("$BIN" token --data-dir "$WORK/data" --role operator --subject ops --rooms '*' --ttl-secs 7200)
      # shellcheck disable=SC2086
      PITBOSS_BENCH_TOKEN=$TOKEN client pitboss "ws://127.0.0.1:$GW" "pitboss $(git rev-parse --short HEAD)${PITBOSS_BENCH_UP_ARGS:+ $PITBOSS_BENCH_UP_ARGS}" ${PITBOSS_BENCH_CLIENT_ARGS:-}
      if [[ -n ${PITBOSS_BENCH_HISTOGRAM:-} ]]; then
        curl -sf "http://127.0.0.1:$ADMIN/metrics" | python3 -c '
import re, sys
b = {}
for line in sys.stdin:
    m = re.match(r"pitboss_time_to_notify_seconds_bucket\{kind=\"push\",le=\"([^\"]+)\"\} (\S+)", line)
    if m:
        b[m.group(1)] = float(m.group(2))
total = b.get("+Inf", 0)
if not total:
    sys.exit("no pushes in the gateway histogram")
parts = [f"{v / total:.1%} within {float(le) * 1000:g} ms" for le, v in b.items() if le != "+Inf"]
print(f"gateway histogram, {total:,.0f} pushes: " + ", ".join(parts))' >&2
        # Delivery receipts (with --receipts all in PITBOSS_BENCH_UP_ARGS: one per push).
        curl -sf "http://127.0.0.1:$ADMIN/metrics" | grep -E '^pitboss_gateway_receipts_' >&2 || true
      fi
      ;;
    socketio)
      PORT=$(port)
      (cd bench/socketio && PORT=$PORT exec node server.js) >"$WORK/socketio.log" 2>&1 &
      SERVER=$!
      if ! wait_for "http://127.0.0.1:$PORT/healthz"; then cat "$WORK/socketio.log" >&2; echo "the Socket.IO server did not start" >&2; exit 1; fi
      client socketio "ws://127.0.0.1:$PORT" "socket.io $(node -p 'require("./bench/socketio/node_modules/socket.io/package.json").version'), node $(node --version)"
      ;;
    *) echo "unknown server $server (pitboss, socketio)" >&2; exit 2 ;;
  esac
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true
  SERVER=""
  rm -rf "$WORK/data"
  sleep 2
done

python3 - "$OUT" "$MAX_P99" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
max_p99 = float(sys.argv[2])
print()
print("| server | msgs/s offered | sent/s | deliveries/s | lost | p50 / p99 / max (ms) | frame bytes | CPU server / client (cores) |")
print("|---|---|---|---|---|---|---|---|")
best = {}
for r in rows:
    ok = r["lost"] == 0 and r["delivered"] > 0 and r["p99_ms"] <= max_p99
    if ok:
        best[r["server"]] = max(best.get(r["server"], (0, 0)), (r["rate"], r["delivered_per_sec"]))
    cpu = lambda c: "–" if c is None else f"{c:.2f}"
    print(f"| {r['label'] or r['server']} | {r['rate']:g} | {r['publish_rate']:,.0f} | {r['delivered_per_sec']:,.0f} | "
          f"{r['lost']:,}{' (' + str(r['sockets_closed']) + ' sockets closed)' if r['sockets_closed'] else ''} | "
          f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f} | {r['frame_bytes']} | "
          f"{cpu(r['server_cpu'])} / {cpu(r['client_cpu'])} |")
print()
for s, (rate, dps) in best.items():
    print(f"{s}: highest sustained rate (nothing lost, p99 <= {max_p99:g} ms): {rate:g} msgs/s, {dps:,.0f} deliveries/s")
if "pitboss" in best and "socketio" in best:
    print(f"ratio Pitboss / Socket.IO at their highest sustained rates: {best['pitboss'][1] / best['socketio'][1]:.1f}x")
EOF
