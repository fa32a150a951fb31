#!/usr/bin/env bash
# CI stand-in for LocalStack (which needs Docker): runs localstack/ready.d/*.sh against a moto
# server, twice (the hooks must be idempotent), then checks that the streams, the lease table,
# the antifraud state table, the on-failure queue, both functions (and their environments) and
# the event source mappings (events and events_overflow) exist as specified.
# moto creates Lambda functions without Docker (it needs Docker only to invoke them), so the
# zips here are stand-ins: this checks the scripts, not the functions' code.
#
#   localstack/check-on-moto.sh       # needs moto_server (pip install 'moto[server]'), aws CLI, boto3
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d)
moto_pid=
cleanup() {
  [[ -n $moto_pid ]] && kill "$moto_pid" 2>/dev/null && wait "$moto_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -sf "http://127.0.0.1:$port/moto-api/" >/dev/null || { cat "$work/moto.log" >&2; echo "moto did not start" >&2; exit 1; }

mkdir -p "$work/lambda"
printf '#!/bin/sh\necho stand-in\n' >"$work/bootstrap"
for f in ingest antifraud; do
  python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], "w"); z.write(sys.argv[2], "bootstrap"); z.close()' \
    "$work/lambda/$f.zip" "$work/bootstrap"
done

export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export AWSLOCAL="aws --endpoint-url=http://127.0.0.1:$port"
export PITBOSS_LAMBDA_DIR=$work/lambda PITBOSS_SHARDS=2 PITBOSS_TENANT_ID=demo
export PITBOSS_INGEST_API_KEY_SHA256=$(printf 'ci-key' | sha256sum | cut -d' ' -f1)
for run in 1 2; do
  for hook in "$ROOT"/localstack/ready.d/*.sh; do
    bash "$hook" 2>"$work/hook-$run.log" || { cat "$work/hook-$run.log" >&2; echo "run $run: $hook failed" >&2; exit 1; }
  done
done

python3 - "http://127.0.0.1:$port" "$ROOT/localstack/ready.d/10-pitboss.sh" <<'PY'
import re, sys
import boto3
url, hook = sys.argv[1], sys.argv[2]
c = lambda s: boto3.client(s, endpoint_url=url, region_name="us-east-1")
problems = []
text = open(hook).read()
topics = re.search(r"TOPICS=\(([^)]*)\)", text).group(1).split()
for t in topics:
    try:
        shards = c("kinesis").describe_stream_summary(StreamName=t)["StreamDescriptionSummary"]["OpenShardCount"]
    except c("kinesis").exceptions.ResourceNotFoundException:
        problems.append(f"stream {t} missing")
        continue
    if shards != 2:
        problems.append(f"stream {t} has {shards} shards, not PITBOSS_SHARDS=2")
table = c("dynamodb").describe_table(TableName="pitboss-leases")["Table"]
keys = {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]}
if keys != {"pk": "HASH", "sk": "RANGE"}:
    problems.append(f"pitboss-leases keys {keys}, the bus uses pk (HASH) + sk (RANGE)")
# The antifraud state table: as infra/terraform/modules/antifraud makes it.
state = re.search(r"^STATE_TABLE=(\S+)$", text, re.M).group(1)
ddb = c("dynamodb")
names = ddb.list_tables()["TableNames"]
if names.count(state) != 1:
    problems.append(f"state table {state} listed {names.count(state)} times, expected once (tables: {names})")
else:
    table = ddb.describe_table(TableName=state)["Table"]
    keys = {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]}
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    if keys != {"unit": "HASH"} or types != {"unit": "S"}:
        problems.append(f"{state} keys {keys} {types}, the antifraud Lambda uses unit (HASH, S) only")
    billing = table.get("BillingModeSummary", {}).get("BillingMode")
    if billing != "PAY_PER_REQUEST":
        problems.append(f"{state} billing mode {billing}, not PAY_PER_REQUEST")
    ttl = ddb.describe_time_to_live(TableName=state)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING") or ttl.get("AttributeName") != "ttl":
        problems.append(f"{state} TTL {ttl}, expected enabled on `ttl`")
lam = c("lambda")
functions = {f["FunctionName"]: f for f in lam.list_functions()["Functions"]}
for name in ("pitboss-ingest", "pitboss-antifraud"):
    f = functions.get(name)
    if not f:
        problems.append(f"function {name} missing")
    elif f.get("Runtime") != "provided.al2023" or f.get("Handler") != "bootstrap":
        problems.append(f"function {name}: runtime {f.get('Runtime')}, handler {f.get('Handler')}")
env = functions.get("pitboss-ingest", {}).get("Environment", {}).get("Variables", {})
if env.get("PITBOSS_BUS") != "kinesis" or "api_key_sha256" not in env.get("PITBOSS_CONFIG_TOML", ""):
    problems.append(f"pitboss-ingest environment incomplete: {sorted(env)}")
env = functions.get("pitboss-antifraud", {}).get("Environment", {}).get("Variables", {})
endpoint = re.search(r"^ENDPOINT=\$\{PITBOSS_LAMBDA_AWS_ENDPOINT:-(\S+)\}$", text, re.M).group(1)
want = {"PITBOSS_BUS": "kinesis", "PITBOSS_STATE_TABLE": state, "PITBOSS_DYNAMODB_ENDPOINT": endpoint,
        "PITBOSS_KINESIS_ENDPOINT": endpoint, "PITBOSS_ALERTS_TOPIC": "alerts", "PITBOSS_PUSHES_TOPIC": "pushes",
        "PITBOSS_DEAD_LETTER_TOPIC": "antifraud_dead_letter"}
wrong = {k: env.get(k) for k, v in want.items() if env.get(k) != v}
if wrong:
    problems.append(f"pitboss-antifraud environment: {wrong}, expected {want}")
if "PITBOSS_CONFIG_TOML" in env:
    problems.append("pitboss-antifraud has the ingest config (PITBOSS_CONFIG_TOML) in its environment")
maps = lam.list_event_source_mappings(FunctionName="pitboss-antifraud")["EventSourceMappings"]
sources = sorted(m.get("EventSourceArn", "").rsplit("/", 1)[-1] for m in maps)
if sources != ["events", "events_overflow"]:
    problems.append(f"event source mappings on pitboss-antifraud from {sources}, expected one from "
                    "events and one from events_overflow (idempotent hooks)")
for m in maps:
    if m.get("FunctionResponseTypes") != ["ReportBatchItemFailures"]:
        problems.append(f"mapping without ReportBatchItemFailures: {m.get('FunctionResponseTypes')}")
    if not m.get("BisectBatchOnFunctionError"):
        problems.append("mapping without BisectBatchOnFunctionError")
    if "pitboss-antifraud-on-failure" not in m.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination", ""):
        problems.append(f"mapping without the on-failure queue: {m.get('DestinationConfig')}")
for p in problems:
    print(f"FAIL {p}")
print(f"localstack hooks on moto: {len(topics)} streams, lease table, state table, {len(functions)} functions, "
      f"{len(maps)} event source mappings; {len(problems)} problems")
sys.exit(1 if problems else 0)
PY
