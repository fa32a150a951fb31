output "stream_arns" {
  description = "Kinesis stream ARN by topic (empty for MSK)."
  value       = { for t, s in aws_kinesis_stream.topic : t => s.arn }
}

output "lease_table_arn" {
  description = "ARN of the Kinesis bus's DynamoDB lease table (null for MSK)."
  value       = try(aws_dynamodb_table.leases[0].arn, null)
}

output "lease_table_name" {
  description = "Name of that table."
  value       = try(aws_dynamodb_table.leases[0].name, null)
}

output "msk_cluster_arn" {
  description = "MSK cluster ARN (null for Kinesis)."
  value       = try(aws_msk_cluster.this[0].arn, null)
}

output "kafka_bootstrap" {
  description = "SASL/SCRAM bootstrap brokers (PITBOSS_KAFKA_BOOTSTRAP; null for Kinesis)."
  value       = try(aws_msk_cluster.this[0].bootstrap_brokers_sasl_scram, null)
}

output "kafka_options_secret_arn" {
  description = "Secrets Manager ARN of PITBOSS_KAFKA_OPTIONS (null for Kinesis)."
  value       = try(aws_secretsmanager_secret.kafka_options[0].arn, null)
}

output "kafka_options_version" {
  description = "Version id of the kafka-options secret's current value (null for Kinesis): changes with the password."
  value       = try(aws_secretsmanager_secret_version.kafka_options[0].version_id, null)
}

output "scram_secret_arn" {
  description = "ARN of the AmazonMSK_* SCRAM secret (null for Kinesis)."
  value       = try(aws_secretsmanager_secret.scram[0].arn, null)
}

