//! Operators' changes to the rules the engine runs, for the operator's own tenant:
//!
//! - `POST /v1/lists/{list}/add` and `/remove`: values put on a `[[list]]` or taken off
//!   (docs/gateway.md, "Lists");
//! - `POST /v1/snoozes`: a rule silenced for one group value until a time (docs/gateway.md,
//!   "Snoozes").
//!
//! The gateway checks who asks and what; the change itself is made where the rules are, by a
//! [`RulesAdmin`] the process gives it (`pitboss up --rules DIR`, `pitboss gateway --rules
//! DIR`: the rules directory's `lists.toml` and `snoozes.toml`, as `pitboss rules list add` and
//! `pitboss rules snooze` write them).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::auth::Claims;
use crate::server::{GatewayState, error_response, operator, read_body};

/// Most values one list request may name.
pub const MAX_LIST_VALUES: usize = 1000;

/// Most bytes of a request body.
pub const MAX_RULES_BODY: usize = 64 * 1024;

/// Changes (lists and snoozes together) a tenant may make a minute: each loads the whole rule
/// set to check it.
pub const RULES_CHANGES_PER_MINUTE: u32 = 60;

/// Longest text of a snooze's rule, key and alert id (an alert's `group_key` may be this long).
const MAX_SNOOZE_TEXT: usize = pitboss_model::validate::MAX_TEXT;

/// Longest reason of a snooze.
const MAX_REASON: usize = 1000;

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

/// A rule an operator silences for one group value of the operator's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnoozeRequest {
    /// The operator's tenant (from the token).
    pub tenant: String,
    /// Who asked (the token's `sub`): the snooze's `by`.
    pub operator: String,
    pub rule: String,
    /// The group value, as alerts give it in `group_key`.
    pub key: String,
    /// The alert that led to it, kept with the snooze.
    pub alert: Option<String>,
    /// For this long from now (`30d`), or until `until` (RFC 3339): one of the two.
    pub duration: Option<String>,
    pub until: Option<String>,
    pub reason: String,
}

/// Why a change was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request cannot be made (no such list or rule, a value the list cannot hold, an end
    /// already past, a value not on the list…): nothing was written; the text says why.
    Refused(String),
    /// The rules directory could not be read or written, or the set is refused as it is:
    /// nothing was written.
    Failed(String),
}

/// Makes changes where the rules are.
#[async_trait::async_trait]
pub trait RulesAdmin: Send + Sync + 'static {
    /// Changes a list; the answer says what was done, line by line.
    async fn change_list(&self, change: ListChange) -> Result<Vec<String>, Refusal>;
    /// Adds a snooze; the answer says what was done, line by line.
    async fn snooze(&self, snooze: SnoozeRequest) -> Result<Vec<String>, Refusal>;
}

/// The body of `POST /v1/lists/{list}/add|remove`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListBody {
    values: Vec<String>,
    #[serde(default, rename = "for")]
    duration: Option<String>,
    #[serde(default)]
    until: Option<String>,
}

/// The body of `POST /v1/snoozes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnoozeBody {
    rule: String,
    key: String,
    #[serde(default)]
    alert: Option<String>,
    #[serde(default, rename = "for")]
    duration: Option<String>,
    #[serde(default)]
    until: Option<String>,
    reason: String,
}

fn malformed(message: impl std::fmt::Display) -> Response {
    error_response(StatusCode::BAD_REQUEST, "malformed", message)
}

/// What every change goes through before its body is read: an operator's token, a gateway
/// beside the rules, the tenant's budget; then the body, whole and bounded.
async fn admit(
    st: &GatewayState,
    headers: &HeaderMap,
    body: axum::body::Body,
    what: &str,
) -> Result<(Claims, std::sync::Arc<dyn RulesAdmin>, axum::body::Bytes), Response> {
    // The token before the body, as for publishing.
    let claims = operator(st, headers, &format!("only operators change {what}")).map_err(|r| *r)?;
    let Some(admin) = st.rules.clone() else {
        return Err(error_response(
            StatusCode::NOT_FOUND,
            "no_rules",
            format!(
                "this gateway changes no {what}: it runs beside no rules directory (`pitboss up \
                 --rules DIR`, `pitboss gateway --rules DIR`); change them where the rules are, \
                 with `pitboss rules list add|remove` or `pitboss rules snooze` --rules DIR \
                 (docs/rules.md)"
            ),
        ));
    };
    if let Err(wait) = st.rules_limit.check_key(&claims.tenant) {
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
                "at most {RULES_CHANGES_PER_MINUTE} changes to lists and snoozes a minute per \
                 tenant; try again in {secs} s"
            ),
        );
        if let Ok(v) = secs.to_string().parse() {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        return Err(r);
    }
    let body = read_body(
        st,
        body,
        MAX_RULES_BODY,
        &format!("a body is at most {MAX_RULES_BODY} bytes"),
        "changed",
    )
    .await?;
    Ok((claims, admin, body))
}

