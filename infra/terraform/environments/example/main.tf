# Pitboss on AWS, an example environment (docs/deploy.md walks through it):
#   API Gateway HTTP API -> ingest Lambda -> Kinesis (provisioned shards) or MSK  (var.bus)
#   events -> the rules engine -> alerts, pushes  (var.antifraud_runtime): the antifraud Lambda
#     (event source mapping; state in DynamoDB), or on MSK `pitboss antifraud` on ECS Fargate
#     (one active task and a stand-by; state changelog on a compacted topic)
#   events, live path -> processor (ECS Fargate, 2+ tasks, one group; either bus) -> ClickHouse
#   (var.clickhouse_url: ClickHouse Cloud or self-managed) -> Grafana (var.grafana_url: Amazon
#   Managed Grafana)
#   alerts, pushes -> edge gateway (ECS Fargate behind an ALB: WebSockets) -> players, operators
# The network (VPC, subnets, endpoints), the ECR image and the alarm topic are inputs.

locals {
  kinesis     = var.bus == "kinesis"
  bus_env     = local.kinesis ? { PITBOSS_BUS = "kinesis", AWS_REGION = var.region, PITBOSS_KINESIS_LEASE_TABLE = module.stream.lease_table_name } : { PITBOSS_BUS = "kafka", PITBOSS_KAFKA_BOOTSTRAP = module.stream.kafka_bootstrap }
  bus_secrets = local.kinesis ? {} : { PITBOSS_KAFKA_OPTIONS = module.stream.kafka_options_secret_arn }
  topics = [
    "events", "events_overflow", "alerts", "pushes", "deliveries", "alert_acks", "presence",
    "events_dead_letter", "events_overflow_dead_letter", "alerts_dead_letter", "pushes_dead_letter",
    "deliveries_dead_letter", "alert_acks_dead_letter", "antifraud_dead_letter",
  ]
  streams        = module.stream.stream_arns
  processor_read = ["events", "events_overflow", "alerts", "pushes", "deliveries", "alert_acks"]
  egress_cidrs   = concat([var.vpc_cidr], var.clickhouse_cidrs)
  # Whether the gateway reads the console's figures from ClickHouse (not itself a secret).
  console_stats = nonsensitive(var.clickhouse_stats_url != "")
  engine_on_ecs = var.antifraud_runtime == "ecs"
  # MSK creates no topic on first use (auto.create.topics.enable=false): the processor and the
  # engine run `pitboss topics` (idempotent; PITBOSS_PARTITIONS, the brokers' replication)
  # before they start. Kinesis streams are the stream module's.
  topics_env    = local.kinesis ? {} : { PITBOSS_PARTITIONS = tostring(var.partitions) }
  processor_cmd = concat(["process"], flatten([for t in local.processor_read : ["--topic", t]]))
}

module "observability" {
  source           = "../../modules/observability"
  name             = var.name
  alarm_topic_arns = var.alarm_topic_arns
  # The Lambda's on-failure queue; the engine on ECS has alarms of its own (below).
  antifraud_failure_queue_name = local.engine_on_ecs ? null : "${var.name}-antifraud-on-failure"
}

module "stream" {
  source      = "../../modules/stream"
  name        = var.name
  kind        = var.bus
  topics      = local.topics
  kms_key_arn = module.observability.kms_key_arn
  partitions  = var.partitions
  vpc_id      = var.vpc_id
  vpc_cidr    = var.vpc_cidr
  subnet_ids  = var.private_subnet_ids
  client_security_group_ids = concat(
    [module.ingest.security_group_id, module.gateway.security_group_id, module.processor.security_group_id],
    module.antifraud[*].security_group_id, module.antifraud_engine[*].security_group_id,
  )
}

module "ingest" {
  source                   = "../../modules/ingest"
  name                     = "${var.name}-ingest"
  lambda_zip               = var.ingest_lambda_zip
  architecture             = var.lambda_architecture
  tenants                  = var.tenants
  bus                      = local.kinesis ? "kinesis" : "kafka"
  event_stream_arns        = local.kinesis ? [local.streams["events"], local.streams["events_overflow"]] : []
  kafka_bootstrap          = module.stream.kafka_bootstrap
  kafka_options_secret_arn = module.stream.kafka_options_secret_arn
  kafka_options_version    = module.stream.kafka_options_version
  kms_key_arn              = module.observability.kms_key_arn
  vpc_id                   = var.vpc_id
  vpc_cidr                 = var.vpc_cidr
  subnet_ids               = var.private_subnet_ids
}

