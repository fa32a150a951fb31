# What the other modules share for operations: the customer managed KMS key (logs, streams,
# secrets, queues) and the alarms on the time-to-notify objective (95% of notifications
# within 10 s: the share of messages the gateways delivered later than 10 s, from the counters
# their metrics sidecar publishes to CloudWatch, per message kind) and on the rules engine's
# failure queue.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

data "aws_iam_policy_document" "key" {
  #checkov:skip=CKV_AWS_109:The key policy's root statement delegates to IAM as AWS's default does (with its actions listed); IAM policies of this deployment grant only kms:Decrypt/GenerateDataKey on this key.
  #checkov:skip=CKV_AWS_111:Same statement: a key policy's Resource "*" means this key only.
  #checkov:skip=CKV_AWS_356:Same statement: a key policy's Resource "*" means this key only.
  statement {
    sid = "AccountAdministers"
    # The key's administration and use, listed (no wildcard actions); IAM policies decide who.
    actions = [
      "kms:CancelKeyDeletion", "kms:CreateAlias", "kms:CreateGrant", "kms:Decrypt", "kms:DeleteAlias",
      "kms:DescribeKey", "kms:DisableKey", "kms:DisableKeyRotation", "kms:EnableKey", "kms:EnableKeyRotation",
      "kms:Encrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:GetKeyPolicy",
      "kms:GetKeyRotationStatus", "kms:ListAliases", "kms:ListGrants", "kms:ListKeyPolicies",
      "kms:ListResourceTags", "kms:PutKeyPolicy", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:RetireGrant",
      "kms:RevokeGrant", "kms:ScheduleKeyDeletion", "kms:TagResource", "kms:UntagResource",
      "kms:UpdateAlias", "kms:UpdateKeyDescription",
    ]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  statement {
    sid = "CloudWatchLogsEncrypt"
    actions = [
      "kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo",
      "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey",
    ]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${data.aws_region.current.region}:${data.aws_caller_identity.current.account_id}:log-group:*"]
    }
  }
}

resource "aws_kms_key" "pitboss" {
  description             = "Pitboss ${var.name}: logs, streams, tables, queues, secrets"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = var.tags
}

resource "aws_kms_alias" "pitboss" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.pitboss.key_id
}

# The gateways count every message written live (pitboss_gateway_messages_delivered_total) and
# those written more than 10 s after their event was received (..._late_total), per kind; the
# ADOT sidecar publishes exactly these with the one dimension `kind` (modules/service,
# metric_declarations), summed over the tasks. A ratio of counters needs no percentile, which
# CloudWatch cannot take from the histograms the collector sends (as sum and count only).
resource "aws_cloudwatch_metric_alarm" "time_to_notify" {
  for_each            = toset(["push", "alert"])
  alarm_name          = "${var.name}-time-to-notify-${each.key}"
  alarm_description   = "More than ${format("%.4g", (1 - var.time_to_notify_within_objective_ratio) * 100)} % of ${each.key} messages delivered later than 10 s for 5 minutes (docs/deploy.md)."
  evaluation_periods  = 5
  datapoints_to_alarm = 5
  threshold           = 1 - var.time_to_notify_within_objective_ratio
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_topic_arns
  ok_actions          = var.alarm_topic_arns
  tags                = var.tags

  metric_query {
    id          = "late_share"
    expression  = "IF(delivered > 0, late / delivered, 0)"
    label       = "share of ${each.key} messages later than 10 s"
    return_data = true
  }
  metric_query {
    id = "late"
    metric {
      namespace   = var.metrics_namespace
      metric_name = "pitboss_gateway_messages_late_total"
      dimensions  = { kind = each.key }
      stat        = "Sum"
      period      = 60
    }
  }
  metric_query {
    id = "delivered"
    metric {
      namespace   = var.metrics_namespace
      metric_name = "pitboss_gateway_messages_delivered_total"
      dimensions  = { kind = each.key }
      stat        = "Sum"
      period      = 60
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "antifraud_failures" {
  count               = var.antifraud_failure_queue_name == null ? 0 : 1
  alarm_name          = "${var.name}-antifraud-on-failure"
  alarm_description   = "Events the rules engine gave up on are waiting in its on-failure queue."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = var.antifraud_failure_queue_name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_topic_arns
  tags                = var.tags
}
