//! What the Lambda binaries share: an init-phase failure told to the Lambda Runtime API.

use std::time::Duration;

use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Posts an init-phase failure to the Runtime API (`/2018-06-01/runtime/init/error`, as the
/// Lambda runtime contract asks), so the invoker sees `message` — which names what is wrong —
/// rather than `Runtime.ExitError` ("exit status 1") with the message in the logs only. Without
/// `AWS_LAMBDA_RUNTIME_API` (not on Lambda) it does nothing; a Runtime API that does not take
/// the report within 2 s is logged and left (the process exits all the same).
pub async fn report_init_error(message: &str) {
    let Some(api) = std::env::var("AWS_LAMBDA_RUNTIME_API")
        .ok()
        .filter(|a| !a.is_empty())
    else {
        return;
    };
    let body = serde_json::json!({
        "errorMessage": message,
        "errorType": "Pitboss.InitError",
    })
    .to_string();
    let request = match axum::http::Request::post(format!(
        "http://{api}/2018-06-01/runtime/init/error"
    ))
    .header("lambda-runtime-function-error-type", "Runtime.InitError")
    .header("content-type", "application/json")
    .body(Full::new(bytes::Bytes::from(body)))
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "init error not reported: AWS_LAMBDA_RUNTIME_API is not a host:port");
            return;
        }
    };
    let client = Client::builder(TokioExecutor::new()).build_http();
    match tokio::time::timeout(Duration::from_secs(2), client.request(request)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "init error not reported to the Runtime API"),
        Err(_) => {
            tracing::warn!("init error not reported: the Runtime API did not answer within 2 s")
        }
    }
}
