#!/usr/bin/env bash
# What a rule reload costs the next state save (docs/benchmarks.md, "A reload's next save"):
# `pitboss up` (release) with the shipped packs in a rules directory takes 20 s of `pitboss
# loadgen` (20,000 players); once its engine has caught up and saved everything, a threshold
# is edited (fraud.bet_velocity 30 -> 31: every rule kept where it was), one bet is posted, and
# the save that follows is reported: its time and the units and bytes it wrote.
#
#   scripts/bench-reload.sh [pitboss binary, default: the release build]
#   (EDIT=0: no edit, the baseline of a save of one bet)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/pitboss/target}
if [[ -n ${1:-} ]]; then
  B=$1
else
  (cd "$ROOT" && cargo build --release -q -p pitboss)
  B=$CARGO_TARGET_DIR/release/pitboss
fi
W=$(mktemp -d); R=$W/rules; mkdir -p $R; cp "$ROOT"/rules/*.toml $R/
UP=""
cleanup() { [[ -n $UP ]] && kill "$UP" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
P=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
A=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
G=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=info $B up --data-dir $W/data --rules $R --listen 127.0.0.1:$P --admin-listen 127.0.0.1:$A --gateway-listen 127.0.0.1:$G > $W/out.log 2> $W/err.log &
UP=$!
for i in $(seq 100); do [[ -f $W/data/demo-api-key ]] && curl -sf http://127.0.0.1:$A/readyz >/dev/null && break; sleep 0.2; done
$B loadgen --url http://127.0.0.1:$P --key-file $W/data/demo-api-key --seconds 20 --players 20000 > $W/loadgen.log 2>&1
m() { curl -s http://127.0.0.1:$A/metrics | { grep -E "^$1" || true; } | awk '{print $2}' | head -1; }
# The engine caught up (its event count still for 10 s) and its state saved since.
last=""; still=0
while (( still < 10 )); do
  n=$(m pitboss_antifraud_events_total); if [[ $n == "$last" ]]; then still=$((still+1)); else still=0; last=$n; fi; sleep 1
done
# ... and saved until nothing is left to save (the save count still for 15 s).
last=""; still=0
while (( still < 15 )); do
  n=$(m pitboss_antifraud_snapshot_seconds_count); if [[ -n $n && $n == "$last" ]]; then still=$((still+1)); else still=0; last=$n; fi; sleep 1
done
bet() {
  local c0; c0=$(m pitboss_antifraud_snapshot_seconds_count)
  curl -sf -o /dev/null -H "authorization: Bearer $(cat $W/data/demo-api-key)" -H 'content-type: application/json' \
    -d "[{\"tenant_id\":\"demo\",\"player_id\":\"bench-1\",\"type\":\"bet_placed\",\"occurred_at\":\"$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)\",\"payload\":{\"bet_id\":\"$1\",\"game_id\":\"g\",\"stake\":{\"amount_minor\":100,\"currency\":\"EUR\"}}}]" \
    http://127.0.0.1:$P/v1/events
  while [[ $(m pitboss_antifraud_snapshot_seconds_count) == "$c0" ]]; do sleep 0.5; done
}
# What the catch-up left to save, saved: one bet, its save, then nothing pending.
bet x1; sleep 8
echo "events $(m pitboss_antifraud_events_total)"
echo "before: saves $(m pitboss_antifraud_snapshot_seconds_count) sum $(m pitboss_antifraud_snapshot_seconds_sum) units $(m 'pitboss_antifraud_snapshot_units') keys $(m pitboss_antifraud_window_keys)"
[[ ${EDIT:-1} == 1 ]] && sed -i "s/^  value = 30$/  value = 31/" $R/fraud.toml
sleep 6
sum0=$(m pitboss_antifraud_snapshot_seconds_sum); c0=$(m pitboss_antifraud_snapshot_seconds_count)
# One bet after the reload: the next save writes what changed since the last one.
bet x2
echo "the save after the reload: $(python3 -c "print(round($(m pitboss_antifraud_snapshot_seconds_sum) - $sum0, 3))") s"
echo "after:  saves $(m pitboss_antifraud_snapshot_seconds_count) sum $(m pitboss_antifraud_snapshot_seconds_sum) units $(m 'pitboss_antifraud_snapshot_units') bytes $(m pitboss_antifraud_snapshot_bytes) reloads $(m 'pitboss_antifraud_reloads_total\{.*result=\"ok\"\}')"
grep -E "rules reloaded|saved whole" $W/err.log | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-300
