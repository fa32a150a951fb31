variable "name" {
  type = string
}

variable "required_too" {
  type = string
}

variable "ports" {
  type    = list(number)
  default = [443]
}

variable "rules" {
  type    = map(object({ port = number }))
  default = {}
}
