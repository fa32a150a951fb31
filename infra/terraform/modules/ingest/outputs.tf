output "api_endpoint" {
  description = "Base URL of the ingest API (POST /v1/events)."
  value       = aws_apigatewayv2_stage.default.invoke_url
}

output "function_name" {
  description = "The ingest Lambda."
  value       = module.function.function_name
}

output "security_group_id" {
  description = "The function's security group (allowed into MSK)."
  value       = module.function.security_group_id
}
