# The rules engine on AWS Lambda, triggered by the events stream (Kinesis or MSK): partial
# batch failures (ReportBatchItemFailures), bisect on error (Kinesis), and an on-failure
# destination (SQS) for records that exhaust their retries. The function's zip is
# dist/lambda/antifraud.zip from scripts/lambda-zip.sh (the binary `pitboss-antifraud-lambda`
# of functions/antifraud): `lambda_zip` names it.
#
# The function keeps no state between invocations: before a batch it loads the state units
# (one rule's window of one key, one placed bet, one player's hits) its events read from a
# DynamoDB table, and writes back the ones that changed, with a version for conditional writes.

locals {
  kinesis          = var.bus == "kinesis"
  state_table_name = coalesce(var.state_table_name, "${var.name}-state")
  # Where the function publishes (its defaults, spelled out so the environment says what the
  # IAM statement PublishAlertsAndPushes allows): the stream module's names of these topics.
  topics = {
    PITBOSS_ALERTS_TOPIC      = "alerts"
    PITBOSS_PUSHES_TOPIC      = "pushes"
    PITBOSS_DEAD_LETTER_TOPIC = "antifraud_dead_letter"
  }
}

# The rules engine's state, one item per unit: partition key `unit` (S) only, no sort key.
# The function writes `v` (N, a version for its conditional writes), `d` (B, the data), `n`
# (N, the number of chunks), `c` (S, the names of the write's extra chunks) and `ttl` (N, epoch
# seconds): with TTL on `ttl`, DynamoDB deletes
# expired units instead of the table keeping every key ever seen. Only `unit` has an
# `attribute` block: DynamoDB takes definitions of key attributes only.
resource "aws_dynamodb_table" "state" {
  name         = local.state_table_name
  billing_mode = "PAY_PER_REQUEST" # follows the events' rate, bursts included, with no capacity to plan
  hash_key     = "unit"

  attribute {
    name = "unit"
    type = "S"
  }

  ttl {
    attribute_name = "ttl"
    enabled        = true
  }

  # Losing the table loses every open window: alerts that needed earlier events would not fire.
  point_in_time_recovery {
    enabled = true
  }
  deletion_protection_enabled = var.state_table_deletion_protection

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  tags = var.tags
}

resource "aws_sqs_queue" "on_failure" {
  name                              = "${var.name}-on-failure"
  message_retention_seconds         = 1209600
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = 300
  tags                              = var.tags
}

data "aws_region" "current" {}

data "aws_ec2_managed_prefix_list" "dynamodb" {
  name = "com.amazonaws.${data.aws_region.current.region}.dynamodb"
}

data "aws_iam_policy_document" "antifraud" {
  dynamic "statement" {
    for_each = local.kinesis ? [1] : []
    content {
      sid = "ReadEvents"
      actions = [
        "kinesis:DescribeStream", "kinesis:DescribeStreamSummary", "kinesis:GetRecords",
        "kinesis:GetShardIterator", "kinesis:ListShards", "kinesis:ListStreams", "kinesis:SubscribeToShard",
      ]
      resources = [var.events_stream_arn, var.overflow_stream_arn]
    }
  }
  dynamic "statement" {
    for_each = local.kinesis ? [1] : []
    content {
      sid       = "PublishAlertsAndPushes"
      actions   = ["kinesis:PutRecord", "kinesis:PutRecords", "kinesis:ListShards"]
      resources = var.output_stream_arns
    }
  }
  dynamic "statement" {
    for_each = local.kinesis ? [] : [1]
    content {
      sid       = "ReadMsk"
      actions   = ["kafka:DescribeCluster", "kafka:DescribeClusterV2", "kafka:GetBootstrapBrokers"]
      resources = [var.msk_cluster_arn]
    }
  }
  dynamic "statement" {
    for_each = local.kinesis ? [] : [1]
    content {
      # The trigger's SCRAM secret; the options the function publishes with.
      sid       = "MskCredentials"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = [var.msk_scram_secret_arn, var.kafka_options_secret_arn]
    }
  }
  statement {
    # The state units, and only this table: the calls the function makes (no Scan, no Query).
    sid = "StateTable"
    # BatchGetItem (loads), PutItem (a lone unit), TransactWriteItems of Put and Delete
    # (checked as PutItem and DeleteItem).
    actions = [
      "dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:DeleteItem",
    ]
    resources = [aws_dynamodb_table.state.arn]
  }
  statement {
    sid       = "OnFailureDestination"
    actions   = ["sqs:SendMessage", "sqs:GetQueueAttributes"]
    resources = [aws_sqs_queue.on_failure.arn]
  }
}