# The rules engine runs in one place (two would raise every alert twice): the Lambda here, or
# the ECS service below (antifraud_engine).
module "antifraud" {
  count        = local.engine_on_ecs ? 0 : 1
  source       = "../../modules/antifraud"
  name         = "${var.name}-antifraud"
  lambda_zip   = var.antifraud_lambda_zip
  architecture = var.lambda_architecture
  # One invocation per shard of events and of events_overflow at a time (parallelization
  # factor 1), on MSK at most one per partition of each: 2 x partitions at full load. Fewer
  # throttles the engine and alerts come late (the account's limit, 1000 by default, bounds it).
  reserved_concurrency     = max(100, 2 * var.partitions)
  bus                      = local.kinesis ? "kinesis" : "kafka"
  events_stream_arn        = local.kinesis ? local.streams["events"] : null
  overflow_stream_arn      = local.kinesis ? local.streams["events_overflow"] : null
  output_stream_arns       = local.kinesis ? [local.streams["alerts"], local.streams["pushes"], local.streams["antifraud_dead_letter"]] : []
  msk_cluster_arn          = module.stream.msk_cluster_arn
  msk_scram_secret_arn     = module.stream.scram_secret_arn
  kafka_bootstrap          = module.stream.kafka_bootstrap
  kafka_options_secret_arn = module.stream.kafka_options_secret_arn
  kafka_options_version    = module.stream.kafka_options_version
  kms_key_arn              = module.observability.kms_key_arn
  vpc_id                   = var.vpc_id
  vpc_cidr                 = var.vpc_cidr
  subnet_ids               = var.private_subnet_ids
  # Its state table is "<name>-antifraud-state", with deletion protection on (the module's default).
}

# Before antifraud_runtime, the Lambda was the only engine: its resources keep their addresses.
moved {
  from = module.antifraud
  to   = module.antifraud[0]
}

# ------------------------------------------------------------------ secrets
resource "aws_secretsmanager_secret" "clickhouse_url" {
  name                    = "${var.name}/clickhouse-url"
  description             = "PITBOSS_CLICKHOUSE_URL of the processors (credentials in its query: ?user=…&password=…)"
  kms_key_id              = module.observability.kms_key_arn
  recovery_window_in_days = 7
  #checkov:skip=CKV2_AWS_57:The ClickHouse credentials belong to the ClickHouse service (ClickHouse Cloud or self-managed) and rotate there; update var.clickhouse_url after a rotation.
}

resource "aws_secretsmanager_secret_version" "clickhouse_url" {
  secret_id     = aws_secretsmanager_secret.clickhouse_url.id
  secret_string = var.clickhouse_url
}

resource "aws_secretsmanager_secret" "clickhouse_stats_url" {
  count                   = local.console_stats ? 1 : 0
  name                    = "${var.name}/clickhouse-stats-url"
  description             = "PITBOSS_GATEWAY_STATS_CLICKHOUSE_URL of the edge gateway (a read-only user; credentials in its query)"
  kms_key_id              = module.observability.kms_key_arn
  recovery_window_in_days = 7
  #checkov:skip=CKV2_AWS_57:The ClickHouse credentials belong to the ClickHouse service (ClickHouse Cloud or self-managed) and rotate there; update var.clickhouse_stats_url after a rotation.
}

resource "aws_secretsmanager_secret_version" "clickhouse_stats_url" {
  count         = local.console_stats ? 1 : 0
  secret_id     = aws_secretsmanager_secret.clickhouse_stats_url[0].id
  secret_string = var.clickhouse_stats_url
}

resource "random_password" "gateway_jwt" {
  length  = 64
  special = false
}

resource "aws_secretsmanager_secret" "gateway_jwt" {
  name                    = "${var.name}/gateway-jwt-secret"
  description             = "HS256 secret of the edge gateway's connection tokens (pitboss token)"
  kms_key_id              = module.observability.kms_key_arn
  recovery_window_in_days = 7
  #checkov:skip=CKV2_AWS_57:Rotating an HS256 secret invalidates every live token at once; rotate by replacing random_password.gateway_jwt in a maintenance window, or use JWKS (RS256/ES256) instead.
}

resource "aws_secretsmanager_secret_version" "gateway_jwt" {
  secret_id     = aws_secretsmanager_secret.gateway_jwt.id
  secret_string = random_password.gateway_jwt.result
}

