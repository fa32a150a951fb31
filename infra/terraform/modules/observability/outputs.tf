output "kms_key_arn" {
  description = "The customer managed key."
  value       = aws_kms_key.pitboss.arn
}

output "time_to_notify_alarms" {
  description = "Alarm names by message kind."
  value       = { for k, a in aws_cloudwatch_metric_alarm.time_to_notify : k => a.alarm_name }
}
