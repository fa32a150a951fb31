locals {
  prefix  = "${var.name}-${terraform.workspace}"
  by_key  = { for k, v in var.rules : k => v.port }
  arns    = [for q in aws_sqs_queue.counted : q.arn if q.name != "it's"]
  text    = "var.nothing, local.nothing and aws_s3_bucket.nothing are only text; $${var.escaped} too"
  cond    = var.name == "data.aws_region.nothing" ? path.module : "module.nothing.out"
  typo    = vars.name                                       # bad: no such root
  nested  = jsonencode({ a = "x-${local.missing_nested}" }) # bad
  heredoc = <<-EOT
    ${var.missing_heredoc}
    %{for p in var.ports}${p} %{endfor}
  EOT
  listed  = [for x in var.missing_list : x] # bad
}

resource "aws_sqs_queue" "counted" {
  count = 2
  name  = "${local.prefix}-${count.index}"
  tags  = { "Name" = local.missing_local } # bad
}

resource "aws_sqs_queue" "single" {
  name = "${var.missing_in_template}-single" # bad
  lifecycle {
    ignore_changes = [tags]
  }
}

resource "aws_security_group" "sg" {
  for_each = var.rules
  name     = each.key
  dynamic "ingress" {
    for_each = var.ports
    content {
      from_port = ingress.value
      to_port   = each.value.port
      protocol  = "tcp"
    }
  }
  dynamic "egress" {
    for_each = var.ports
    iterator = port
    content {
      from_port = port.value
      to_port   = port.value
      protocol  = aws_sqs_queue.single[0].arn # bad: single has no count
    }
  }
}

resource "random_password" "p" {
  length = random_password.missing.length # bad
}

data "aws_iam_policy_document" "doc" {
  statement {
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.single.arn, aws_s3_bucket.missing.arn] # bad: the second
  }
}

output "doc" {
  value = data.aws_iam_policy_document.doc.json
}

output "missing_doc" {
  value = data.aws_iam_policy_document.missing.json # bad
}
