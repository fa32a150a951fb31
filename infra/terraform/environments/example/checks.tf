# Rules between inputs, which one variable's validation block cannot see (terraform >= 1.6):
# a plan that breaks one fails here, naming the variables. scripts/check_terraform_vars.py plans
# this file with variables.tf.
resource "terraform_data" "inputs" {
  lifecycle {
    precondition {
      condition     = var.antifraud_runtime != "ecs" || var.bus == "msk"
      error_message = "antifraud_runtime = \"ecs\" needs bus = \"msk\": the standalone engine's stand-by and its state changelog are Kafka's (docs/rules.md); on Kinesis use \"lambda\"."
    }
    precondition {
      condition     = var.antifraud_shards == 1 || var.antifraud_runtime == "ecs"
      error_message = "antifraud_shards above 1 needs antifraud_runtime = \"ecs\": split engines are standalone processes (docs/rules.md, \"Several engines\"); the Lambda scales by its event source's batches."
    }
    precondition {
      condition     = var.antifraud_runtime != "lambda" || var.antifraud_lambda_zip != null
      error_message = "antifraud_lambda_zip must name the antifraud Lambda's zip when antifraud_runtime = \"lambda\" (run scripts/lambda-zip.sh)."
    }
  }
}