module "function" {
  source               = "../lambda_function"
  name                 = var.name
  zip                  = var.lambda_zip
  architecture         = var.architecture
  memory_mb            = var.memory_mb
  timeout_seconds      = 60
  reserved_concurrency = var.reserved_concurrency
  policy_json          = data.aws_iam_policy_document.antifraud.json
  # PITBOSS_RULES_DIR is left unset: the function runs the rule packs built into its binary.
  # AWS_REGION (the Kinesis bus's region) is set by Lambda itself.
  environment = merge({
    PITBOSS_BUS         = var.bus
    PITBOSS_STATE_TABLE = aws_dynamodb_table.state.name
    RUST_LOG            = "info"
    }, local.topics, local.kinesis ? {} : {
    PITBOSS_KAFKA_BOOTSTRAP      = var.kafka_bootstrap
    PITBOSS_KAFKA_OPTIONS_SECRET = var.kafka_options_secret_arn
    # Not read by the function: a new secret version changes the configuration, so every
    # instance starts again and reads the new password (warm ones would keep the old one).
    }, var.kafka_options_version == null ? {} : {
    PITBOSS_KAFKA_OPTIONS_VERSION = var.kafka_options_version
  })
  kms_key_arn        = var.kms_key_arn
  vpc_id             = var.vpc_id
  vpc_cidr           = var.vpc_cidr
  subnet_ids         = var.subnet_ids
  log_retention_days = var.log_retention_days
  tags               = var.tags

  # DynamoDB through its gateway endpoint (or a NAT) is reached at DynamoDB's public addresses,
  # outside the VPC's CIDR that the function's security group otherwise allows: the region's
  # AWS-managed prefix list names them.
  egress_prefix_list_ids = [data.aws_ec2_managed_prefix_list.dynamodb.id]
}

# One mapping per stream a player's events travel on: ingest moves a hot player's excess
# (above its hot-key rate, docs/api.md) to events_overflow, and the rules must see those events
# too (a bot fast enough to trip the velocity rules would otherwise half escape them).
resource "aws_lambda_event_source_mapping" "events" {
  for_each = {
    events          = var.events_stream_arn
    events_overflow = var.overflow_stream_arn
  }
  function_name     = module.function.arn
  event_source_arn  = local.kinesis ? each.value : var.msk_cluster_arn
  topics            = local.kinesis ? null : [each.key]
  starting_position = var.starting_position
  batch_size        = var.batch_size

  # Only the failed records (and those after them on their shard or partition) are retried.
  function_response_types = ["ReportBatchItemFailures"]

  # Split a failing batch in two to isolate a poison record, give up on a record after its
  # retries or its age, then send its description to the on-failure queue. On MSK these, and
  # the partial batch response above, are the error handling controls of provisioned mode
  # (below): without it a Kafka mapping ignores the function's batchItemFailures.
  bisect_batch_on_function_error = true
  maximum_retry_attempts         = var.maximum_retry_attempts
  maximum_record_age_in_seconds  = var.maximum_record_age_seconds
  parallelization_factor         = local.kinesis ? 1 : null

  # MSK: provisioned mode, pollers kept between the bounds (each ~5 MB/s).
  dynamic "provisioned_poller_config" {
    for_each = local.kinesis ? [] : [1]
    content {
      minimum_pollers = var.msk_minimum_pollers
      maximum_pollers = var.msk_maximum_pollers
    }
  }

  destination_config {
    on_failure {
      destination_arn = aws_sqs_queue.on_failure.arn
    }
  }

  dynamic "source_access_configuration" {
    for_each = local.kinesis ? [] : [1]
    content {
      type = "SASL_SCRAM_512_AUTH"
      uri  = var.msk_scram_secret_arn
    }
  }
}

# Before the events_overflow mapping, the events mapping was the only one.
moved {
  from = aws_lambda_event_source_mapping.events
  to   = aws_lambda_event_source_mapping.events["events"]
}

# On MSK the function needs the brokers and the secret of its options: fail the plan naming
# them rather than start a function that cannot log in.
resource "terraform_data" "kafka_inputs" {
  lifecycle {
    precondition {
      condition     = local.kinesis || (var.kafka_bootstrap != null && var.kafka_options_secret_arn != null)
      error_message = "bus = \"kafka\" needs kafka_bootstrap and kafka_options_secret_arn."
    }
  }
}
