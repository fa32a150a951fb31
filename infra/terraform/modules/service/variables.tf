variable "name" {
  description = "Service name (task family, roles, log group)."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,27}$", var.name))
    error_message = "name must be 2-28 characters of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "image" {
  description = "The pitboss image, pinned by digest or tag (ECR)."
  type        = string
  validation {
    condition     = can(regex("^[^\\s]+(:[A-Za-z0-9_.-]+|@sha256:[0-9a-f]{64})$", var.image)) && !can(regex(":latest$", var.image))
    error_message = "image must carry a tag or a digest, and not :latest."
  }
}

variable "ecr_repository_arn" {
  description = "ECR repository of that image (the execution role may pull from it only)."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:ecr:", var.ecr_repository_arn))
    error_message = "ecr_repository_arn must be an ECR repository ARN."
  }
}

variable "command" {
  description = "The pitboss subcommand and its flags, e.g. [\"process\", \"--topic\", \"events\"]."
  type        = list(string)
  validation {
    condition     = length(var.command) > 0
    error_message = "command must not be empty."
  }
}

variable "entry_point" {
  description = "Entry point override (null keeps the image's /usr/local/bin/pitboss)."
  type        = list(string)
  default     = null
}

variable "port" {
  description = "Service port (null for a service without one, such as the processor)."
  type        = number
  default     = null
}

variable "admin_port" {
  description = "Admin listener port (/healthz, /readyz, /metrics): 9465 processor, 9466 antifraud, 9467 gateway."
  type        = number
  validation {
    condition     = var.admin_port >= 1024 && var.admin_port <= 65535
    error_message = "admin_port must be between 1024 and 65535."
  }
}

variable "environment" {
  description = "Plain environment variables (no secrets)."
  type        = map(string)
  default     = {}
}

variable "secrets" {
  description = "Environment variables from Secrets Manager: name => secret ARN."
  type        = map(string)
  default     = {}
  validation {
    condition     = alltrue([for arn in values(var.secrets) : can(regex("^arn:aws[a-z-]*:secretsmanager:", arn))])
    error_message = "secrets values must be Secrets Manager ARNs."
  }
}

variable "task_policy_json" {
  description = "IAM policy document (JSON) of what the process may do."
  type        = string
  default     = null
}

variable "cpu" {
  description = "Fargate CPU units (1024 = 1 vCPU)."
  type        = number
  default     = 1024
  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.cpu)
    error_message = "cpu must be a Fargate size: 256, 512, 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "memory_mb" {
  description = "Fargate memory, MB (must suit cpu)."
  type        = number
  default     = 2048
  validation {
    condition     = var.memory_mb >= 512 && var.memory_mb <= 122880
    error_message = "memory_mb must be between 512 and 122880."
  }
}

variable "ephemeral_storage_gib" {
  description = "The task's disk, GiB (null: Fargate's 20 GiB); the rules engine keeps its state file there."
  type        = number
  default     = null
  validation {
    condition     = var.ephemeral_storage_gib == null || try(var.ephemeral_storage_gib >= 21 && var.ephemeral_storage_gib <= 200, false)
    error_message = "ephemeral_storage_gib must be null or between 21 and 200."
  }
}

variable "cpu_architecture" {
  description = "X86_64 or ARM64 (the image's platform)."
  type        = string
  default     = "X86_64"
  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "desired_count" {
  description = "Tasks."
  type        = number
  default     = 2
  validation {
    condition     = var.desired_count >= 1
    error_message = "desired_count must be at least 1."
  }
}

variable "drain_timeout_seconds" {
  description = "PITBOSS_DRAIN_TIMEOUT_SECS; the container's stop timeout and the target group's deregistration delay follow it."
  type        = number
  default     = 30
  validation {
    condition     = var.drain_timeout_seconds >= 1 && var.drain_timeout_seconds <= 105
    error_message = "drain_timeout_seconds must be between 1 and 105 (Fargate stops a container after 120 s)."
  }
}

variable "cluster_arn" {
  description = "ECS cluster."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:ecs:", var.cluster_arn))
    error_message = "cluster_arn must be an ECS cluster ARN."
  }
}

variable "vpc_id" {
  description = "VPC."
  type        = string
  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC id (vpc-...)."
  }
}

variable "subnet_ids" {
  description = "Private subnets of the tasks."
  type        = list(string)
  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "subnet_ids must list at least two private subnets."
  }
}

variable "egress_cidrs" {
  description = "Where the tasks may connect (the VPC, and the ClickHouse service's addresses)."
  type        = list(string)
  validation {
    condition     = length(var.egress_cidrs) > 0 && alltrue([for c in var.egress_cidrs : can(cidrhost(c, 0))])
    error_message = "egress_cidrs must be a non-empty list of CIDR blocks."
  }
}

variable "egress_prefix_list_ids" {
  description = "Managed prefix lists (pl-...) the tasks may also reach on 443, e.g. DynamoDB's for its gateway endpoint (the processor's lease table on Kinesis)."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for p in var.egress_prefix_list_ids : can(regex("^pl-[0-9a-f]+$", p))])
    error_message = "egress_prefix_list_ids must be prefix list ids (pl-...)."
  }
}

variable "load_balancer" {
  description = "An ALB in front (gateway): public subnets, TLS certificate, client CIDRs, idle timeout, access-log bucket."
  type = object({
    public_subnet_ids    = list(string)
    certificate_arn      = string
    ingress_cidrs        = list(string)
    idle_timeout_seconds = number
    access_logs_bucket   = string
  })
  default = null
  validation {
    condition = var.load_balancer == null || (
      try(var.load_balancer.idle_timeout_seconds >= 60 && var.load_balancer.idle_timeout_seconds <= 4000, false) &&
      try(can(regex("^arn:aws[a-z-]*:acm:", var.load_balancer.certificate_arn)), false) &&
      try(length(var.load_balancer.public_subnet_ids) >= 2, false) &&
      try(length(var.load_balancer.access_logs_bucket) > 0, false)
    )
    error_message = "load_balancer needs idle_timeout_seconds between 60 and 4000 (above the gateway's 25 s pings), an ACM certificate_arn, two public_subnet_ids and an access_logs_bucket."
  }
}

variable "metrics_namespace" {
  description = "CloudWatch namespace the ADOT sidecar publishes the admin /metrics to."
  type        = string
  default     = "Pitboss"
}

variable "adot_image" {
  description = "AWS Distro for OpenTelemetry collector image (the metrics sidecar), copied into a private ECR repository of the account (public.ecr.aws/aws-observability/aws-otel-collector, docs/deploy.md): tasks in private subnets pull through ECR's VPC endpoints, which do not reach public.ecr.aws."
  type        = string
  validation {
    condition     = can(regex("^[0-9]{12}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com/[^:@]+(:[A-Za-z0-9_.-]+|@sha256:[0-9a-f]{64})$", var.adot_image)) && !can(regex(":latest$", var.adot_image))
    error_message = "adot_image must be a private ECR image reference with a tag (not latest) or a digest."
  }
}

variable "kms_key_arn" {
  description = "KMS key of the log groups and secrets."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
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
