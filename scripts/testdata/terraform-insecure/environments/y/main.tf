# A module whose function reads both streams a player's events travel on: no finding (the
# overflow rule must not flag a mapping on `events` that has its `events_overflow` twin).
resource "aws_lambda_event_source_mapping" "events" {
  function_name                  = "f"
  event_source_arn               = "arn:aws:kinesis:eu-west-1:111122223333:stream/events"
  function_response_types        = ["ReportBatchItemFailures"]
  bisect_batch_on_function_error = true
  destination_config {
    on_failure {
      destination_arn = "arn:aws:sqs:eu-west-1:111122223333:q"
    }
  }
}

resource "aws_lambda_event_source_mapping" "overflow" {
  function_name                  = "f"
  event_source_arn               = "arn:aws:kinesis:eu-west-1:111122223333:stream/events_overflow"
  function_response_types        = ["ReportBatchItemFailures"]
  bisect_batch_on_function_error = true
  destination_config {
    on_failure {
      destination_arn = "arn:aws:sqs:eu-west-1:111122223333:q"
    }
  }
}

resource "aws_kinesis_stream" "provisioned" {
  name        = "events"
  shard_count = 4
  stream_mode_details {
    stream_mode = "PROVISIONED"
  }
}
