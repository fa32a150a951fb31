variable "name" {
  description = "Function, role and API name."
  type        = string
  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-_]{1,63}$", var.name))
    error_message = "name must be 2-64 characters of letters, digits, '-' and '_'."
  }
}

variable "lambda_zip" {
  description = "Path of the ingest Lambda zip (bootstrap at its root): dist/lambda/ingest.zip from scripts/lambda-zip.sh."
  type        = string
  validation {
    condition     = can(regex("\\.zip$", var.lambda_zip)) && fileexists(var.lambda_zip)
    error_message = "lambda_zip must name an existing .zip file (run scripts/lambda-zip.sh)."
  }
}

variable "architecture" {
  description = "x86_64 or arm64 (LAMBDA_ARCH of scripts/lambda-zip.sh)."
  type        = string
  default     = "x86_64"
  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "memory_mb" {
  description = "Lambda memory (CPU grows with it)."
  type        = number
  default     = 1024
  validation {
    condition     = var.memory_mb >= 128 && var.memory_mb <= 10240
    error_message = "memory_mb must be between 128 and 10240."
  }
}

variable "reserved_concurrency" {
  description = "Concurrent executions reserved (and capped) for ingest."
  type        = number
  default     = 200
  validation {
    condition     = var.reserved_concurrency >= 1
    error_message = "reserved_concurrency must be at least 1."
  }
}

variable "throttle_rate" {
  description = "API Gateway steady-state requests per second."
  type        = number
  default     = 5000
  validation {
    condition     = var.throttle_rate > 0
    error_message = "throttle_rate must be positive."
  }
}

variable "throttle_burst" {
  description = "API Gateway burst of requests."
  type        = number
  default     = 10000
  validation {
    condition     = var.throttle_burst > 0
    error_message = "throttle_burst must be positive."
  }
}

variable "tenants" {
  description = "Tenants and the SHA-256 of their API keys (pitboss hash-key KEY); never the keys."
  type = list(object({
    id             = string
    api_key_sha256 = list(string)
  }))
  validation {
    condition = length(var.tenants) > 0 && alltrue([
      for t in var.tenants : length(t.id) > 0 && length(t.api_key_sha256) > 0 &&
      alltrue([for h in t.api_key_sha256 : can(regex("^[0-9a-f]{64}$", h))])
    ])
    error_message = "tenants must list at least one tenant, each with an id and api_key_sha256 entries of 64 lowercase hex digits (pitboss hash-key)."
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

variable "event_stream_arns" {
  description = "ARNs of the events and events_overflow streams (bus = kinesis)."
  type        = list(string)
  default     = []
}

variable "kafka_bootstrap" {
  description = "MSK bootstrap brokers (bus = kafka)."
  type        = string
  default     = null
}

variable "kafka_options_secret_arn" {
  description = "Secrets Manager secret holding the librdkafka options for MSK (bus = kafka: SASL/SCRAM to publish events), read by the function at start (PITBOSS_KAFKA_OPTIONS_SECRET): the password never sits in its environment. Encrypted with kms_key_arn."
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

variable "kms_key_arn" {
  description = "KMS key for the function's environment and logs."
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
  description = "Private subnets (with VPC endpoints or NAT for Kinesis)."
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
