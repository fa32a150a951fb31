output "queue_arns" {
  value = aws_sqs_queue.counted[*].arn
}

output "single_arn" {
  value = aws_sqs_queue.single.arn
}

output "missing_key" {
  value = aws_sqs_queue.counted.arn # bad: counted has count
}
