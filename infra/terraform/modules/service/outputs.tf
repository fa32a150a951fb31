output "service_name" {
  description = "The ECS service."
  value       = aws_ecs_service.service.name
}

output "security_group_id" {
  description = "The tasks' security group."
  value       = aws_security_group.service.id
}

output "load_balancer_dns" {
  description = "DNS name of the ALB (null without one)."
  value       = try(aws_lb.service[0].dns_name, null)
}

output "log_group" {
  description = "CloudWatch log group of the service."
  value       = aws_cloudwatch_log_group.service.name
}
