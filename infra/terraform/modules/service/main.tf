# One Pitboss role on ECS Fargate: the `pitboss` image with a subcommand (deploy/docker/
# Dockerfile), its admin listener probed by the container health check, logs in CloudWatch,
# secrets from Secrets Manager, and an ADOT collector sidecar that scrapes the admin /metrics
# into CloudWatch (namespace `metrics_namespace`; the time-to-notify alarm reads it there).
# With `load_balancer`, an internet-facing ALB (HTTPS, WebSocket idle timeout, stickiness) in
# front of the service.

data "aws_region" "current" {}
data "aws_partition" "current" {}

locals {
  lb = var.load_balancer != null
  # The collector's image lives in a private ECR repository (variables.tf, adot_image): the
  # tasks pull through the VPC's ECR endpoints, which cannot reach public.ecr.aws.
  adot_image_parts    = regex("^([0-9]{12})\\.dkr\\.ecr\\.([a-z0-9-]+)\\.amazonaws\\.com/([^:@]+)", var.adot_image)
  adot_repository_arn = "arn:${data.aws_partition.current.partition}:ecr:${local.adot_image_parts[1]}:${local.adot_image_parts[0]}:repository/${local.adot_image_parts[2]}"
  environment = [for k, v in merge(var.environment, {
    RUST_LOG                   = "info"
    PITBOSS_ADMIN_PORT         = tostring(var.admin_port)
    PITBOSS_DRAIN_TIMEOUT_SECS = tostring(var.drain_timeout_seconds)
  }) : { name = k, value = v }]
  secrets = [for k, arn in var.secrets : { name = k, valueFrom = arn }]
  adot_config = yamlencode({
    receivers = { prometheus = { config = { scrape_configs = [{
      job_name        = var.name
      scrape_interval = "30s"
      static_configs  = [{ targets = ["127.0.0.1:${var.admin_port}"] }]
    }] } } }
    # Every scrape goes to the metrics log group (EMF: Logs Insights reads all of it); only the
    # declared metrics become CloudWatch metrics, each with exactly the declared dimensions
    # (the alarms name them; without declarations every label, and the collector's OTelLib,
    # would be a dimension no alarm matches). `service.name` is the scrape job: this service.
    exporters = { awsemf = {
      namespace                        = var.metrics_namespace
      log_group_name                   = "/pitboss/${var.name}/metrics"
      dimension_rollup_option          = "NoDimensionRollup"
      resource_to_telemetry_conversion = { enabled = true }
      metric_declarations = [
        {
          dimensions            = [["kind"]]
          metric_name_selectors = ["^pitboss_gateway_messages_(delivered|late)_total$"]
        },
        {
          dimensions            = [["service.name"]]
          metric_name_selectors = ["^pitboss_antifraud_dead_letters_total$"]
        },
        {
          dimensions            = [["service.name", "topic"]]
          metric_name_selectors = ["^pitboss_processor_unstored_seconds$"]
        },
      ]
    } }
    service = { pipelines = { metrics = { receivers = ["prometheus"], exporters = ["awsemf"] } } }
  })
}

resource "aws_cloudwatch_log_group" "service" {
  name              = "/pitboss/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_cloudwatch_log_group" "metrics" {
  name              = "/pitboss/${var.name}/metrics"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# Execution role: pull the image, write the two log groups, read this service's secrets.
data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.service.arn}:*"]
  }
  statement {
    sid       = "PullImage"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
    resources = distinct([var.ecr_repository_arn, local.adot_repository_arn])
  }
  statement {
    # GetAuthorizationToken has no resource-level permissions.
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
  dynamic "statement" {
    for_each = length(var.secrets) > 0 ? [1] : []
    content {
      sid       = "Secrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = values(var.secrets)
    }
  }
  statement {
    sid       = "DecryptSecretsAndLogs"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "execution" {
  name   = "${var.name}-execution"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# Task role: what the process itself may do (the caller's statements), plus the metrics sidecar.
data "aws_iam_policy_document" "task" {
  source_policy_documents = var.task_policy_json == null ? [] : [var.task_policy_json]
  statement {
    sid       = "MetricsSidecar"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = [aws_cloudwatch_log_group.metrics.arn, "${aws_cloudwatch_log_group.metrics.arn}:*"]
  }
}

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "task" {
  name   = "${var.name}-task"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

resource "aws_ecs_task_definition" "service" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory_mb
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  dynamic "ephemeral_storage" {
    for_each = var.ephemeral_storage_gib == null ? [] : [var.ephemeral_storage_gib]
    content {
      size_in_gib = ephemeral_storage.value
    }
  }

  container_definitions = jsonencode([
    {
      name                   = var.name
      image                  = var.image
      essential              = true
      entryPoint             = var.entry_point
      command                = var.command
      readonlyRootFilesystem = false
      user                   = "10001:10001"
      environment            = local.environment
      secrets                = local.secrets
      stopTimeout            = min(var.drain_timeout_seconds + 15, 120)
      portMappings = concat(
        var.port == null ? [] : [{ containerPort = var.port, protocol = "tcp" }],
        [{ containerPort = var.admin_port, protocol = "tcp" }],
      )
      healthCheck = {
        command     = ["CMD-SHELL", "curl -fsS http://127.0.0.1:${var.admin_port}/healthz || exit 1"]
        interval    = 10
        timeout     = 3
        retries     = 3
        startPeriod = 30
      }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.service.name
          awslogs-region        = data.aws_region.current.region
          awslogs-stream-prefix = var.name
        }
      }
    },
    {
      name        = "metrics"
      image       = var.adot_image
      essential   = false
      environment = [{ name = "AOT_CONFIG_CONTENT", value = local.adot_config }]
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.service.name
          awslogs-region        = data.aws_region.current.region
          awslogs-stream-prefix = "${var.name}-metrics"
        }
      }
    },
  ])

  tags = var.tags
}

