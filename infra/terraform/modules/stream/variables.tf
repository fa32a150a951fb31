variable "name" {
  description = "Prefix of every stream, table and cluster name."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name))
    error_message = "name must be 2-31 characters of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "kind" {
  description = "The bus: \"kinesis\" (provisioned streams + DynamoDB leases) or \"msk\" (Amazon MSK)."
  type        = string
  validation {
    condition     = contains(["kinesis", "msk"], var.kind)
    error_message = "kind must be \"kinesis\" or \"msk\"."
  }
}

variable "topics" {
  description = "Topics, one Kinesis stream each under the same name: events, its overflow, the live path and the dead letters."
  type        = list(string)
  validation {
    condition     = length(var.topics) > 0 && alltrue([for t in var.topics : can(regex("^[a-z][a-z0-9_]{0,100}$", t))])
    error_message = "topics must be a non-empty list of names of a-z, 0-9 and '_'."
  }
}

variable "retention_hours" {
  description = "Kinesis retention (24-8760 hours); consumers replay from here after an outage."
  type        = number
  default     = 168
  validation {
    condition     = var.retention_hours >= 24 && var.retention_hours <= 8760
    error_message = "retention_hours must be between 24 and 8760."
  }
}

variable "lease_table_name" {
  description = "DynamoDB lease table of the Kinesis bus (the bus's default is pitboss-leases; the example passes it to every task as PITBOSS_KINESIS_LEASE_TABLE)."
  type        = string
  default     = "pitboss-leases"
  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]{3,255}$", var.lease_table_name))
    error_message = "lease_table_name must be 3-255 characters of A-Z, a-z, 0-9, '_', '-', '.'."
  }
}

variable "kms_key_arn" {
  description = "Customer managed KMS key for streams, table, MSK storage, logs and secrets."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "partitions" {
  description = "Partitions of an MSK topic; Kinesis: shards of events and of events_overflow (the same count: docs/bus.md). docs/deploy.md sizes them."
  type        = number
  default     = 12
  validation {
    condition     = var.partitions >= 1 && var.partitions <= 1000
    error_message = "partitions must be between 1 and 1000."
  }
}

variable "other_shards" {
  description = "Kinesis: shards of every stream but events and events_overflow (alerts, pushes, acks, dead letters)."
  type        = number
  default     = 2
  validation {
    condition     = var.other_shards >= 1 && var.other_shards <= 500
    error_message = "other_shards must be between 1 and 500."
  }
}

variable "msk_kafka_version" {
  description = "Apache Kafka version of the MSK cluster."
  type        = string
  default     = "3.9.x"
  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.([0-9]+|x)(\\.kraft)?$", var.msk_kafka_version))
    error_message = "msk_kafka_version must look like 3.9.x or 3.8.0."
  }
}

variable "msk_instance_type" {
  description = "MSK broker instance type."
  type        = string
  default     = "kafka.m7g.large"
  validation {
    condition     = can(regex("^kafka\\.", var.msk_instance_type))
    error_message = "msk_instance_type must be an MSK broker type (kafka.*)."
  }
}

variable "msk_volume_gb" {
  description = "EBS storage per MSK broker, GB."
  type        = number
  default     = 500
  validation {
    condition     = var.msk_volume_gb >= 1 && var.msk_volume_gb <= 16384
    error_message = "msk_volume_gb must be between 1 and 16384."
  }
}

variable "vpc_id" {
  description = "VPC of the MSK cluster (used when kind = \"msk\")."
  type        = string
  default     = null
}

variable "vpc_cidr" {
  description = "CIDR of that VPC (broker-to-broker traffic)."
  type        = string
  default     = "10.0.0.0/16"
  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0))
    error_message = "vpc_cidr must be a CIDR block."
  }
}

variable "subnet_ids" {
  description = "Three private subnets in three AZs for the MSK brokers (kind = \"msk\")."
  type        = list(string)
  default     = []
}

variable "client_security_group_ids" {
  description = "Security groups of the services that may connect to MSK."
  type        = list(string)
  default     = []
}

variable "log_retention_days" {
  description = "CloudWatch retention of broker logs."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags of every resource."
  type        = map(string)
  default     = {}
}
