variable "name" {
  type = string
}

module "m" {
  source       = "../../modules/m"
  name         = var.name
  required_too = "x"
  providers    = { aws = aws.east }
}

module "counted" {
  count  = 2
  source = "../../modules/m"
  name   = "${var.name}-${count.index}"
  bogus  = 1 # bad: m has no variable bogus; and required_too is not passed
}

module "gone" {
  source = "../../modules/gone" # bad: no such directory
}

output "good" {
  value = [module.m.single_arn, module.counted[0].single_arn, module.counted[*].queue_arns]
}

output "bad" {
  value = [
    module.m.no_such_output,      # bad
    module.m[0].single_arn,       # bad: m has no count
    module.counted.single_arn,    # bad: counted has count
    module.nope.single_arn,       # bad
    local.nothing_here,           # bad
    data.aws_region.current.name, # bad
  ]
}
