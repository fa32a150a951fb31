# The bus on AWS: Kinesis Data Streams (provisioned shards) or Amazon MSK, chosen by `kind`.
# Kinesis: one stream per topic, KMS-encrypted, plus the DynamoDB lease table the Pitboss
# Kinesis bus coordinates its consumer groups with (crates/bus/src/kinesis/leases.rs:
# pk/sk strings, pay per request). MSK: one cluster (3 brokers, TLS, SASL/SCRAM) whose
# credentials live in Secrets Manager.

locals {
  kinesis = var.kind == "kinesis"
  msk     = var.kind == "msk"
}

# Provisioned, not on-demand: the Kinesis bus pairs shard p of `events` with shard p of its
# companion `events_overflow` (one player's records land on the same index of both), so both
# need the same, fixed shard count; an on-demand stream splits its shards by itself, each
# stream on its own, and the bus does not follow splits yet (docs/bus.md). Resharding is an
# operator's step (docs/deploy.md, sizing). The other streams carry a small share of the
# traffic: `other_shards` each.
resource "aws_kinesis_stream" "topic" {
  for_each         = local.kinesis ? toset(var.topics) : toset([])
  name             = each.key # the topic names the Pitboss binaries use by default
  retention_period = var.retention_hours
  encryption_type  = "KMS"
  kms_key_id       = var.kms_key_arn
  shard_count      = contains(["events", "events_overflow"], each.key) ? var.partitions : var.other_shards

  stream_mode_details {
    stream_mode = "PROVISIONED"
  }

  tags = var.tags
}

resource "aws_dynamodb_table" "leases" {
  count        = local.kinesis ? 1 : 0
  name         = var.lease_table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"

  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "sk"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  tags = var.tags
}

resource "aws_security_group" "msk" {
  count       = local.msk ? 1 : 0
  name        = "${var.name}-msk"
  description = "Pitboss MSK brokers: SASL/SCRAM over TLS from the Pitboss services only"
  vpc_id      = var.vpc_id

  ingress {
    description     = "Kafka SASL/SCRAM over TLS"
    from_port       = 9096
    to_port         = 9096
    protocol        = "tcp"
    security_groups = var.client_security_group_ids
  }

  # A Lambda trigger on MSK (the antifraud function's event source mapping) polls the brokers
  # from network interfaces in the cluster's own subnets and security group.
  ingress {
    description = "Kafka SASL/SCRAM over TLS from the Lambda event source pollers"
    from_port   = 9096
    to_port     = 9096
    protocol    = "tcp"
    self        = true
  }

  egress {
    description = "Replication between brokers inside the VPC"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = [var.vpc_cidr]
  }

  tags = var.tags
}

resource "aws_msk_configuration" "this" {
  count          = local.msk ? 1 : 0
  name           = "${var.name}-kafka"
  kafka_versions = [var.msk_kafka_version]

  server_properties = <<-PROPS
    auto.create.topics.enable=false
    default.replication.factor=3
    min.insync.replicas=2
    num.partitions=${var.partitions}
    unclean.leader.election.enable=false
  PROPS
}

resource "aws_cloudwatch_log_group" "msk" {
  count             = local.msk ? 1 : 0
  name              = "/pitboss/${var.name}/msk"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_msk_cluster" "this" {
  count                  = local.msk ? 1 : 0
  cluster_name           = var.name
  kafka_version          = var.msk_kafka_version
  number_of_broker_nodes = 3

  broker_node_group_info {
    instance_type   = var.msk_instance_type
    client_subnets  = var.subnet_ids
    security_groups = [aws_security_group.msk[0].id]
    storage_info {
      ebs_storage_info {
        volume_size = var.msk_volume_gb
      }
    }
  }

  configuration_info {
    arn      = aws_msk_configuration.this[0].arn
    revision = aws_msk_configuration.this[0].latest_revision
  }

  client_authentication {
    sasl {
      scram = true
    }
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = var.kms_key_arn
    encryption_in_transit {
      client_broker = "TLS"
      in_cluster    = true
    }
  }

  enhanced_monitoring = "PER_TOPIC_PER_PARTITION"

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.msk[0].name
      }
    }
  }

  tags = var.tags
}

# MSK SCRAM secrets must be named AmazonMSK_* and encrypted with a customer managed key.
resource "random_password" "scram" {
  count   = local.msk ? 1 : 0
  length  = 40
  special = false
}

resource "aws_secretsmanager_secret" "scram" {
  count                   = local.msk ? 1 : 0
  name                    = "AmazonMSK_${var.name}_pitboss"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 7
  tags                    = var.tags
  #checkov:skip=CKV2_AWS_57:MSK SCRAM credentials cannot rotate automatically; rotate by changing random_password.scram's keepers.
}

resource "aws_secretsmanager_secret_version" "scram" {
  count     = local.msk ? 1 : 0
  secret_id = aws_secretsmanager_secret.scram[0].id
  secret_string = jsonencode({
    username = "pitboss"
    password = random_password.scram[0].result
  })
}

resource "aws_msk_scram_secret_association" "this" {
  count           = local.msk ? 1 : 0
  cluster_arn     = aws_msk_cluster.this[0].arn
  secret_arn_list = [aws_secretsmanager_secret.scram[0].arn]
  depends_on      = [aws_secretsmanager_secret_version.scram]
}

# librdkafka settings for MSK (PITBOSS_KAFKA_OPTIONS), kept in Secrets Manager: the services
# get them as a secret environment variable, never in plain task definitions.
resource "aws_secretsmanager_secret" "kafka_options" {
  count                   = local.msk ? 1 : 0
  name                    = "${var.name}/kafka-options"
  kms_key_id              = var.kms_key_arn
  recovery_window_in_days = 7
  tags                    = var.tags
  #checkov:skip=CKV2_AWS_57:Derived from the SCRAM secret above; it changes when that one does.
}

resource "aws_secretsmanager_secret_version" "kafka_options" {
  count     = local.msk ? 1 : 0
  secret_id = aws_secretsmanager_secret.kafka_options[0].id
  secret_string = join(",", [
    "security.protocol=SASL_SSL",
    "sasl.mechanisms=SCRAM-SHA-512",
    "sasl.username=pitboss",
    "sasl.password=${random_password.scram[0].result}",
  ])
}