# ------------------------------------------------------------------ ECS
resource "aws_ecs_cluster" "pitboss" {
  name = var.name
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

# The processor reads either bus (PITBOSS_BUS in local.bus_env): on Kinesis it skips what
# is stored by the greatest sequence number in its table (docs/processor.md, "Effectively
# once"), its consumer group's leases in the stream module's table, which is the bus's default
# name (pitboss-leases).
data "aws_iam_policy_document" "processor" {
  # What the Kinesis bus calls for a consumer group and its dead letters (crates/bus/src/
  # kinesis): ListShards, GetShardIterator and GetRecords on the streams it reads; ListShards
  # and PutRecords on their `<topic>_dead_letter` streams; the lease table's calls. On MSK
  # nothing: SASL/SCRAM credentials come in PITBOSS_KAFKA_OPTIONS (a secret the execution role
  # reads), as for the gateway.
  dynamic "statement" {
    for_each = local.kinesis ? [1] : []
    content {
      sid       = "ReadTopics"
      actions   = ["kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords"]
      resources = [for t in local.processor_read : local.streams[t]]
    }
  }
  dynamic "statement" {
    for_each = local.kinesis ? [1] : []
    content {
      sid       = "PublishDeadLetters"
      actions   = ["kinesis:ListShards", "kinesis:PutRecords"]
      resources = [for t in local.processor_read : local.streams["${t}_dead_letter"]]
    }
  }
  dynamic "statement" {
    # The consumer group's leases and checkpoints. CreateTable: the bus calls it before
    # DescribeTable on first use and takes ResourceInUseException as "already there"
    # (crates/bus/src/kinesis/leases.rs); a denied call would stop the processor, so it may
    # create this one table, which the stream module has already created.
    for_each = local.kinesis ? [1] : []
    content {
      sid = "LeaseTable"
      actions = [
        "dynamodb:CreateTable", "dynamodb:DescribeTable", "dynamodb:PutItem", "dynamodb:UpdateItem",
        "dynamodb:DeleteItem", "dynamodb:Query",
      ]
      resources = [module.stream.lease_table_arn]
    }
  }
  dynamic "statement" {
    for_each = local.kinesis ? [1] : []
    content {
      sid       = "StreamAndTableKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [module.observability.kms_key_arn]
    }
  }
}

# DynamoDB (the lease table) through its gateway endpoint or a NAT answers at public addresses,
# outside egress_cidrs: the region's managed prefix list names them.
data "aws_ec2_managed_prefix_list" "dynamodb" {
  count = local.kinesis ? 1 : 0
  name  = "com.amazonaws.${var.region}.dynamodb"
}

# ECR serves image layers from S3: a task pulling its images through the ECR endpoints fetches
# the layers at S3's addresses (its gateway endpoint), which its security group must allow.
data "aws_ec2_managed_prefix_list" "s3" {
  name = "com.amazonaws.${var.region}.s3"
}

module "processor" {
  source             = "../../modules/service"
  name               = "${var.name}-processor"
  image              = var.image
  ecr_repository_arn = var.ecr_repository_arn
  adot_image         = var.adot_image
  entry_point        = local.kinesis ? null : ["/bin/sh", "-c"]
  command            = local.kinesis ? local.processor_cmd : ["pitboss topics${local.engine_on_ecs ? "" : " --no-state-topic"} && exec pitboss ${join(" ", local.processor_cmd)}"]
  admin_port         = 9465
  environment = merge(local.bus_env, local.topics_env, {
    PITBOSS_CLICKHOUSE_DATABASE    = var.clickhouse_database
    PITBOSS_PROCESSOR_ADMIN_LISTEN = "0.0.0.0:9465"
  }, var.clickhouse_cluster == "" ? {} : { PITBOSS_CLICKHOUSE_CLUSTER = var.clickhouse_cluster })
  secrets          = merge(local.bus_secrets, { PITBOSS_CLICKHOUSE_URL = aws_secretsmanager_secret.clickhouse_url.arn })
  task_policy_json = data.aws_iam_policy_document.processor.json
  desired_count    = var.processor_count
  cpu              = 2048
  memory_mb        = 4096
  cluster_arn      = aws_ecs_cluster.pitboss.arn
  vpc_id           = var.vpc_id
  subnet_ids       = var.private_subnet_ids
  egress_cidrs     = local.egress_cidrs
  kms_key_arn      = module.observability.kms_key_arn

  egress_prefix_list_ids = concat([data.aws_ec2_managed_prefix_list.s3.id], data.aws_ec2_managed_prefix_list.dynamodb[*].id)
}

# A processor whose store stalls (ClickHouse hung, failing, or refusing it): the age of the
# oldest row it holds unstored climbs (pitboss_processor_unstored_seconds, set every second;
# docs/processor.md, "Health"). Missing data is breaching: no processor reports at all.
resource "aws_cloudwatch_metric_alarm" "processor_stalled" {
  for_each          = toset(local.processor_read)
  alarm_name        = "${var.name}-processor-stalled-${each.key}"
  alarm_description = "The processor has held rows of ${each.key} unstored for over 5 minutes, or reports nothing: its store hangs or fails (its /readyz says why)."
  namespace         = "Pitboss"
  metric_name       = "pitboss_processor_unstored_seconds"
  # The dimensions the ADOT sidecar gives this metric: its scrape job (the service) and topic.
  dimensions          = { "service.name" = module.processor.service_name, topic = each.key }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  threshold           = 300
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = var.alarm_topic_arns
  ok_actions          = var.alarm_topic_arns
}

data "aws_iam_policy_document" "gateway" {
  dynamic "statement" {
    for_each = local.kinesis ? [1] : []
    content {
      sid       = "ReadLivePath"
      actions   = ["kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords"]
      resources = [local.streams["alerts"], local.streams["pushes"], local.streams["alert_acks"], local.streams["presence"]]
    }
  }
  dynamic "statement" {
    for_each = local.kinesis ? [1] : []
    content {
      sid = "PublishAcksOperatorPushesAndReceipts"
      # ListShards: the bus lists a stream's shards before it publishes (deliveries is not
      # read, so the statement above does not cover it).
      actions   = ["kinesis:PutRecord", "kinesis:PutRecords", "kinesis:ListShards"]
      resources = [local.streams["alert_acks"], local.streams["pushes"], local.streams["deliveries"], local.streams["presence"]]
    }
  }
  dynamic "statement" {
    for_each = local.kinesis ? [1] : []
    content {
      sid       = "StreamKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [module.observability.kms_key_arn]
    }
  }
}

module "gateway" {
  source             = "../../modules/service"
  name               = "${var.name}-gateway"
  image              = var.image
  ecr_repository_arn = var.ecr_repository_arn
  adot_image         = var.adot_image
  # The gateway reads its HS256 secret from a file: the task writes it (mode 600) from the
  # secret environment variable before starting.
  entry_point = ["/bin/sh", "-c"]
  command     = ["umask 077 && printf '%s' \"$PITBOSS_GATEWAY_JWT_SECRET\" > /tmp/jwt && exec pitboss gateway --jwt-secret-file /tmp/jwt"]
  port        = 8081
  admin_port  = 9467
  environment = merge(local.bus_env, {
    PITBOSS_GATEWAY_LISTEN       = "0.0.0.0:8081"
    PITBOSS_GATEWAY_ADMIN_LISTEN = "0.0.0.0:9467"
  }, local.console_stats ? { PITBOSS_CLICKHOUSE_DATABASE = var.clickhouse_database } : {})
  secrets = merge(local.bus_secrets, { PITBOSS_GATEWAY_JWT_SECRET = aws_secretsmanager_secret.gateway_jwt.arn },
  local.console_stats ? { PITBOSS_GATEWAY_STATS_CLICKHOUSE_URL = aws_secretsmanager_secret.clickhouse_stats_url[0].arn } : {})
  task_policy_json       = data.aws_iam_policy_document.gateway.json
  desired_count          = var.gateway_count
  cpu                    = 1024
  memory_mb              = 4096
  cluster_arn            = aws_ecs_cluster.pitboss.arn
  vpc_id                 = var.vpc_id
  subnet_ids             = var.private_subnet_ids
  egress_cidrs           = local.console_stats ? local.egress_cidrs : [var.vpc_cidr]
  egress_prefix_list_ids = [data.aws_ec2_managed_prefix_list.s3.id]
  kms_key_arn            = module.observability.kms_key_arn
  drain_timeout_seconds  = 10
  load_balancer = {
    public_subnet_ids    = var.public_subnet_ids
    certificate_arn      = var.certificate_arn
    ingress_cidrs        = var.client_cidrs
    idle_timeout_seconds = var.gateway_idle_timeout_seconds
    access_logs_bucket   = var.access_logs_bucket
  }
}

# The rules engine as a service (antifraud_runtime = "ecs", bus = "msk"; checks.tf): one task
# runs the group, the other stands by until it leaves (docs/rules.md, "One engine per group"),
# and the state is mirrored to the compacted topic antifraud_state, so a task replaced on an
# empty disk (a deployment, a lost host) starts from the windows of the one it replaces. No AWS
# call: MSK's SASL/SCRAM settings come in PITBOSS_KAFKA_OPTIONS, as for the processor.
# One service per shard (antifraud_shards): shard i of N owns part of the rules' keys; each
# service runs two tasks, one active and one standing by.
module "antifraud_engine" {
  count              = local.engine_on_ecs ? var.antifraud_shards : 0
  source             = "../../modules/service"
  name               = var.antifraud_shards == 1 ? "${var.name}-engine" : "${var.name}-engine-${count.index}"
  image              = var.image
  ecr_repository_arn = var.ecr_repository_arn
  adot_image         = var.adot_image
  entry_point        = ["/bin/sh", "-c"]
  command            = ["pitboss topics && exec pitboss antifraud"]
  admin_port         = 9466
  environment = merge(local.bus_env, local.topics_env, {
    PITBOSS_ANTIFRAUD_ADMIN_LISTEN = "0.0.0.0:9466"
    PITBOSS_ANTIFRAUD_SHARD        = "${count.index}/${var.antifraud_shards}"
    }, var.antifraud_start_at == "" ? {} : {
    PITBOSS_ANTIFRAUD_START_AT = var.antifraud_start_at
  })
  secrets       = local.bus_secrets
  desired_count = 2
  # Memory bounds the engine (about 26 KB per tracked player); one core does 450–550k events/s.
  # The vCPUs are those Fargate requires for the memory.
  cpu = (var.antifraud_memory_mb <= 16384 ? 2048 : var.antifraud_memory_mb <= 30720 ? 4096
  : var.antifraud_memory_mb <= 61440 ? 8192 : 16384)
  memory_mb = var.antifraud_memory_mb
  # The state file (snapshot and batch log) is about the size of the windows in memory.
  ephemeral_storage_gib  = min(200, max(21, 2 * ceil(var.antifraud_memory_mb / 1024)))
  cluster_arn            = aws_ecs_cluster.pitboss.arn
  vpc_id                 = var.vpc_id
  subnet_ids             = var.private_subnet_ids
  egress_cidrs           = [var.vpc_cidr]
  egress_prefix_list_ids = [data.aws_ec2_managed_prefix_list.s3.id]
  kms_key_arn            = module.observability.kms_key_arn
}

# What the Lambda's on-failure queue alarm stands for, for the engine on ECS: no task running
# (Container Insights; a stand-by counts as running), and events it could not evaluate (its
# dead letters, from the admin /metrics the ADOT sidecar publishes).
resource "aws_cloudwatch_metric_alarm" "engine_not_running" {
  count               = local.engine_on_ecs ? var.antifraud_shards : 0
  alarm_name          = var.antifraud_shards == 1 ? "${var.name}-antifraud-engine-down" : "${var.name}-antifraud-engine-${count.index}-down"
  alarm_description   = "No rules engine task runs${var.antifraud_shards == 1 ? "" : " for shard ${count.index}"}: no alerts or pushes are raised${var.antifraud_shards == 1 ? "" : " for its keys"} (docs/deploy.md)."
  namespace           = "ECS/ContainerInsights"
  metric_name         = "RunningTaskCount"
  dimensions          = { ClusterName = aws_ecs_cluster.pitboss.name, ServiceName = module.antifraud_engine[count.index].service_name }
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 3
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = var.alarm_topic_arns
  ok_actions          = var.alarm_topic_arns
}

resource "aws_cloudwatch_metric_alarm" "engine_dead_letters" {
  count             = local.engine_on_ecs ? var.antifraud_shards : 0
  alarm_name        = var.antifraud_shards == 1 ? "${var.name}-antifraud-dead-letters" : "${var.name}-antifraud-engine-${count.index}-dead-letters"
  alarm_description = "The rules engine${var.antifraud_shards == 1 ? "" : " of shard ${count.index}"} sent events it could not evaluate to antifraud_dead_letter."
  namespace         = "Pitboss"
  metric_name       = "pitboss_antifraud_dead_letters_total"
  # The one dimension the ADOT sidecar gives this metric: its scrape job, the service's name.
  dimensions          = { "service.name" = module.antifraud_engine[count.index].service_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_topic_arns
}
