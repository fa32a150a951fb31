# The rules engine on AWS Lambda, triggered by the events stream (Kinesis or MSK): partial
# batch failures (ReportBatchItemFailures), bisect on error (Kinesis), and an on-failure
# destination (SQS) for records that exhaust their retries. The function's zip comes from the
# antifraud Lambda adapter (functions/antifraud, its own issue): `lambda_zip` names it.

locals {
  kinesis = var.bus == "kinesis"
}

resource "aws_cloudwatch_log_group" "lambda" {
  name              = "/aws/lambda/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_sqs_queue" "on_failure" {
  name                              = "${var.name}-on-failure"
  message_retention_seconds         = 1209600
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = 300
  tags                              = var.tags
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "antifraud" {
  #checkov:skip=CKV_AWS_111:Only the EC2 network-interface and X-Ray actions have Resource "*": AWS does not support resource-level permissions for them (Lambda in a VPC, active tracing); every other statement names its resources.
  #checkov:skip=CKV_AWS_356:Same statements: ec2:*NetworkInterface* and xray:Put* cannot be scoped to resources.
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.lambda.arn}:*"]
  }
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
  statement {
    sid       = "EncryptWithTheKey"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
  statement {
    # Network interfaces in the VPC (the function, and the MSK event source's pollers); these
    # EC2 actions do not support resource-level permissions.
    sid = "VpcNetworkInterfaces"
    actions = [
      "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
      "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeVpcs",
      "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",
    ]
    resources = ["*"]
  }
  statement {
    sid       = "Tracing"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }
}

resource "aws_iam_role" "antifraud" {
  name               = var.name
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "antifraud" {
  name   = "${var.name}-least-privilege"
  role   = aws_iam_role.antifraud.id
  policy = data.aws_iam_policy_document.antifraud.json
}

resource "aws_security_group" "lambda" {
  name        = "${var.name}-lambda"
  description = "Pitboss antifraud Lambda: outbound to the bus and AWS endpoints only"
  vpc_id      = var.vpc_id

  egress {
    description = "HTTPS to AWS endpoints and Kafka (SASL/SCRAM over TLS) inside the VPC"
    from_port   = 443
    to_port     = 9096
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }

  tags = var.tags
}

resource "aws_lambda_function" "antifraud" {
  function_name                  = var.name
  role                           = aws_iam_role.antifraud.arn
  filename                       = var.lambda_zip
  source_code_hash               = filebase64sha256(var.lambda_zip)
  handler                        = "bootstrap"
  runtime                        = "provided.al2023"
  architectures                  = [var.architecture]
  memory_size                    = var.memory_mb
  timeout                        = 60
  reserved_concurrent_executions = var.reserved_concurrency
  kms_key_arn                    = var.kms_key_arn

  environment {
    variables = merge({
      PITBOSS_BUS = var.bus
      RUST_LOG    = "info"
      }, local.kinesis ? {} : {
      PITBOSS_KAFKA_BOOTSTRAP = var.kafka_bootstrap
    })
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [aws_security_group.lambda.id]
  }

  tracing_config {
    mode = "Active"
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.lambda.name
  }

  tags = var.tags

  #checkov:skip=CKV_AWS_116:Invoked by an event source mapping, whose own on-failure destination (SQS) takes what fails; a function-level DLQ applies only to asynchronous invocations.
  #checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile the operator owns; the zip's hash is pinned by source_code_hash.
}

resource "aws_lambda_event_source_mapping" "events" {
  function_name     = aws_lambda_function.antifraud.arn
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
