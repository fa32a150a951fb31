variable "name" {
  description = "Function, role and queue name."
  type        = string
  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-_]{1,63}$", var.name))
    error_message = "name must be 2-64 characters of letters, digits, '-' and '_'."
  }
}

variable "lambda_zip" {
  description = "Path of the antifraud Lambda zip (bootstrap at its root, provided.al2023): dist/lambda/antifraud.zip from scripts/lambda-zip.sh."
  type        = string
  validation {
    condition     = can(regex("\\.zip$", var.lambda_zip)) && fileexists(var.lambda_zip)
    error_message = "lambda_zip must name an existing .zip file with the antifraud Lambda's bootstrap (run scripts/lambda-zip.sh)."
  }
}

variable "architecture" {
  description = "x86_64 or arm64."
  type        = string
  default     = "x86_64"
  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "memory_mb" {
  description = "Lambda memory."
  type        = number
  default     = 1024
  validation {
    condition     = var.memory_mb >= 128 && var.memory_mb <= 10240
    error_message = "memory_mb must be between 128 and 10240."
  }
}

variable "reserved_concurrency" {
  description = "Concurrent executions reserved for the rules engine (one per shard and parallelization slot at most)."
  type        = number
  default     = 100
  validation {
    condition     = var.reserved_concurrency >= 1
    error_message = "reserved_concurrency must be at least 1."
  }
}

variable "bus" {
  description = "kinesis or kafka (MSK)."
  type        = string
  validation {
    condition     = contains(["kinesis", "kafka"], var.bus)
    error_message = "bus must be kinesis or kafka."
  }
}

variable "events_stream_arn" {
  description = "The events stream (bus = kinesis)."
  type        = string
  default     = null
}

variable "overflow_stream_arn" {
  description = "The events_overflow stream, where ingest moves a hot player's excess (bus = kinesis)."
  type        = string
  default     = null
}

variable "output_stream_arns" {
  description = "The alerts, pushes and antifraud_dead_letter streams (bus = kinesis)."
  type        = list(string)
  default     = []
}

variable "msk_cluster_arn" {
  description = "The MSK cluster (bus = kafka)."
  type        = string
  default     = null
}

variable "msk_scram_secret_arn" {
  description = "The AmazonMSK_* SCRAM secret (bus = kafka)."
  type        = string
  default     = null
}

variable "kafka_bootstrap" {
  description = "MSK bootstrap brokers (bus = kafka)."
  type        = string
  default     = null
}

variable "kafka_options_secret_arn" {
  description = "Secrets Manager secret holding the librdkafka options for MSK (bus = kafka: SASL/SCRAM to publish alerts and pushes), read by the function at start (PITBOSS_KAFKA_OPTIONS_SECRET): the password never sits in its environment. Encrypted with kms_key_arn."
  type        = string
  default     = null
  validation {
    condition     = var.kafka_options_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:", var.kafka_options_secret_arn))
    error_message = "kafka_options_secret_arn must be a Secrets Manager secret ARN (or null for Kinesis)."
  }
}

variable "kafka_options_version" {
  description = "Version id of that secret's current value (the stream module's kafka_options_version): set as PITBOSS_KAFKA_OPTIONS_VERSION, so a changed password restarts the function's instances. null: not set."
  type        = string
  default     = null
}

variable "state_table_name" {
  description = "DynamoDB table of the rules engine's state (PITBOSS_STATE_TABLE); null for \"<name>-state\"."
  type        = string
  default     = null
  validation {
    condition     = var.state_table_name == null || can(regex("^[A-Za-z0-9_.-]{3,255}$", var.state_table_name))
    error_message = "state_table_name must be null or 3-255 characters of A-Z, a-z, 0-9, '_', '-', '.'."
  }
}

variable "state_table_deletion_protection" {
  description = "Deletion protection of the state table (its open windows are lost with it). Turn off only to destroy the environment."
  type        = bool
  default     = true
  validation {
    # null would leave the provider's default, which is off.
    condition     = var.state_table_deletion_protection != null
    error_message = "state_table_deletion_protection must be true or false."
  }
}

variable "starting_position" {
  description = "Where a new mapping starts: TRIM_HORIZON (everything retained) or LATEST."
  type        = string
  default     = "TRIM_HORIZON"
  validation {
    condition     = contains(["TRIM_HORIZON", "LATEST"], var.starting_position)
    error_message = "starting_position must be TRIM_HORIZON or LATEST."
  }
}

variable "batch_size" {
  description = "Records per invocation."
  type        = number
  default     = 500
  validation {
    condition     = var.batch_size >= 1 && var.batch_size <= 10000
    error_message = "batch_size must be between 1 and 10000."
  }
}

variable "maximum_retry_attempts" {
  description = "Retries of a failing record before it goes to the on-failure queue (Kinesis and MSK)."
  type        = number
  default     = 10
  validation {
    condition     = var.maximum_retry_attempts >= 0 && var.maximum_retry_attempts <= 10000
    error_message = "maximum_retry_attempts must be between 0 and 10000."
  }
}

variable "maximum_record_age_seconds" {
  description = "A record older than this goes to the on-failure queue (Kinesis and MSK; 60-604800)."
  type        = number
  default     = 3600
  validation {
    condition     = var.maximum_record_age_seconds >= 60 && var.maximum_record_age_seconds <= 604800
    error_message = "maximum_record_age_seconds must be between 60 and 604800."
  }
}

variable "kms_key_arn" {
  description = "KMS key for logs, the queue, the state table and the environment."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "vpc_id" {
  description = "VPC the function runs in."
  type        = string
  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "vpc_cidr" {
  description = "CIDR of that VPC."
  type        = string
  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0))
    error_message = "vpc_cidr must be a CIDR block."
  }
}

variable "subnet_ids" {
  description = "Private subnets."
  type        = list(string)
  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "subnet_ids must list at least two private subnets."
  }
}

variable "log_retention_days" {
  description = "CloudWatch retention."
  type        = number
  default     = 365
}

variable "tags" {
  description = "Tags of every resource."
  type        = map(string)
  default     = {}
}

variable "msk_minimum_pollers" {
  description = "MSK: the fewest event pollers of each mapping (provisioned mode, which Kafka's error handling controls need; about 5 MB/s a poller)."
  type        = number
  default     = 1
  validation {
    condition     = var.msk_minimum_pollers >= 1 && var.msk_minimum_pollers <= 200
    error_message = "msk_minimum_pollers must be between 1 and 200."
  }
}

variable "msk_maximum_pollers" {
  description = "MSK: the most event pollers of each mapping (provisioned mode), at least msk_minimum_pollers."
  type        = number
  default     = 4
  validation {
    condition     = var.msk_maximum_pollers >= 1 && var.msk_maximum_pollers <= 2000
    error_message = "msk_maximum_pollers must be between 1 and 2000."
  }
}