resource "aws_security_group" "service" {
  name        = var.name
  description = "Pitboss ${var.name}: its port from the load balancer only"
  vpc_id      = var.vpc_id

  dynamic "ingress" {
    for_each = local.lb ? toset([var.port, var.admin_port]) : toset([])
    content {
      description     = "Traffic (service port) and health checks (admin port) from the ALB"
      from_port       = ingress.value
      to_port         = ingress.value
      protocol        = "tcp"
      security_groups = [aws_security_group.alb[0].id]
    }
  }

  egress {
    description = "HTTPS (AWS endpoints, ClickHouse, JWKS) and Kafka (SASL/SCRAM over TLS)"
    from_port   = 443
    to_port     = 9096
    protocol    = "tcp"
    cidr_blocks = var.egress_cidrs
  }

  # AWS services reached outside egress_cidrs, such as DynamoDB through its gateway endpoint.
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

resource "aws_ecs_service" "service" {
  name                               = var.name
  cluster                            = var.cluster_arn
  task_definition                    = aws_ecs_task_definition.service.arn
  desired_count                      = var.desired_count
  launch_type                        = "FARGATE"
  deployment_minimum_healthy_percent = 50
  deployment_maximum_percent         = 200
  enable_execute_command             = false
  propagate_tags                     = "SERVICE"

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.service.id]
    assign_public_ip = false
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  dynamic "load_balancer" {
    for_each = local.lb ? [1] : []
    content {
      target_group_arn = aws_lb_target_group.service[0].arn
      container_name   = var.name
      container_port   = var.port
    }
  }

  tags = var.tags
}

# ------------------------------------------------------------------ load balancer (optional)
resource "aws_security_group" "alb" {
  count       = local.lb ? 1 : 0
  name        = "${var.name}-alb"
  description = "Pitboss ${var.name} ALB: HTTPS from clients"
  vpc_id      = var.vpc_id

  ingress {
    description = "HTTPS and WebSocket (wss) from clients"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = var.load_balancer.ingress_cidrs
  }

  dynamic "egress" {
    for_each = toset([var.port, var.admin_port])
    content {
      description = "To the service's tasks inside the VPC (service and admin ports)"
      from_port   = egress.value
      to_port     = egress.value
      protocol    = "tcp"
      cidr_blocks = var.egress_cidrs
    }
  }

  tags = var.tags
}

resource "aws_lb" "service" {
  count                      = local.lb ? 1 : 0
  name                       = substr(var.name, 0, 32)
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = var.load_balancer.public_subnet_ids
  security_groups            = [aws_security_group.alb[0].id]
  drop_invalid_header_fields = true
  enable_deletion_protection = true
  # Sockets idle between the gateway's pings (every 25 s) must outlive them.
  idle_timeout = var.load_balancer.idle_timeout_seconds

  access_logs {
    bucket  = var.load_balancer.access_logs_bucket
    prefix  = var.name
    enabled = true
  }

  tags = var.tags
  #checkov:skip=CKV2_AWS_28:A WAF web ACL is the operator's choice (and cost); attach one with aws_wafv2_web_acl_association to this ALB's ARN.
}

resource "aws_lb_target_group" "service" {
  count                = local.lb ? 1 : 0
  name                 = substr("${var.name}-tg", 0, 32)
  port                 = var.port
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = var.vpc_id
  deregistration_delay = var.drain_timeout_seconds

  # A client's reconnects land on the same task while it lives; any task can resume it.
  stickiness {
    type            = "lb_cookie"
    enabled         = true
    cookie_duration = 3600
  }

  health_check {
    path                = "/readyz"
    port                = tostring(var.admin_port)
    protocol            = "HTTP"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = var.tags
}

resource "aws_lb_listener" "https" {
  count             = local.lb ? 1 : 0
  load_balancer_arn = aws_lb.service[0].arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = "ELBSecurityPolicy-TLS13-1-2-2021-06"
  certificate_arn   = var.load_balancer.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.service[0].arn
  }

  tags = var.tags
}
