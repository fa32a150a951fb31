variable "name" {
  description = "Prefix of the key alias and the alarms."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must be 2-31 characters of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the services' metrics sidecars."
  type        = string
  default     = "Pitboss"
}

variable "time_to_notify_within_objective_ratio" {
  description = "The objective: this share of notifications delivered within 10 s (the owner's floor: 0.95). The alarm fires when the late share (pitboss_gateway_messages_late_total over pitboss_gateway_messages_delivered_total) stays above 1 minus it for 5 minutes."
  type        = number
  default     = 0.95
  validation {
    condition     = var.time_to_notify_within_objective_ratio >= 0.95 && var.time_to_notify_within_objective_ratio < 1
    error_message = "time_to_notify_within_objective_ratio must be at least 0.95 (the owner's floor) and below 1."
  }
}

variable "alarm_topic_arns" {
  description = "SNS topics notified when an alarm fires."
  type        = list(string)
  validation {
    condition     = length(var.alarm_topic_arns) > 0 && alltrue([for a in var.alarm_topic_arns : can(regex("^arn:aws[a-z-]*:sns:", a))])
    error_message = "alarm_topic_arns must list at least one SNS topic ARN: an alarm nobody hears is no alarm."
  }
}

variable "antifraud_failure_queue_name" {
  description = "Name of the antifraud on-failure SQS queue (null: no alarm)."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags of every resource."
  type        = map(string)
  default     = {}
}
