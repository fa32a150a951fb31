variable "name" {
  description = "Function, role, security group and log group name."
  type        = string
  validation {
    condition     = can(regex("^[a-zA-Z][a-zA-Z0-9-_]{1,63}$", var.name))
    error_message = "name must be 2-64 characters of letters, digits, '-' and '_'."
  }
}

variable "zip" {
  description = "Path of the zip with `bootstrap` at its root (scripts/lambda-zip.sh)."
  type        = string
  validation {
    condition     = can(regex("\\.zip$", var.zip)) && fileexists(var.zip)
    error_message = "zip must name an existing .zip file with the function's bootstrap."
  }
}

variable "architecture" {
  description = "x86_64 or arm64 (LAMBDA_ARCH of scripts/lambda-zip.sh)."
  type        = string
  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "memory_mb" {
  description = "Lambda memory (CPU grows with it)."
  type        = number
  validation {
    condition     = var.memory_mb >= 128 && var.memory_mb <= 10240
    error_message = "memory_mb must be between 128 and 10240."
  }
}

variable "timeout_seconds" {
  description = "Invocation timeout."
  type        = number
  validation {
    condition     = var.timeout_seconds >= 1 && var.timeout_seconds <= 900
    error_message = "timeout_seconds must be between 1 and 900."
  }
}

variable "reserved_concurrency" {
  description = "Concurrent executions reserved (and capped) for the function."
  type        = number
  validation {
    condition     = var.reserved_concurrency >= 1
    error_message = "reserved_concurrency must be at least 1."
  }
}

variable "environment" {
  description = "Environment variables (encrypted with kms_key_arn)."
  type        = map(string)
  validation {
    condition     = alltrue([for k in keys(var.environment) : can(regex("^[A-Z][A-Z0-9_]*$", k))]) && !contains(keys(var.environment), "AWS_REGION")
    error_message = "environment keys must be upper-case variable names, and AWS_REGION is reserved by Lambda."
  }
}

variable "policy_json" {
  description = "IAM policy document (JSON) of what the function itself may do."
  type        = string
  validation {
    condition     = can(jsondecode(var.policy_json))
    error_message = "policy_json must be a JSON policy document."
  }
}

variable "kms_key_arn" {
  description = "KMS key for the environment and the logs."
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
  description = "Private subnets (with VPC endpoints or NAT for AWS APIs)."
  type        = list(string)
  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "subnet_ids must list at least two private subnets."
  }
}

variable "egress_prefix_list_ids" {
  description = "Managed prefix lists (pl-...) the function may also reach on 443, e.g. DynamoDB's for its gateway endpoint."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for p in var.egress_prefix_list_ids : can(regex("^pl-[0-9a-f]+$", p))])
    error_message = "egress_prefix_list_ids must be prefix list ids (pl-...)."
  }
}

variable "log_retention_days" {
  description = "CloudWatch retention."
  type        = number
  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a CloudWatch retention value (e.g. 30, 90, 365)."
  }
}

variable "tags" {
  description = "Tags of every resource."
  type        = map(string)
}
