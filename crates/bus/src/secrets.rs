//! librdkafka options kept in AWS Secrets Manager (`PITBOSS_KAFKA_OPTIONS_SECRET`): how the
//! Lambda functions get MSK's SASL/SCRAM credentials without holding them in their environment
//! ([`crate::BusSpec::from_env_with_secrets`]).
//!
//! The secret's string is either the form of `PITBOSS_KAFKA_OPTIONS` (`key=value,key=value`) or
//! a JSON object of strings (`{"sasl.username": "pitboss", "sasl.password": "…"}`, the console's
//! key/value form). Errors name the secret and the faulty item's position, never a value.

use std::collections::BTreeMap;

use crate::BusError;

/// The environment variable naming the secret (its ARN or name).
pub const KAFKA_OPTIONS_SECRET: &str = "PITBOSS_KAFKA_OPTIONS_SECRET";

/// Reads secret `id`'s string from Secrets Manager (the default AWS configuration: region,
/// credentials, and `AWS_ENDPOINT_URL_SECRETS_MANAGER` or `AWS_ENDPOINT_URL` for LocalStack).
pub async fn secret_string(id: &str) -> Result<String, BusError> {
    // A missing VPC endpoint or a security group dropping the call fails in seconds, naming
    // the secret, not at Lambda's init deadline.
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .operation_timeout(std::time::Duration::from_secs(5))
        .build();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .load()
        .await;
    let client = aws_sdk_secretsmanager::Client::new(&config);
    let out = client
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|e| {
            use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
            // AWS's code and message (AccessDeniedException: …); the whole chain for a call
            // that got no answer (no route to the endpoint, a timeout).
            let why = match &e {
                SdkError::ServiceError(s) if s.err().code().is_some() => format!(
                    "{}: {}",
                    s.err().code().unwrap_or_default(),
                    s.err().message().unwrap_or("(no message)")
                ),
                // No AWS error code: not Secrets Manager answering (a proxy, a wrong endpoint).
                SdkError::ServiceError(s) => {
                    format!("HTTP {} without an AWS error", s.raw().status().as_u16())
                }
                other => aws_sdk_secretsmanager::error::DisplayErrorContext(other).to_string(),
            };
            BusError::Config(format!(
                "{KAFKA_OPTIONS_SECRET}: cannot read secret {id:?}: {why}"
            ))
        })?;
    out.secret_string().map(str::to_owned).ok_or_else(|| {
        BusError::Config(format!(
            "{KAFKA_OPTIONS_SECRET}: secret {id:?} holds binary data, not a string of options"
        ))
    })
}

/// Parses a secret's string into librdkafka options (see the module's documentation).
pub fn parse_secret_options(id: &str, text: &str) -> Result<BTreeMap<String, String>, BusError> {
    let bad =
        |why: String| BusError::Config(format!("{KAFKA_OPTIONS_SECRET}: secret {id:?}: {why}"));
    let text = text.trim();
    if text.starts_with('{') {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| {
                bad(format!(
                    "not a JSON object of strings (line {}, column {})",
                    e.line(),
                    e.column()
                ))
            })?;
        if object.is_empty() {
            return Err(bad("holds no options".into()));
        }
        return object
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) if !k.trim().is_empty() => {
                    Ok((k.trim().to_owned(), s))
                }
                serde_json::Value::String(_) => Err(bad("an empty key".into())),
                _ => Err(bad(format!("the value of {k:?} is not a string"))),
            })
            .collect();
    }
    let mut options = BTreeMap::new();
    for (n, item) in text.split(',').enumerate() {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                options.insert(k.trim().to_owned(), v.to_owned());
            }
            // The item may be a piece of a password (one holding a comma): not shown.
            _ => {
                return Err(bad(format!(
                    "item {} is not key=value (items are separated by commas; a value holding a \
                     comma needs the JSON form)",
                    n + 1
                )));
            }
        }
    }
    if options.is_empty() {
        return Err(bad("holds no options".into()));
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn both_forms_parse_and_errors_show_no_value() {
        let kv = parse_secret_options(
            "s",
            " security.protocol=SASL_SSL, sasl.password=p=w ,sasl.username=u\n",
        )
        .unwrap();
        assert_eq!(kv["sasl.password"], "p=w");
        assert_eq!(kv["security.protocol"], "SASL_SSL");
        let json =
            parse_secret_options("s", r#"{"sasl.username":"u","sasl.password":"a,b=c"}"#).unwrap();
        assert_eq!(json["sasl.password"], "a,b=c");
        assert_eq!(json.len(), 2);

        let e = parse_secret_options("s", "sasl.password=a,hunter2secret,x=y")
            .unwrap_err()
            .to_string();
        assert!(e.contains("item 2 is not key=value"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = parse_secret_options("s", r#"{"sasl.password": 12345}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"sasl.password\" is not a string"), "{e}");
        assert!(!e.contains("12345"), "{e}");
        let e = parse_secret_options("s", r#"{"sasl.password": "hunter2"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a JSON object"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(parse_secret_options("s", " , ").is_err());
        assert!(parse_secret_options("s", "{}").is_err());
    }
}
