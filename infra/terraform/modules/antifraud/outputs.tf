output "function_name" {
  description = "The antifraud Lambda."
  value       = module.function.function_name
}

output "state_table_name" {
  description = "DynamoDB table of the rules engine's state (the function's PITBOSS_STATE_TABLE)."
  value       = aws_dynamodb_table.state.name
}

output "state_table_arn" {
  description = "ARN of that table."
  value       = aws_dynamodb_table.state.arn
}

output "on_failure_queue_url" {
  description = "SQS queue receiving the records that exhausted their retries."
  value       = aws_sqs_queue.on_failure.url
}

output "security_group_id" {
  description = "The function's security group (allowed into MSK)."
  value       = module.function.security_group_id
}
