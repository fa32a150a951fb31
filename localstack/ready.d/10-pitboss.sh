#!/usr/bin/env bash
# LocalStack `ready.d` hook: the AWS shape of Pitboss on LocalStack (docker compose --profile aws).
# Creates, idempotently:
#   - the Kinesis streams (one per topic, PITBOSS_SHARDS shards each: companions of `events`
#     need its shard count, docs/bus.md);
#   - the DynamoDB lease table of the Kinesis bus (pitboss-leases: pk/sk strings, as
#     crates/bus/src/kinesis/leases.rs creates it);
#   - the DynamoDB state table of the antifraud Lambda (pitboss-antifraud-state: partition key
#     `unit` string, TTL on `ttl`, as infra/terraform/modules/antifraud creates it);
#   - the SQS on-failure queue of the rules engine;
#   - the ingest Lambda (provided.al2023, dist/lambda/ingest.zip) with a function URL, and the
#     antifraud Lambda with its event source mapping on `events` (partial batch failures,
#     bisect, on-failure queue) when dist/lambda/antifraud.zip exists; both zips come from
#     scripts/lambda-zip.sh.
# The functions reach LocalStack at PITBOSS_LAMBDA_AWS_ENDPOINT, its address as seen from the
# Lambda containers (PITBOSS_KINESIS_ENDPOINT, PITBOSS_DYNAMODB_ENDPOINT).
# AWSLOCAL (default `awslocal`) lets CI run the same script against another endpoint:
#   AWSLOCAL="aws --endpoint-url=http://127.0.0.1:5000" localstack/ready.d/10-pitboss.sh
set -euo pipefail

read -r -a AWS <<<"${AWSLOCAL:-awslocal}"
SHARDS=${PITBOSS_SHARDS:-4}
LAMBDA_DIR=${PITBOSS_LAMBDA_DIR:-/opt/pitboss/lambda}
TENANT=${PITBOSS_TENANT_ID:-demo}
KEY_SHA256=${PITBOSS_INGEST_API_KEY_SHA256:?PITBOSS_INGEST_API_KEY_SHA256 is not set - run scripts/compose-env.sh}
ENDPOINT=${PITBOSS_LAMBDA_AWS_ENDPOINT:-http://localhost.localstack.cloud:4566}
LEASES=pitboss-leases
STATE_TABLE=pitboss-antifraud-state
TOPICS=(events events_overflow alerts pushes deliveries alert_acks presence
        events_dead_letter events_overflow_dead_letter alerts_dead_letter pushes_dead_letter
        deliveries_dead_letter alert_acks_dead_letter antifraud_dead_letter)

log() { printf '[pitboss-localstack] %s\n' "$*" >&2; }
aws_() { "${AWS[@]}" --output json "$@"; }

created=()
for t in "${TOPICS[@]}"; do
  if ! aws_ kinesis describe-stream-summary --stream-name "$t" >/dev/null 2>&1; then
    aws_ kinesis create-stream --stream-name "$t" --shard-count "$SHARDS" >/dev/null
    created+=("$t")
    log "stream $t ($SHARDS shards)"
  fi
done
for t in "${created[@]}"; do
  aws_ kinesis wait stream-exists --stream-name "$t"
done

if ! aws_ dynamodb describe-table --table-name "$LEASES" >/dev/null 2>&1; then
  aws_ dynamodb create-table --table-name "$LEASES" --billing-mode PAY_PER_REQUEST \
    --attribute-definitions AttributeName=pk,AttributeType=S AttributeName=sk,AttributeType=S \
    --key-schema AttributeName=pk,KeyType=HASH AttributeName=sk,KeyType=RANGE >/dev/null
  log "table $LEASES"
fi
aws_ dynamodb wait table-exists --table-name "$LEASES"

# The antifraud Lambda keeps no state between invocations: its per-key windows live here, one
# item per unit (`v` version, `d` data, `n` chunks, `ttl` expiry written by the function).
if ! aws_ dynamodb describe-table --table-name "$STATE_TABLE" >/dev/null 2>&1; then
  aws_ dynamodb create-table --table-name "$STATE_TABLE" --billing-mode PAY_PER_REQUEST \
    --attribute-definitions AttributeName=unit,AttributeType=S \
    --key-schema AttributeName=unit,KeyType=HASH >/dev/null
  log "table $STATE_TABLE"
fi
aws_ dynamodb wait table-exists --table-name "$STATE_TABLE"
# Turning TTL on when it is already on is an error (ValidationException): look first.
ttl_status=$(aws_ dynamodb describe-time-to-live --table-name "$STATE_TABLE" \
  --query 'TimeToLiveDescription.[TimeToLiveStatus, AttributeName]' --output text)
if [[ $ttl_status != $'ENABLED\tttl' && $ttl_status != $'ENABLING\tttl' ]]; then
  aws_ dynamodb update-time-to-live --table-name "$STATE_TABLE" \
    --time-to-live-specification Enabled=true,AttributeName=ttl >/dev/null
  log "table $STATE_TABLE: TTL on ttl"
fi

queue_url=$(aws_ sqs create-queue --queue-name pitboss-antifraud-on-failure --query QueueUrl --output text)
queue_arn=$(aws_ sqs get-queue-attributes --queue-url "$queue_url" --attribute-names QueueArn \
  --query Attributes.QueueArn --output text)

role_arn=$(aws_ iam get-role --role-name pitboss-lambda --query Role.Arn --output text 2>/dev/null || true)
if [[ -z $role_arn || $role_arn == None ]]; then
  role_arn=$(aws_ iam create-role --role-name pitboss-lambda --query Role.Arn --output text \
    --assume-role-policy-document '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}')
fi

config_toml=$(printf 'topic = "events"\noverflow_topic = "events_overflow"\n[[tenants]]\nid = "%s"\napi_key_sha256 = ["%s"]\n' "$TENANT" "$KEY_SHA256")
ingest_env=$(python3 -c 'import json, sys; print(json.dumps({"Variables": {
    "PITBOSS_BUS": "kinesis", "PITBOSS_KINESIS_ENDPOINT": sys.argv[1], "PITBOSS_CONFIG_TOML": sys.argv[2],
    "RUST_LOG": "info"}}))' "$ENDPOINT" "$config_toml")
