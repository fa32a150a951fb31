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

data "aws_iam_policy_document" "ingest" {
  dynamic "statement" {
    for_each = local.kinesis ? [1] : []
    content {
      sid       = "PublishEvents"
      actions   = ["kinesis:PutRecord", "kinesis:PutRecords", "kinesis:ListShards"]
      resources = var.event_stream_arns
    }
  }
  dynamic "statement" {
    for_each = local.kinesis ? [] : [1]
    content {
      # The librdkafka options with MSK's SCRAM credentials, read at start.
      sid       = "MskCredentials"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = [var.kafka_options_secret_arn]
    }
  }
}

module "function" {
  source               = "../lambda_function"
  name                 = var.name
  zip                  = var.lambda_zip
  architecture         = var.architecture
  memory_mb            = var.memory_mb
  timeout_seconds      = 30
  reserved_concurrency = var.reserved_concurrency
  policy_json          = data.aws_iam_policy_document.ingest.json
  environment = merge({
    PITBOSS_CONFIG_TOML = local.config
    PITBOSS_BUS         = var.bus
    RUST_LOG            = "info"
    }, local.kinesis ? {} : {
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
}

# The API's access log (the stage's access_log_settings); the function's own log group is in
# modules/lambda_function.
resource "aws_cloudwatch_log_group" "api" {
  name              = "/pitboss/${var.name}/api-access"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
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
  integration_uri        = module.function.invoke_arn
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
  function_name = module.function.function_name
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.ingest.execution_arn}/*/*"
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
