variable "no_check" {
  type = string
}

variable "checked" {
  type = string
  validation {
    condition     = length(var.checked) > 0
    error_message = "checked must not be empty."
  }
}

variable "tags" {
  type    = map(string)
  default = {}
}

resource "aws_lambda_event_source_mapping" "bare" {
  function_name    = "f"
  event_source_arn = "arn:aws:kinesis:eu-west-1:111122223333:stream/events"
}

resource "aws_lambda_event_source_mapping" "good" {
  function_name                  = "f"
  event_source_arn               = "arn:aws:kinesis:eu-west-1:111122223333:stream/events"
  function_response_types        = ["ReportBatchItemFailures"]
  bisect_batch_on_function_error = true
  destination_config {
    on_failure {
      destination_arn = "arn:aws:sqs:eu-west-1:111122223333:dlq"
    }
  }
}

resource "aws_lambda_event_source_mapping" "kafka_on_demand" {
  function_name                  = "f"
  event_source_arn               = "arn:aws:kafka:eu-west-1:111122223333:cluster/c/1"
  topics                         = ["events"]
  function_response_types        = ["ReportBatchItemFailures"]
  bisect_batch_on_function_error = true
  destination_config {
    on_failure {
      destination_arn = "arn:aws:sqs:eu-west-1:111122223333:dlq"
    }
  }
}

resource "aws_lb" "bare" {
  name = "bare"
}

resource "aws_lb" "good" {
  name         = "good"
  idle_timeout = 120
}

resource "aws_lb_target_group" "bare" {
  name = "bare"
}

resource "aws_lb_target_group" "off" {
  name = "off"
  stickiness {
    type    = "lb_cookie"
    enabled = false
  }
}

resource "aws_lb_target_group" "good" {
  name = "good"
  stickiness {
    type    = "lb_cookie"
    enabled = true
  }
}

resource "aws_cloudwatch_log_group" "bare" {
  name = "bare"
}

resource "aws_cloudwatch_log_group" "good" {
  name              = "good"
  retention_in_days = 30
  kms_key_id        = "arn:aws:kms:eu-west-1:111122223333:key/k"
}

resource "aws_secretsmanager_secret_version" "literal" {
  secret_id     = "s"
  secret_string = "hunter2"
}

resource "aws_secretsmanager_secret_version" "good" {
  secret_id     = "s"
  secret_string = var.checked
}

data "aws_iam_policy_document" "wide" {
  statement {
    actions   = ["kinesis:*"]
    resources = ["*"]
  }
  statement {
    actions   = ["kinesis:PutRecords"]
    resources = ["arn:aws:kinesis:eu-west-1:111122223333:stream/deliveries"]
  }
  statement {
    actions   = ["kinesis:PutRecord", "kinesis:ListShards"]
    resources = ["arn:aws:kinesis:eu-west-1:111122223333:stream/alerts"]
  }
  statement {
    actions   = ["kinesis:GetRecords"]
    resources = ["arn:aws:kinesis:eu-west-1:111122223333:stream/events"]
  }
}

resource "aws_iam_policy" "json" {
  name   = "json"
  policy = <<-JSON
    {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
  JSON
}

resource "aws_kinesis_stream" "on_demand" {
  name = "events"
  stream_mode_details {
    stream_mode = "ON_DEMAND"
  }
}

# Credentials in a plain environment (two flagged), and the forms that are not: a secret's ARN
# in the environment, credentials as ECS secrets.
module "leaky" {
  source = "./nowhere"
  environment = merge({
    PITBOSS_BUS = "kafka"
    }, {
    PITBOSS_KAFKA_OPTIONS = "security.protocol=SASL_SSL"
    DB_PASSWORD           = "x"
  })
}

module "tidy" {
  source = "./nowhere"
  environment = {
    PITBOSS_KAFKA_OPTIONS_SECRET = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:o"
  }
  secrets = { PITBOSS_KAFKA_OPTIONS = "arn:aws:secretsmanager:eu-west-1:111122223333:secret:o" }
}

resource "aws_lambda_function" "leaky" {
  function_name = "leaky"
  environment {
    variables = { MSK_PASSWORD = "x" }
  }
}