# The antifraud function's contract (as modules/antifraud sets it on AWS, plus the endpoints):
# AWS_REGION comes from the Lambda runtime; PITBOSS_RULES_DIR is unset, so the rule packs built
# into the binary run.
antifraud_env=$(python3 -c 'import json, sys; print(json.dumps({"Variables": {
    "PITBOSS_BUS": "kinesis", "PITBOSS_KINESIS_ENDPOINT": sys.argv[1],
    "PITBOSS_STATE_TABLE": sys.argv[2], "PITBOSS_DYNAMODB_ENDPOINT": sys.argv[1],
    "PITBOSS_ALERTS_TOPIC": "alerts", "PITBOSS_PUSHES_TOPIC": "pushes",
    "PITBOSS_DEAD_LETTER_TOPIC": "antifraud_dead_letter", "RUST_LOG": "info"}}))' "$ENDPOINT" "$STATE_TABLE")

# create_function NAME ZIP ENV_JSON: creates the function, or updates its code and environment.
create_function() {
  local name=$1 zip=$2 env_json=$3
  if aws_ lambda get-function --function-name "$name" >/dev/null 2>&1; then
    aws_ lambda update-function-code --function-name "$name" --zip-file "fileb://$zip" >/dev/null
    aws_ lambda wait function-updated --function-name "$name" 2>/dev/null || true
    aws_ lambda update-function-configuration --function-name "$name" --environment "$env_json" >/dev/null
  else
    aws_ lambda create-function --function-name "$name" --runtime provided.al2023 --handler bootstrap \
      --architectures "${PITBOSS_LAMBDA_ARCH:-x86_64}" --role "$role_arn" --zip-file "fileb://$zip" \
      --memory-size 1024 --timeout 30 --environment "$env_json" >/dev/null
    log "function $name"
  fi
}

if [[ -f $LAMBDA_DIR/ingest.zip ]]; then
  create_function pitboss-ingest "$LAMBDA_DIR/ingest.zip" "$ingest_env"
  if ! aws_ lambda get-function-url-config --function-name pitboss-ingest >/dev/null 2>&1; then
    # Ingest authenticates every request with the tenant's API key itself.
    aws_ lambda create-function-url-config --function-name pitboss-ingest --auth-type NONE >/dev/null
  fi
  log "ingest: $(aws_ lambda get-function-url-config --function-name pitboss-ingest --query FunctionUrl --output text)v1/events"
else
  log "no $LAMBDA_DIR/ingest.zip: run scripts/lambda-zip.sh first (pitboss-ingest not created)"
fi

if [[ -f $LAMBDA_DIR/antifraud.zip ]]; then
  create_function pitboss-antifraud "$LAMBDA_DIR/antifraud.zip" "$antifraud_env"
  # Both streams a player's events travel on: ingest moves a hot player's excess to
  # events_overflow (docs/api.md), and rules must see those events too (docs/rules.md).
  for stream in events events_overflow; do
    stream_arn=$(aws_ kinesis describe-stream-summary --stream-name "$stream" \
      --query StreamDescriptionSummary.StreamARN --output text)
    existing=$(aws_ lambda list-event-source-mappings --function-name pitboss-antifraud \
      --event-source-arn "$stream_arn" --query 'length(EventSourceMappings)' --output text)
    if [[ $existing == 0 ]]; then
      aws_ lambda create-event-source-mapping --function-name pitboss-antifraud \
        --event-source-arn "$stream_arn" --starting-position TRIM_HORIZON --batch-size 500 \
        --function-response-types ReportBatchItemFailures --bisect-batch-on-function-error \
        --maximum-retry-attempts 10 --maximum-record-age-in-seconds 3600 \
        --destination-config "{\"OnFailure\":{\"Destination\":\"$queue_arn\"}}" >/dev/null
      log "event source mapping $stream -> pitboss-antifraud"
    fi
  done
else
  log "no $LAMBDA_DIR/antifraud.zip: run scripts/lambda-zip.sh first (pitboss-antifraud not created)"
fi
log "ready"
