# A Pitboss Rust function on AWS Lambda (provided.al2023: `bootstrap` in a zip), as the ingest
# and antifraud modules run it: in the VPC, X-Ray tracing, environment encrypted with the KMS
# key, reserved concurrency, its own log group (retention, KMS), and a role with the caller's
# statements plus what every such function needs.

resource "aws_cloudwatch_log_group" "function" {
  name              = "/aws/lambda/${var.name}"
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

data "aws_iam_policy_document" "function" {
  #checkov:skip=CKV_AWS_111:Only the EC2 network-interface and X-Ray actions have Resource "*": AWS does not support resource-level permissions for them (Lambda in a VPC, active tracing); every other statement names its resources.
  #checkov:skip=CKV_AWS_356:Same statements: ec2:*NetworkInterface* and xray:Put* cannot be scoped to resources.
  source_policy_documents = [var.policy_json]
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function.arn}:*"]
  }
  statement {
    sid       = "EncryptWithTheKey"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
  statement {
    # Network interfaces in the VPC (the function, and an MSK event source's pollers).
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

resource "aws_iam_role" "function" {
  name               = var.name
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "function" {
  name   = "${var.name}-least-privilege"
  role   = aws_iam_role.function.id
  policy = data.aws_iam_policy_document.function.json
}

resource "aws_security_group" "function" {
  name        = "${var.name}-lambda"
  description = "Pitboss ${var.name}: outbound to the bus and AWS endpoints only"
  vpc_id      = var.vpc_id

  egress {
    description = "HTTPS to AWS endpoints and Kafka (SASL/SCRAM over TLS) inside the VPC"
    from_port   = 443
    to_port     = 9096
    protocol    = "tcp"
    cidr_blocks = [var.vpc_cidr]
  }

  # AWS services reached outside the VPC's CIDR, such as DynamoDB through its gateway endpoint.
  dynamic "egress" {
    for_each = var.egress_prefix_list_ids
    content {
      description     = "HTTPS to an AWS service by its managed prefix list"
      from_port       = 443
      to_port         = 443
      protocol        = "tcp"
      prefix_list_ids = [egress.value]
    }
  }

  tags = var.tags
}

resource "aws_lambda_function" "function" {
  function_name                  = var.name
  role                           = aws_iam_role.function.arn
  filename                       = var.zip
  source_code_hash               = filebase64sha256(var.zip)
  handler                        = "bootstrap"
  runtime                        = "provided.al2023"
  architectures                  = [var.architecture]
  memory_size                    = var.memory_mb
  timeout                        = var.timeout_seconds
  reserved_concurrent_executions = var.reserved_concurrency
  kms_key_arn                    = var.kms_key_arn

  environment {
    variables = var.environment
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [aws_security_group.function.id]
  }

  tracing_config {
    mode = "Active"
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.function.name
  }

  tags = var.tags

  #checkov:skip=CKV_AWS_116:Pitboss functions are invoked synchronously (API Gateway: the client retries with the same event ids) or by an event source mapping with its own on-failure destination; a function DLQ applies only to asynchronous invocations.
  #checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile the operator owns; the zip's hash is pinned by source_code_hash.
}
