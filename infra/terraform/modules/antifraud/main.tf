# The rules engine on AWS Lambda, triggered by the events stream (Kinesis or MSK): partial
# batch failures (ReportBatchItemFailures), bisect on error (Kinesis), and an on-failure
# destination (SQS) for records that exhaust their retries. The function's zip comes from the
# antifraud Lambda adapter (functions/antifraud, its own issue): `lambda_zip` names it.

locals {
  kinesis = var.bus == "kinesis"
}

resource "aws_sqs_queue" "on_failure" {
  name                              = "${var.name}-on-failure"
  message_retention_seconds         = 1209600
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = 300
  tags                              = var.tags
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
      resources = [var.events_stream_arn]
    }
  }
  dynamic "statement" {
    for_each = local.kinesis ? [1] : []
    content {
      sid       = "PublishAlertsAndPushes"
      actions   = ["kinesis:PutRecord", "kinesis:PutRecords", "kinesis:DescribeStreamSummary", "kinesis:ListShards"]
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
      sid       = "MskCredentials"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = [var.msk_scram_secret_arn]
    }
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
  environment = merge({
    PITBOSS_BUS = var.bus
    RUST_LOG    = "info"
    }, local.kinesis ? {} : {
    PITBOSS_KAFKA_BOOTSTRAP = var.kafka_bootstrap
  })
  kms_key_arn        = var.kms_key_arn
  vpc_id             = var.vpc_id
  vpc_cidr           = var.vpc_cidr
  subnet_ids         = var.subnet_ids
  log_retention_days = var.log_retention_days
  tags               = var.tags
}

resource "aws_lambda_event_source_mapping" "events" {
  function_name     = module.function.arn
  event_source_arn  = local.kinesis ? var.events_stream_arn : var.msk_cluster_arn
  topics            = local.kinesis ? null : ["events"]
  starting_position = var.starting_position
  batch_size        = var.batch_size

  # Only the failed records (and those after them on their shard) are retried.
  function_response_types = ["ReportBatchItemFailures"]

  # Kinesis only: split a failing batch in two to isolate a poison record, give up on a record
  # after its retries or its age, then send its description to the on-failure queue.
  bisect_batch_on_function_error = local.kinesis ? true : null
  maximum_retry_attempts         = local.kinesis ? var.maximum_retry_attempts : null
  maximum_record_age_in_seconds  = local.kinesis ? var.maximum_record_age_seconds : null
  parallelization_factor         = local.kinesis ? 1 : null

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