/// The answer to a change the admin made or refused, counted by `kind` and result.
fn answer(
    kind: &'static str,
    outcome: Result<Vec<String>, Refusal>,
    ok: serde_json::Value,
) -> Response {
    let result = match &outcome {
        Ok(_) => "ok",
        Err(Refusal::Refused(_)) => "refused",
        Err(Refusal::Failed(_)) => "failed",
    };
    metrics::counter!("pitboss_gateway_rules_changes_total", "kind" => kind, "result" => result)
        .increment(1);
    match outcome {
        Ok(lines) => {
            let mut body = ok;
            if let Some(b) = body.as_object_mut() {
                b.insert("message".into(), lines.join("\n").into());
            }
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(Refusal::Refused(why)) => error_response(StatusCode::BAD_REQUEST, "refused", why),
        Err(Refusal::Failed(why)) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed",
            format!("nothing was changed: {why}"),
        ),
    }
}

/// The first text of `texts` (named by `names`) that holds a control character: it would
/// forge lines of the log that says who changed what.
fn control<'a>(texts: impl IntoIterator<Item = (String, &'a str)>) -> Option<Response> {
    texts
        .into_iter()
        .find(|(_, t)| t.chars().any(char::is_control))
        .map(|(name, _)| {
            malformed(format!(
                "`{name}` holds a control character (a line break, a tab…): nothing the rules \
                 read does"
            ))
        })
}

pub(crate) async fn change_list(
    State(st): State<GatewayState>,
    Path((list, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
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
    let (claims, admin, body) = match admit(&st, &headers, body, "lists").await {
        Ok(admitted) => admitted,
        Err(answer) => return answer,
    };
    let req: ListBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return malformed(format!(
                "{e}: the body is {{\"values\": [\"…\"]}}, with \"for\" (\"30d\") or \"until\" \
                 (RFC 3339) to list them for a while"
            ));
        }
    };
    if req.values.is_empty() || req.values.len() > MAX_LIST_VALUES {
        return malformed(format!(
            "`values`: 1 to {MAX_LIST_VALUES} values; this one has {}",
            req.values.len()
        ));
    }
    if let Some(refused) = control(
        req.values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("values[{i}]"), v.as_str())),
    ) {
        return refused;
    }
    if !add && (req.duration.is_some() || req.until.is_some()) {
        return malformed(
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
    let outcome = admin.change_list(change).await;
    tracing::info!(
        tenant = %claims.tenant,
        operator = %claims.sub,
        list = ?list,
        action = %action,
        values = count,
        first = ?shown,
        result = ?outcome.as_ref().map(|_| ()),
        "list change asked through the gateway"
    );
    answer(
        "list",
        outcome,
        serde_json::json!({"list": list, "tenant": claims.tenant, "action": action}),
    )
}

pub(crate) async fn snooze(
    State(st): State<GatewayState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let (claims, admin, body) = match admit(&st, &headers, body, "snoozes").await {
        Ok(admitted) => admitted,
        Err(answer) => return answer,
    };
    let req: SnoozeBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return malformed(format!(
                "{e}: the body is {{\"rule\": \"…\", \"key\": \"…\", \"for\": \"30d\" (or \
                 \"until\": RFC 3339), \"reason\": \"…\"}}, with \"alert\" (its id) if one led \
                 to it"
            ));
        }
    };
    for (name, text, most) in [
        ("rule", req.rule.as_str(), MAX_SNOOZE_TEXT),
        ("key", req.key.as_str(), MAX_SNOOZE_TEXT),
        (
            "alert",
            req.alert.as_deref().unwrap_or("-"),
            MAX_SNOOZE_TEXT,
        ),
        ("reason", req.reason.as_str(), MAX_REASON),
    ] {
        if text.trim().is_empty() || text.len() > most {
            return malformed(format!(
                "`{name}`: 1 to {most} bytes, not blank; this one has {}",
                text.len()
            ));
        }
    }
    if let Some(refused) = control([
        ("rule".to_owned(), req.rule.as_str()),
        ("key".to_owned(), req.key.as_str()),
        ("alert".to_owned(), req.alert.as_deref().unwrap_or("")),
        ("reason".to_owned(), req.reason.as_str()),
    ]) {
        return refused;
    }
    let snooze = SnoozeRequest {
        tenant: claims.tenant.clone(),
        operator: claims.sub.clone(),
        rule: req.rule,
        key: req.key,
        alert: req.alert,
        duration: req.duration,
        until: req.until,
        reason: req.reason,
    };
    let (rule, key) = (snooze.rule.clone(), snooze.key.clone());
    let outcome = admin.snooze(snooze).await;
    tracing::info!(
        tenant = %claims.tenant,
        operator = %claims.sub,
        rule = ?rule,
        key = ?key,
        result = ?outcome.as_ref().map(|_| ()),
        "snooze asked through the gateway"
    );
    answer(
        "snooze",
        outcome,
        serde_json::json!({"rule": rule, "tenant": claims.tenant, "key": key}),
    )
}
