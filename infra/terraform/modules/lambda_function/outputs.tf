output "function_name" {
  description = "The function's name."
  value       = aws_lambda_function.function.function_name
}

output "arn" {
  description = "The function's ARN."
  value       = aws_lambda_function.function.arn
}

output "invoke_arn" {
  description = "ARN API Gateway integrations invoke."
  value       = aws_lambda_function.function.invoke_arn
}

output "security_group_id" {
  description = "The function's security group."
  value       = aws_security_group.function.id
}
