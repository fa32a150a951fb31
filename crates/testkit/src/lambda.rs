//! A fake AWS Lambda Runtime API (what Lambda runs a function binary against): it hands out
//! queued invocations and records what the function answered, so a test can drive the real
//! Lambda binary with real event payloads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use tokio::sync::Notify;

/// The fake Runtime API: hands out queued invocations, records what the function answered.
#[derive(Debug, Clone, Default)]
pub struct Runtime {
    queue: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    arrived: Arc<Notify>,
    answers: Arc<Mutex<HashMap<String, serde_json::Value>>>,
    answered: Arc<Notify>,
}

async fn next(State(rt): State<Runtime>) -> (HeaderMap, String) {
    loop {
        // Registered before looking, so a job queued in between still wakes us.
        let arrived = rt.arrived.notified();
        let job = rt.queue.lock().expect("fake runtime").pop();
        if let Some((id, event)) = job {
            let mut h = HeaderMap::new();
            h.insert(
                "lambda-runtime-aws-request-id",
                id.parse().expect("fake runtime"),
            );
            let deadline = pitboss_model::Timestamp::now().as_millis() + 30_000;
            h.insert(
                "lambda-runtime-deadline-ms",
                deadline.to_string().parse().expect("fake runtime"),
            );
            h.insert(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:eu-west-1:123456789012:function:pitboss-ingest"
                    .parse()
                    .expect("fake runtime"),
            );
            h.insert(
                "lambda-runtime-trace-id",
                "Root=1-6748a1f0-0f4c2a1b3d5e6f7a8b9c0d1e"
                    .parse()
                    .expect("fake runtime"),
            );
            return (h, event.to_string());
        }
        arrived.await;
    }
}

async fn respond(State(rt): State<Runtime>, Path(id): Path<String>, body: String) -> &'static str {
    let value = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    rt.answers.lock().expect("fake runtime").insert(id, value);
    rt.answered.notify_waiters();
    "{}"
}

/// `/runtime/init/error`: kept as the answer of invocation `init/error`, its
/// `Lambda-Runtime-Function-Error-Type` header under `"header"`.
async fn init_error(State(rt): State<Runtime>, headers: HeaderMap, body: String) -> &'static str {
    let mut value: serde_json::Value =
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    if let Some(obj) = value.as_object_mut() {
        let header = headers
            .get("lambda-runtime-function-error-type")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        obj.insert("header".into(), header.into());
    }
    rt.answers
        .lock()
        .expect("fake runtime")
        .insert("init/error".into(), value);
    rt.answered.notify_waiters();
    "{}"
}

impl Runtime {
    /// What the function posted to `/runtime/init/error`, waiting up to `wait`.
    pub async fn init_error(&self, wait: Duration) -> Option<serde_json::Value> {
        self.answer("init/error", wait).await
    }

    /// Serves on a loopback port; returns `host:port` for `AWS_LAMBDA_RUNTIME_API`.
    pub async fn start(&self) -> String {
        let app = axum::Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(respond))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake runtime");
        let addr = listener.local_addr().expect("fake runtime");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("fake runtime") });
        addr.to_string()
    }

    /// Queues an invocation (the next `/next` request of the function takes it).
    pub fn queue(&self, id: &str, event: serde_json::Value) {
        self.queue
            .lock()
            .expect("fake runtime")
            .insert(0, (id.to_owned(), event));
        self.arrived.notify_waiters();
    }

    /// The function's answer to invocation `id`, waiting up to `wait`.
    pub async fn answer(&self, id: &str, wait: Duration) -> Option<serde_json::Value> {
        tokio::time::timeout(wait, async {
            loop {
                let waiting = self.answered.notified();
                if let Some(answer) = self.answers.lock().expect("fake runtime").get(id).cloned() {
                    return answer;
                }
                waiting.await;
            }
        })
        .await
        .ok()
    }

    /// Queues an invocation and waits (up to 60 s) for the function's answer.
    pub async fn invoke(&self, id: &str, event: serde_json::Value) -> serde_json::Value {
        self.queue(id, event);
        self.answer(id, Duration::from_secs(60))
            .await
            .expect("the function answered the invocation")
    }
}
