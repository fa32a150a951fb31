//! The operator console: a single page served by the gateway at `/console`, its files embedded
//! in the binary (plain HTML, CSS and JavaScript in `edge-gateway/console/`, no build step).
//! It signs in with the operator's gateway token (kept in the tab's session storage, passed in
//! the URL fragment by `pitboss up`, which browsers never send to a server), takes the
//! tenant's alerts live over `/v1/ws` with acknowledgement buttons, and polls `/v1/stats`.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const APP_CSS: &str = include_str!("../console/app.css");

/// Only the page's own files and its own gateway (`'self'` covers the same origin's `ws:` and
/// `wss:` in CSP 3); no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `/console` (the page), `/console/app.js`, `/console/app.css`; `/` leads to the console.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route(
            "/console",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console/app.js",
            get(|| async { file("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/console/app.css",
            get(|| async { file("text/css; charset=utf-8", APP_CSS) }),
        )
}

#[cfg(test)]
mod currency_digits {
    /// The console's `MINOR_DIGITS` (app.js) is the platform's ISO 4217 table
    /// (`pitboss_model::currency::minor_unit_digits`) for every code: the browser's own digits
    /// differ (HUF, COP, IDR 0; IQD 0), and the console showed HUF amounts 100 times too large.
    #[test]
    fn the_consoles_minor_digits_are_the_platforms() {
        let app = super::APP_JS;
        let start = app
            .find("const MINOR_DIGITS = {")
            .expect("MINOR_DIGITS in app.js");
        let body = &app[start..app[start..].find("};").map_or(app.len(), |e| start + e)];
        let listed: std::collections::BTreeMap<&str, u32> = body
            .split([',', '{', '\n'])
            .filter_map(|entry| {
                let (code, digits) = entry.split_once(':')?;
                Some((code.trim(), digits.trim().parse().ok()?))
            })
            .collect();
        assert!(listed.len() > 30, "{listed:?}");
        for code in pitboss_model::currency::ISO_4217
            .iter()
            .chain(&["BTC", "EUR"])
        {
            let console = listed.get(code).copied().unwrap_or(2);
            assert_eq!(
                console,
                pitboss_model::currency::minor_unit_digits(code),
                "{code}"
            );
        }
    }
}
