//! `POST /v1/lists/{list}/add` and `/remove`: an operator puts values on a `[[list]]` of the
//! rules the engine runs, or takes them off, for the operator's own tenant (docs/gateway.md,
//! "Lists"). The gateway checks who asks and what; the change itself is made where the rules
//! are, by a [`ListAdmin`] the process gives it (`pitboss up --rules DIR`, `pitboss gateway
//! --rules DIR`: the rules directory's `lists.toml`, as `pitboss rules list add` writes it).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::server::{GatewayState, error_response, operator, read_body};

/// Most values one request may name.
pub const MAX_LIST_VALUES: usize = 1000;

/// Most bytes of a request body.
pub const MAX_LIST_BODY: usize = 64 * 1024;

/// What an operator asks of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListChange {
    /// The operator's tenant (from the token): the values hold for that tenant's events only.
    pub tenant: String,
    /// Who asked (the token's `sub`), for the log.
    pub operator: String,
    pub list: String,
    /// `true`: put on; `false`: take off.
    pub add: bool,
    pub values: Vec<String>,
    /// Listed for events within this long from now (`30d`), instead of for ever.
    pub duration: Option<String>,
    /// Listed for events before this time (RFC 3339), instead of for ever.
    pub until: Option<String>,
}

/// Why a change was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListRefusal {
    /// The request cannot be made (no such list, a value the list cannot hold, an end already
    /// past, a value not on the list…): nothing was written; the text says why.
    Refused(String),
    /// The rules directory could not be read or written: nothing was written.
    Failed(String),
}

/// Makes list changes where the rules are.
#[async_trait::async_trait]
pub trait ListAdmin: Send + Sync + 'static {
    /// Makes the change; the answer says what was done, line by line.
    async fn change(&self, change: ListChange) -> Result<Vec<String>, ListRefusal>;
}

/// The body of `POST /v1/lists/{list}/add|remove`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListRequest {
    values: Vec<String>,
    #[serde(default, rename = "for")]
    duration: Option<String>,
    #[serde(default)]
    until: Option<String>,
}

pub(crate) async fn change_list(
    State(st): State<GatewayState>,
    Path((list, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // The token before the body, as for publishing.
    let claims = match operator(&st, &headers, "only operators change lists") {
        Ok(c) => c,
        Err(answer) => return *answer,
    };
    let add = match action.as_str() {
        "add" => true,
        "remove" => false,
        other => {
            return error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("POST /v1/lists/{{list}}/add or /remove, not /{other}"),
            );
        }
    };
    let Some(admin) = st.lists.clone() else {
        return error_response(
            StatusCode::NOT_FOUND,
            "no_rules",
            "this gateway changes no lists: it runs beside no rules directory (`pitboss up \
             --rules DIR`, `pitboss gateway --rules DIR`); change them where the rules are, with \
             `pitboss rules list add|remove --rules DIR` (docs/rules.md, \"Lists\")",
        );
    };
    if let Err(wait) = st.lists_limit.check_key(&claims.tenant) {
        let secs = wait
            .wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ))
            .as_secs()
            + 1;
        let mut r = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "at most {} list changes a minute per tenant; try again in {secs} s",
                LIST_CHANGES_PER_MINUTE
            ),
        );
        if let Ok(v) = secs.to_string().parse() {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        return r;
    }
    let body = match read_body(
        &st,
        body,
        MAX_LIST_BODY,
        &format!("a body is at most {MAX_LIST_BODY} bytes"),
        "changed",
    )
    .await
    {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    let req: ListRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "malformed",
                format!(
                    "{e}: the body is {{\"values\": [\"…\"]}}, with \"for\" (\"30d\") or \"until\" \
                     (RFC 3339) to list them for a while"
                ),
            );
        }
    };
    if req.values.is_empty() || req.values.len() > MAX_LIST_VALUES {
        return error_response(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!(
                "`values`: 1 to {MAX_LIST_VALUES} values; this one has {}",
                req.values.len()
            ),
        );
    }
    if let Some((i, _)) = req
        .values
        .iter()
        .enumerate()
        .find(|(_, v)| v.chars().any(char::is_control))
    {
        return error_response(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!(
                "`values[{i}]` holds a control character (a line break, a tab…): no device, address or instrument does"
            ),
        );
    }
    if !add && (req.duration.is_some() || req.until.is_some()) {
        return error_response(
            StatusCode::BAD_REQUEST,
            "malformed",
            "`for` and `until` say how long values are listed: they go with /add, not /remove",
        );
    }
    let change = ListChange {
        tenant: claims.tenant.clone(),
        operator: claims.sub.clone(),
        list: list.clone(),
        add,
        values: req.values,
        duration: req.duration,
        until: req.until,
    };
    // Who asked for what: the log is the trail (the file says what, not who). The values
    // quoted (escaped), the first 20 of them.
    let count = change.values.len();
    let shown: Vec<String> = change.values.iter().take(20).cloned().collect();
    let outcome = admin.change(change).await;
    tracing::info!(
        tenant = %claims.tenant,
        operator = %claims.sub,
        list = ?list,
        action = %action,
        values = count,
        first = ?shown,
        result = match &outcome {
            Ok(_) => "ok",
            Err(ListRefusal::Refused(_)) => "refused",
            Err(ListRefusal::Failed(_)) => "failed",
        },
        "list change asked through the gateway"
    );
    match outcome {
        Ok(lines) => {
            metrics::counter!("pitboss_gateway_list_changes_total", "result" => "ok").increment(1);
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({
                    "list": list,
                    "tenant": claims.tenant,
                    "action": action,
                    "message": lines.join("\n"),
                })),
            )
                .into_response()
        }
        Err(ListRefusal::Refused(why)) => {
            metrics::counter!("pitboss_gateway_list_changes_total", "result" => "refused")
                .increment(1);
            error_response(StatusCode::BAD_REQUEST, "refused", why)
        }
        Err(ListRefusal::Failed(why)) => {
            tracing::error!(tenant = %claims.tenant, list = ?list, error = %why, "list change failed");
            metrics::counter!("pitboss_gateway_list_changes_total", "result" => "failed")
                .increment(1);
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed",
                format!("nothing was changed: {why}"),
            )
        }
    }
}

/// List changes a tenant may make a minute (each loads the whole rule set to check it).
pub const LIST_CHANGES_PER_MINUTE: u32 = 60;
