# The ingest function on AWS: API Gateway HTTP API -> Lambda (`pitboss-ingest-lambda`, the
# provided.al2023 zip of scripts/lambda-zip.sh) -> the events stream. Ingest authenticates
# every request itself with the tenant's API key (functions/ingest/src/auth.rs), so the routes
# carry no API Gateway authorizer.

locals {
  kinesis = var.bus == "kinesis"
  config = join("\n", concat([
    "topic = \"events\"",
    "overflow_topic = \"events_overflow\"",
    ], flatten([for t in var.tenants : [
      "[[tenants]]",
      "id = \"${t.id}\"",
      "api_key_sha256 = [${join(", ", [for h in t.api_key_sha256 : "\"${h}\""])}]",
  ]])))
}

resource "aws_cloudwatch_log_group" "lambda" {
  name              = "/aws/lambda/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_cloudwatch_log_group" "api" {
  name              = "/pitboss/${var.name}/api-access"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
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

data "aws_iam_policy_document" "ingest" {
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
      sid       = "PublishEvents"
      actions   = ["kinesis:PutRecord", "kinesis:PutRecords", "kinesis:DescribeStreamSummary", "kinesis:ListShards"]
      resources = var.event_stream_arns
    }
  }
  statement {
    sid       = "EncryptWithTheKey"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
  statement {
    # The Lambda service creates the function's network interfaces in the VPC; these EC2
    # actions do not support resource-level permissions.
    sid = "VpcNetworkInterfaces"
    actions = [
      "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces", "ec2:DeleteNetworkInterface",
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

resource "aws_iam_role" "ingest" {
  name               = var.name
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "ingest" {
  name   = "${var.name}-least-privilege"
  role   = aws_iam_role.ingest.id
  policy = data.aws_iam_policy_document.ingest.json
}

resource "aws_security_group" "lambda" {
  name        = "${var.name}-lambda"
  description = "Pitboss ingest Lambda: outbound to the bus and AWS endpoints only"
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

resource "aws_lambda_function" "ingest" {
  function_name                  = var.name
  role                           = aws_iam_role.ingest.arn
  filename                       = var.lambda_zip
  source_code_hash               = filebase64sha256(var.lambda_zip)
  handler                        = "bootstrap"
  runtime                        = "provided.al2023"
  architectures                  = [var.architecture]
  memory_size                    = var.memory_mb
  timeout                        = 30
  reserved_concurrent_executions = var.reserved_concurrency
  kms_key_arn                    = var.kms_key_arn

  environment {
    variables = merge({
      PITBOSS_CONFIG_TOML = local.config
      PITBOSS_BUS         = var.bus
      RUST_LOG            = "info"
      }, local.kinesis ? {} : {
      PITBOSS_KAFKA_BOOTSTRAP = var.kafka_bootstrap
      PITBOSS_KAFKA_OPTIONS   = var.kafka_options
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

  #checkov:skip=CKV_AWS_116:Invoked synchronously by API Gateway: the client gets the error and retries with the same event ids (deduplicated); an asynchronous dead-letter queue never receives anything.
  #checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile the operator owns; the zip's hash is pinned by source_code_hash.
}

resource "aws_apigatewayv2_api" "ingest" {
  name          = var.name
  protocol_type = "HTTP"
  description   = "Pitboss ingest: POST /v1/events and the rest of docs/api.md"
  tags          = var.tags
}

resource "aws_apigatewayv2_integration" "ingest" {
  api_id                 = aws_apigatewayv2_api.ingest.id
  integration_type       = "AWS_PROXY"
  integration_uri        = aws_lambda_function.ingest.invoke_arn
  payload_format_version = "2.0"
  timeout_milliseconds   = 29000
}

resource "aws_apigatewayv2_route" "ingest" {
  for_each  = toset(["POST /v1/events", "GET /v1/openapi.json", "GET /healthz"])
  api_id    = aws_apigatewayv2_api.ingest.id
  route_key = each.key
  target    = "integrations/${aws_apigatewayv2_integration.ingest.id}"
  #checkov:skip=CKV_AWS_309:Ingest authenticates every request with the tenant's API key (Bearer, SHA-256 compared in constant time), which an API Gateway authorizer would only duplicate.
}

resource "aws_apigatewayv2_stage" "default" {
  api_id      = aws_apigatewayv2_api.ingest.id
  name        = "$default"
  auto_deploy = true

  default_route_settings {
    throttling_burst_limit = var.throttle_burst
    throttling_rate_limit  = var.throttle_rate
  }

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.api.arn
    format = jsonencode({
      requestId        = "$context.requestId", ip = "$context.identity.sourceIp", method = "$context.httpMethod",
      path             = "$context.path", status = "$context.status", latencyMs = "$context.responseLatency",
      integrationError = "$context.integrationErrorMessage"
    })
  }

  tags = var.tags
}

resource "aws_lambda_permission" "api" {
  statement_id  = "AllowApiGateway"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.ingest.function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.ingest.execution_arn}/*/*"
}
