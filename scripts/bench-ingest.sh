#!/usr/bin/env bash
# Ingest HTTP benchmark: events/s and latency for batches of 1, 10 and 100 into the embedded log
# and into Kafka, each next to the raw JSON decode rate of the same bodies (pitboss loadgen).
#
#   scripts/stack.sh start && source .stack/env     # for the Kafka rows (PITBOSS_TEST_KAFKA)
#   scripts/bench-ingest.sh [seconds per run, default 10] [concurrency, default 32]
#   (PITBOSS_BENCH_RUNS=3: each row is the median of that many runs, after a warm-up;
#    PITBOSS_BENCH_BUSES="embedded kafka" and PITBOSS_BENCH_BATCHES="1 10 100" pick the rows;
#    PITBOSS_BENCH_BIN=path runs that pitboss binary instead of building this checkout, and
#    PITBOSS_BENCH_LOADGEN_BIN=path another one as the load generator (same load for an A/B);
#    PITBOSS_BENCH_CLIENT_IDS=1 has every event carry its own id, checked by the dedup window)
#
# Server and load generator share this machine's cores, as they would on one small host.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_PER_RUN=${1:-10}
CONCURRENCY=${2:-32}
RUNS=${PITBOSS_BENCH_RUNS:-3}
BUSES=${PITBOSS_BENCH_BUSES:-embedded kafka}
BATCHES=${PITBOSS_BENCH_BATCHES:-1 10 100}
PROFILE=${PITBOSS_BENCH_PROFILE:-release}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/pitboss/target}
cd "$ROOT"
if [[ -n ${PITBOSS_BENCH_BIN:-} ]]; then
  BIN=$PITBOSS_BENCH_BIN # a prebuilt binary, e.g. another commit's for an A/B run
else
  if [[ $PROFILE == release ]]; then cargo build --release -q -p pitboss; else cargo build -q -p pitboss; fi
  BIN=$CARGO_TARGET_DIR/$([[ $PROFILE == release ]] && echo release || echo debug)/pitboss
fi

