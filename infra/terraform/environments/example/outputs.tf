output "ingest_url" {
  description = "POST events here: <url>/v1/events (Authorization: Bearer <tenant API key>)."
  value       = module.ingest.api_endpoint
}

output "gateway_host" {
  description = "The gateway's ALB: point the certificate's host name at it (CNAME), then wss://<host>/v1/ws."
  value       = module.gateway.load_balancer_dns
}

output "antifraud_on_failure_queue" {
  description = "SQS queue of events the antifraud Lambda gave up on (null with antifraud_runtime = \"ecs\": the engine's dead letters go to the antifraud_dead_letter topic)."
  value       = one(module.antifraud[*].on_failure_queue_url)
}

output "antifraud_state_table" {
  description = "DynamoDB table of the antifraud Lambda's state (per-key windows; deletion protection on); null with antifraud_runtime = \"ecs\"."
  value       = one(module.antifraud[*].state_table_name)
}

output "antifraud_engine" {
  description = "The rules engine's ECS services, one per shard in shard order (antifraud_runtime = \"ecs\"; empty with the Lambda)."
  value       = module.antifraud_engine[*].service_name
}

output "time_to_notify_alarms" {
  description = "CloudWatch alarms on the 10 s objective."
  value       = module.observability.time_to_notify_alarms
}

output "kafka_bootstrap" {
  description = "MSK brokers (bus = msk)."
  value       = module.stream.kafka_bootstrap
}

output "lease_table" {
  description = "DynamoDB lease table of the Kinesis bus (bus = kinesis)."
  value       = module.stream.lease_table_name
}

output "grafana_url" {
  description = "Where the analysts' dashboards live (input, echoed for the runbook)."
  value       = var.grafana_url
}

output "log_groups" {
  description = "CloudWatch log groups of the ECS services."
  value = merge({ processor = module.processor.log_group, gateway = module.gateway.log_group },
  { for i, m in module.antifraud_engine : (var.antifraud_shards == 1 ? "antifraud_engine" : "antifraud_engine_${i}") => m.log_group })
}

output "processor" {
  description = "The processor's ECS service (it reads Kinesis or MSK, whichever var.bus is)."
  value       = module.processor.service_name
}
