variable "name" {
  description = "Environment name: prefix of every resource (e.g. pitboss-prod)."
  type        = string
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,19}$", var.name))
    error_message = "name must be 2-20 characters of a-z, 0-9 and '-', starting with a letter."
  }
}

variable "region" {
  description = "AWS region (e.g. eu-west-1)."
  type        = string
  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "bus" {
  description = "The bus: \"kinesis\" (provisioned streams, DynamoDB leases) or \"msk\" (Amazon MSK, 3 brokers)."
  type        = string
  validation {
    condition     = contains(["kinesis", "msk"], var.bus)
    error_message = "bus must be \"kinesis\" or \"msk\"."
  }
}

variable "partitions" {
  description = "MSK topic partitions; Kinesis: shards of events and events_overflow (docs/deploy.md: sizing)."
  type        = number
  default     = 12
  validation {
    condition     = var.partitions >= 2 && var.partitions <= 1000
    error_message = "partitions must be between 2 and 1000."
  }
}

variable "vpc_id" {
  description = "VPC (with private subnets, and VPC endpoints or NAT for AWS APIs)."
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
    error_message = "vpc_cidr must be a CIDR block such as 10.0.0.0/16."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets in three AZs (Lambdas, tasks, MSK brokers)."
  type        = list(string)
  validation {
    condition     = length(var.private_subnet_ids) >= 3 && alltrue([for s in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "private_subnet_ids must list at least three subnet ids (subnet-...), one per AZ."
  }
}

variable "public_subnet_ids" {
  description = "Public subnets of the gateway's ALB."
  type        = list(string)
  validation {
    condition     = length(var.public_subnet_ids) >= 2 && alltrue([for s in var.public_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "public_subnet_ids must list at least two subnet ids (subnet-...)."
  }
}

variable "client_cidrs" {
  description = "Who may reach the gateway's ALB (0.0.0.0/0 for game clients on the internet)."
  type        = list(string)
  validation {
    condition     = length(var.client_cidrs) > 0 && alltrue([for c in var.client_cidrs : can(cidrhost(c, 0))])
    error_message = "client_cidrs must be a non-empty list of CIDR blocks."
  }
}

variable "certificate_arn" {
  description = "ACM certificate of the gateway's host name (wss://)."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "access_logs_bucket" {
  description = "S3 bucket for the ALB's access logs (with the ELB log-delivery bucket policy)."
  type        = string
  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.access_logs_bucket))
    error_message = "access_logs_bucket must be an S3 bucket name."
  }
}

variable "gateway_idle_timeout_seconds" {
  description = "ALB idle timeout: above the gateway's 25 s WebSocket pings."
  type        = number
  default     = 120
  validation {
    condition     = var.gateway_idle_timeout_seconds >= 60 && var.gateway_idle_timeout_seconds <= 4000
    error_message = "gateway_idle_timeout_seconds must be between 60 and 4000."
  }
}

variable "image" {
  description = "The pitboss image in ECR, by tag or digest (docker build -f deploy/docker/Dockerfile)."
  type        = string
  validation {
    condition     = can(regex("^[0-9]{12}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com/[^:@]+(:[A-Za-z0-9_.-]+|@sha256:[0-9a-f]{64})$", var.image)) && !can(regex(":latest$", var.image))
    error_message = "image must be an ECR image reference with a tag (not latest) or a digest."
  }
}

variable "adot_image" {
  description = "The ADOT collector (the services' metrics sidecar) copied into this account's ECR, by tag or digest: public.ecr.aws/aws-observability/aws-otel-collector:v0.43.3 pushed to a private repository (docs/deploy.md, step 1); private subnets reach ECR through its VPC endpoints, not public.ecr.aws."
  type        = string
  validation {
    condition     = can(regex("^[0-9]{12}\\.dkr\\.ecr\\.[a-z0-9-]+\\.amazonaws\\.com/[^:@]+(:[A-Za-z0-9_.-]+|@sha256:[0-9a-f]{64})$", var.adot_image)) && !can(regex(":latest$", var.adot_image))
    error_message = "adot_image must be a private ECR image reference with a tag (not latest) or a digest."
  }
}

variable "ecr_repository_arn" {
  description = "ARN of that image's ECR repository."
  type        = string
  validation {
    condition     = can(regex("^arn:aws[a-z-]*:ecr:", var.ecr_repository_arn))
    error_message = "ecr_repository_arn must be an ECR repository ARN."
  }
}

variable "ingest_lambda_zip" {
  description = "The ingest Lambda zip: dist/lambda/ingest.zip from scripts/lambda-zip.sh."
  type        = string
  validation {
    condition     = can(regex("\\.zip$", var.ingest_lambda_zip)) && fileexists(var.ingest_lambda_zip)
    error_message = "ingest_lambda_zip must name an existing .zip (run scripts/lambda-zip.sh)."
  }
}

variable "antifraud_lambda_zip" {
  description = "The antifraud Lambda zip: dist/lambda/antifraud.zip from scripts/lambda-zip.sh (antifraud_runtime = \"lambda\"; null with \"ecs\")."
  type        = string
  default     = null
  validation {
    condition     = var.antifraud_lambda_zip == null || (can(regex("\\.zip$", var.antifraud_lambda_zip)) && try(fileexists(var.antifraud_lambda_zip), false))
    error_message = "antifraud_lambda_zip must name an existing .zip with the antifraud Lambda's bootstrap (run scripts/lambda-zip.sh)."
  }
}

variable "antifraud_runtime" {
  description = "Where the rules engine runs: \"lambda\" (the antifraud Lambda, state in DynamoDB; either bus) or \"ecs\" (pitboss antifraud on Fargate, one active task and a stand-by, state changelog on MSK; bus = \"msk\"). docs/deploy.md compares their cost."
  type        = string
  default     = "lambda"
  validation {
    condition     = contains(["lambda", "ecs"], var.antifraud_runtime)
    error_message = "antifraud_runtime must be \"lambda\" or \"ecs\"."
  }
}

variable "antifraud_memory_mb" {
  description = "Memory of each rules engine task (antifraud_runtime = \"ecs\"): about 26 KB per tracked player (docs/deploy.md, sizing). The task gets the vCPUs Fargate requires for it: 2 up to 16384, 4 up to 30720, 8 up to 61440, 16 above."
  type        = number
  default     = 16384
  validation {
    condition = var.antifraud_memory_mb >= 4096 && var.antifraud_memory_mb <= 122880 && var.antifraud_memory_mb % 1024 == 0 && (
      var.antifraud_memory_mb <= 30720 || (var.antifraud_memory_mb <= 61440 && var.antifraud_memory_mb % 4096 == 0) || var.antifraud_memory_mb % 8192 == 0
    )
    error_message = "antifraud_memory_mb must be a Fargate memory size from 4096 to 122880: a multiple of 1024 up to 30720, of 4096 up to 61440, of 8192 above."
  }
}

variable "antifraud_shards" {
  description = "Rules engines splitting the rules' keys (antifraud_runtime = \"ecs\"): one ECS service per shard, each running `pitboss antifraud --shard i/N` with a stand-by (docs/rules.md, \"Several engines\"). Each shard holds about 1/N of the windows (size antifraud_memory_mb for it); changing N starts every shard's windows empty."
  type        = number
  default     = 1
  validation {
    condition     = var.antifraud_shards >= 1 && var.antifraud_shards <= 64 && floor(var.antifraud_shards) == var.antifraud_shards
    error_message = "antifraud_shards must be a whole number from 1 to 64."
  }
}

variable "antifraud_start_at" {
  description = "RFC 3339 time (e.g. 2026-12-05T10:00:00Z) at which the rules engine's consumer groups that have committed nothing start, instead of the earliest retained event: set it to the time of a switch from the Lambda or of a change of antifraud_shards, so the new groups do not evaluate the retention again (docs/rules.md, \"Several engines\"). Groups that have committed resume at their commit whatever it says. Empty: the earliest retained event."
  type        = string
  default     = ""
  validation {
    condition     = var.antifraud_start_at == "" || can(regex("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$", var.antifraud_start_at))
    error_message = "antifraud_start_at must be empty or an RFC 3339 time such as 2026-12-05T10:00:00Z."
  }
}

variable "lambda_architecture" {
  description = "Architecture of both zips: x86_64 or arm64."
  type        = string
  default     = "x86_64"
  validation {
    condition     = contains(["x86_64", "arm64"], var.lambda_architecture)
    error_message = "lambda_architecture must be x86_64 or arm64."
  }
}

variable "tenants" {
  description = "Ingest tenants and the SHA-256 of their API keys (pitboss hash-key KEY)."
  type = list(object({
    id             = string
    api_key_sha256 = list(string)
  }))
  validation {
    condition = length(var.tenants) > 0 && alltrue([
      for t in var.tenants : can(regex("^[A-Za-z0-9._~@+-]{1,64}$", t.id)) && length(t.api_key_sha256) > 0 &&
      alltrue([for h in t.api_key_sha256 : can(regex("^[0-9a-f]{64}$", h))])
    ])
    error_message = "tenants must list at least one tenant, each id 1-64 characters of [A-Za-z0-9._~@+-] (the events' tenant_id), with api_key_sha256 entries of 64 lowercase hex digits (pitboss hash-key)."
  }
}

variable "clickhouse_url" {
  description = "ClickHouse HTTP(S) URL of the processors, with user and password in its query (https://host:8443/?user=pitboss&password=...). Stored in Secrets Manager."
  type        = string
  sensitive   = true
  validation {
    condition     = can(regex("^https?://[^/?#]+(/)?\\?(.*&)?user=[^&]+&(.*&)?password=[^&]+", var.clickhouse_url))
    error_message = "clickhouse_url must be http(s)://host:port/?user=NAME&password=SECRET."
  }
}

variable "clickhouse_stats_url" {
  description = "ClickHouse HTTP(S) URL of a read-only user (readonly = 2: it sets output settings) the edge gateway reads the operator console's figures with (https://host:8443/?user=console&password=...). Empty: the console shows the live alerts and time to notify only. Stored in Secrets Manager."
  type        = string
  sensitive   = true
  default     = ""
  validation {
    condition     = var.clickhouse_stats_url == "" || can(regex("^https?://[^/?#]+(/)?\\?(.*&)?user=[^&]+&(.*&)?password=[^&]+", var.clickhouse_stats_url))
    error_message = "clickhouse_stats_url must be empty or http(s)://host:port/?user=NAME&password=SECRET."
  }
}

variable "clickhouse_database" {
  description = "Database of the Pitboss tables."
  type        = string
  default     = "pitboss"
  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]{0,62}$", var.clickhouse_database))
    error_message = "clickhouse_database must be a ClickHouse identifier."
  }
}

variable "clickhouse_cluster" {
  description = "ClickHouse cluster for the replicated layout (ON CLUSTER; the servers also need <name>_replicas, docs/processor.md); empty for one server or ClickHouse Cloud."
  type        = string
  default     = ""
  validation {
    condition     = var.clickhouse_cluster == "" || can(regex("^[A-Za-z_][A-Za-z0-9_]{0,62}$", var.clickhouse_cluster))
    error_message = "clickhouse_cluster must be empty or a cluster name from remote_servers."
  }
}

variable "clickhouse_cidrs" {
  description = "Addresses of the ClickHouse service the processors connect to (PrivateLink endpoint or servers)."
  type        = list(string)
  validation {
    condition     = length(var.clickhouse_cidrs) > 0 && alltrue([for c in var.clickhouse_cidrs : can(cidrhost(c, 0))])
    error_message = "clickhouse_cidrs must be a non-empty list of CIDR blocks."
  }
}

variable "grafana_url" {
  description = "Amazon Managed Grafana workspace URL (dashboards: deploy/grafana/dashboards, imported as in docs/deploy.md)."
  type        = string
  validation {
    condition     = can(regex("^https://[^/]+", var.grafana_url))
    error_message = "grafana_url must be the https:// URL of the Grafana workspace."
  }
}

variable "processor_count" {
  description = "Processor tasks (one consumer group)."
  type        = number
  default     = 2
  validation {
    condition     = var.processor_count >= 1
    error_message = "processor_count must be at least 1."
  }
}

variable "gateway_count" {
  description = "Gateway tasks behind the ALB."
  type        = number
  default     = 2
  validation {
    condition     = var.gateway_count >= 1
    error_message = "gateway_count must be at least 1."
  }
}

variable "alarm_topic_arns" {
  description = "SNS topics for the alarms (time to notify, antifraud failures)."
  type        = list(string)
  validation {
    condition     = length(var.alarm_topic_arns) > 0 && alltrue([for a in var.alarm_topic_arns : can(regex("^arn:aws[a-z-]*:sns:", a))])
    error_message = "alarm_topic_arns must list at least one SNS topic ARN."
  }
}