WORK=$(mktemp -d)
SERVER=""
cleanup() { [[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

KEY="bench_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
cat >"$WORK/ingest.toml" <<EOF
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
default_events_per_second = 100000000
[[tenants]]
id = "demo"
api_key_sha256 = ["$("$BIN" hash-key "$KEY")"]
EOF

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

serve() { # name, then the server command
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 100); do
    curl -sf "http://$ADDR/readyz" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  cat "$WORK/$name.log" >&2
  return 1
}

# CPU seconds (user + system) a process has used so far.
cpu_secs() { [[ -r /proc/$1/stat ]] && awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat" || echo 0; }

# The Kafka broker of scripts/stack.sh, for its CPU per event (none for the embedded log).
BROKER=""
STACK_DIR=${PITBOSS_STACK_DIR:-$ROOT/.stack}
[[ -f $STACK_DIR/pids/kafka-1.pid ]] && BROKER=$(cat "$STACK_DIR/pids/kafka-1.pid")

loadgen() { # batch seconds [broker pid]: loadgen's JSON line plus the CPU each process spent per event
  local broker=${3:-} s0 b0 out lg
  s0=$(cpu_secs "$SERVER"); b0=$([[ -n $broker ]] && cpu_secs "$broker" || echo 0)
  out=$(PITBOSS_API_KEY=$KEY python3 -c '
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, check=True)
sys.stdout.write(p.stdout.decode().strip().splitlines()[-1] + "\n")
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{r.ru_utime + r.ru_stime:.2f}")' "${PITBOSS_BENCH_LOADGEN_BIN:-$BIN}" loadgen --url "http://$ADDR" --batch "$1" \
    --concurrency "$CONCURRENCY" --seconds "$2" ${PITBOSS_BENCH_CLIENT_IDS:+--client-ids})
  lg=$(tail -1 <<<"$out")
  python3 - "$(head -1 <<<"$out")" "$2" "$s0" "$(cpu_secs "$SERVER")" "$b0" \
    "$([[ -n $broker ]] && cpu_secs "$broker" || echo 0)" "$lg" "$broker" <<'PY'
import json, sys
line, secs, s0, s1, b0, b1, lg, broker = sys.argv[1:]
r = json.loads(line)
events = r["events_per_sec"] * float(secs)
per = lambda cpu: round(cpu / events * 1e6, 2) if events else None
r["server_cpu_us_per_event"] = per(float(s1) - float(s0))
r["broker_cpu_us_per_event"] = per(float(b1) - float(b0)) if broker else None
r["loadgen_cpu_us_per_event"] = per(float(lg))
print(json.dumps(r))
PY
}

run_matrix() { # bus name, broker pid (Kafka)
  # Warm-up, discarded: the JVM broker and the page cache take a few seconds to settle (a cold
  # broker used three times the CPU per record of a warm one).
  loadgen 100 5 "${2:-}" >/dev/null
  for batch in $BATCHES; do
    # The median of RUNS runs: two shared cores make single runs vary by about 10%.
    local runs=()
    for _ in $(seq 1 "$RUNS"); do runs+=("$(loadgen "$batch" "$SECONDS_PER_RUN" "${2:-}")"); done
    local line
    line=$(printf '%s\n' "${runs[@]}" | python3 -c '
import json, sys
rs = [json.loads(l) for l in sys.stdin if l.strip()]
rs.sort(key=lambda r: r["events_per_sec"])
m = rs[len(rs) // 2]
m["runs_events_per_sec"] = [r["events_per_sec"] for r in rs]
print(json.dumps(m))')
    echo "{\"bus\":\"$1\",${line#\{}" | tee -a "$WORK/results.jsonl"
  done
}

if [[ " $BUSES " == *" embedded "* ]]; then
  ADDR=127.0.0.1:$(port)
  serve embedded "$BIN" up --config "$WORK/ingest.toml" --listen "$ADDR" --admin-listen 127.0.0.1:0 --data-dir "$WORK/up"
  run_matrix embedded
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
fi

if [[ " $BUSES " != *" kafka "* ]]; then
  :
elif [[ -n ${PITBOSS_TEST_KAFKA:-} ]]; then
  ADDR=127.0.0.1:$(port)
  sed -i "s/^listen = .*/listen = \"$ADDR\"/" "$WORK/ingest.toml"
  sed -i "s/^topic = .*//" "$WORK/ingest.toml"
  printf 'topic = "bench_events_%s"\n%s\n' "$RANDOM" "$(cat "$WORK/ingest.toml")" >"$WORK/kafka.toml"
  serve kafka "$BIN" ingest --config "$WORK/kafka.toml" --bus kafka --kafka-bootstrap "$PITBOSS_TEST_KAFKA" \
    --ensure-topic-partitions 8
  run_matrix kafka "$BROKER"
else
  echo "PITBOSS_TEST_KAFKA not set: Kafka rows skipped (scripts/stack.sh start; source .stack/env)" >&2
fi

echo
printf '%-9s %6s %12s %9s %9s %14s %7s %22s  %s\n' bus batch events/s p50_ms p99_ms raw_decode/s ratio 'cpu us/event s/b/l' 'all runs'
python3 - "$WORK/results.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs = ", ".join(f"{x:,.0f}" for x in r.get("runs_events_per_sec", []))
    cpu = " / ".join("-" if r.get(k) is None else f"{r[k]:.1f}" for k in ("server_cpu_us_per_event", "broker_cpu_us_per_event", "loadgen_cpu_us_per_event"))
    print(f"{r['bus']:<9} {r['batch']:>6} {r['events_per_sec']:>12,.0f} {r['p50_ms']:>9.2f} {r['p99_ms']:>9.2f} {r['raw_decode_events_per_sec']:>14,.0f} {r['ratio']:>7.3f} {cpu:>22}  {runs}")
PY
