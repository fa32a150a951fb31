//! The DynamoDB rows of a consumer group (`pk = group|stream`): a member row per live member
//! (`sk = member#<id>`, expiry renewed on every heartbeat) and a lease row per shard index of
//! the main stream (`sk = shard#<shard id>`: owner, expiry, counter, and one checkpoint per
//! stream read under it — `checkpoint` for the main stream, `checkpoint#<stream>` for each
//! companion). Every write to a lease row after it was taken is conditional on this member
//! still owning it.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};

use super::{Shared, now_ms, sdk, unavailable};
use crate::BusError;

/// Attribute holding the checkpoint of the main stream (the name rows had before companions).
const MAIN_CHECKPOINT: &str = "checkpoint";

/// Prefix of the attribute holding a stream's start mark: where (a time, ms) the group started
/// reading it when it had no checkpoint (`start_at`, `start_at#<stream>` for a companion). A
/// separate attribute, not a checkpoint value: builds before it read only checkpoints, and a
/// mark there would have been taken for a sequence number.
const START_AT: &str = "start_at";

/// The start-mark attribute belonging to the checkpoint attribute `checkpoint`.
pub(super) fn start_attribute(checkpoint: &str) -> String {
    let stream = checkpoint
        .strip_prefix(MAIN_CHECKPOINT)
        .unwrap_or(checkpoint);
    format!("{START_AT}{stream}")
}

/// The checkpoint attribute of a stream read under a lease: `checkpoint` for the main stream,
/// `checkpoint#<stream>` for a companion.
pub(super) fn checkpoint_attribute(stream: &str, main: bool) -> String {
    if main {
        MAIN_CHECKPOINT.to_owned()
    } else {
        format!("{MAIN_CHECKPOINT}#{stream}")
    }
}

impl Shared {
    /// Creates the lease table if needed and waits until it is active (once per bus).
    pub(super) async fn ensure_lease_table(&self) -> Result<(), BusError> {
        self.lease_table_ready
            .get_or_try_init(|| async {
                let table = &self.config.lease_table;
                let attr = |name: &str| {
                    AttributeDefinition::builder()
                        .attribute_name(name)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(unavailable)
                };
                let key = |name: &str, kind: KeyType| {
                    KeySchemaElement::builder()
                        .attribute_name(name)
                        .key_type(kind)
                        .build()
                        .map_err(unavailable)
                };
                let created = self
                    .dynamo
                    .create_table()
                    .table_name(table)
                    .billing_mode(BillingMode::PayPerRequest)
                    .attribute_definitions(attr("pk")?)
                    .attribute_definitions(attr("sk")?)
                    .key_schema(key("pk", KeyType::Hash)?)
                    .key_schema(key("sk", KeyType::Range)?)
                    .send()
                    .await;
                match created {
                    Ok(_) => {}
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_resource_in_use_exception()) => {}
                    Err(e) => return Err(unavailable(sdk(e))),
                }
                for _ in 0..100 {
                    let d = self
                        .dynamo
                        .describe_table()
                        .table_name(table)
                        .send()
                        .await
                        .map_err(|e| unavailable(sdk(e)))?;
                    if d.table()
                        .and_then(|t| t.table_status())
                        .is_some_and(|s| s.as_str() == "ACTIVE")
                    {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(BusError::Unavailable(format!(
                    "lease table {table} did not become active"
                )))
            })
            .await
            .map(|_| ())
    }
}

/// A lease row as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct LeaseRow {
    pub owner: String,
    pub expires: i64,
    pub counter: i64,
    /// Checkpoint attribute -> sequence number.
    pub checkpoints: HashMap<String, String>,
    /// Checkpoint attribute -> the start mark of its stream (ms), when there is one.
    pub starts: HashMap<String, i64>,
}

/// The group's rows as read by one member.
#[derive(Debug, Default)]
pub(super) struct GroupView {
    /// Members whose row has not expired (at least 1: the reader itself).
    pub live_members: usize,
    /// Rows of members expired for over a session (killed, never left): `(sk, expiry)`.
    pub dead_members: Vec<(String, i64)>,
    /// Shard id -> lease row.
    pub leases: HashMap<String, LeaseRow>,
}

/// One member's handle on its group's rows.
#[derive(Debug)]
pub(super) struct Leases {
    dynamo: aws_sdk_dynamodb::Client,
    table: String,
    /// `group|stream`.
    pk: String,
    /// This member's id.
    member: String,
    /// How long a heartbeat or a renewal holds (the session timeout), ms.
    lease_ms: i64,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn conditional_failed<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

fn shard_key(shard: &str) -> String {
    format!("shard#{shard}")
}

impl Leases {
    pub fn new(shared: &Shared, group: &str, stream: &str, member: String, lease_ms: i64) -> Self {
        Leases {
            dynamo: shared.dynamo.clone(),
            table: shared.config.lease_table.clone(),
            pk: format!("{group}|{stream}"),
            member,
            lease_ms,
        }
    }

    pub fn lease_ms(&self) -> i64 {
        self.lease_ms
    }

    /// Writes this member's row with a fresh expiry.
    pub async fn heartbeat(&self) -> Result<(), BusError> {
        self.dynamo
            .put_item()
            .table_name(&self.table)
            .item("pk", s(&self.pk))
            .item("sk", s(format!("member#{}", self.member)))
            .item("lease_expires", n(now_ms() + self.lease_ms))
            .send()
            .await
            .map_err(|e| unavailable(sdk(e)))?;
        Ok(())
    }

    /// Deletes the row `sk` of a member that died (killed, so it never left), if its expiry is
    /// still `expires` (a member that came back has heartbeated since). `Ok(false)`: it had.
    pub async fn bury(&self, sk: &str, expires: i64) -> Result<bool, BusError> {
        let deleted = self
            .dynamo
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(&self.pk))
            .key("sk", s(sk))
            .condition_expression("lease_expires = :seen")
            .expression_attribute_values(":seen", n(expires))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(unavailable(sdk(e))),
        }
    }

    /// Deletes this member's row.
    pub async fn leave(&self) -> Result<(), BusError> {
        self.dynamo
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(&self.pk))
            .key("sk", s(format!("member#{}", self.member)))
            .send()
            .await
            .map_err(|e| unavailable(sdk(e)))?;
        Ok(())
    }

    /// Reads every row of the group (consistently).
    pub async fn view(&self) -> Result<GroupView, BusError> {
        let now = now_ms();
        let mut view = GroupView::default();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let rows = self
                .dynamo
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(&self.pk))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| unavailable(sdk(e)))?;
            for item in rows.items() {
                let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
                let num = |k: &str| {
                    item.get(k)
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0)
                };
                let sk = text("sk").unwrap_or_default();
                if sk.starts_with("member#") {
                    let expires = num("lease_expires");
                    if expires > now {
                        view.live_members += 1;
                    } else if expires.saturating_add(self.lease_ms) < now {
                        view.dead_members.push((sk.clone(), expires));
                    }
                } else if let Some(shard) = sk.strip_prefix("shard#") {
                    let checkpoints = item
                        .iter()
                        .filter(|(k, _)| {
                            k.as_str() == MAIN_CHECKPOINT
                                || k.starts_with(&format!("{MAIN_CHECKPOINT}#"))
                        })
                        .filter_map(|(k, v)| Some((k.clone(), v.as_s().ok()?.clone())))
                        .collect();
                    let starts = item
                        .iter()
                        .filter_map(|(k, v)| {
                            let rest = k.strip_prefix(START_AT)?;
                            let ms = v.as_s().ok()?.parse::<i64>().ok()?;
                            Some((format!("{MAIN_CHECKPOINT}{rest}"), ms))
                        })
                        .collect();
                    view.leases.insert(
                        shard.to_owned(),
                        LeaseRow {
                            owner: text("lease_owner").unwrap_or_default(),
                            expires: num("lease_expires"),
                            counter: num("lease_counter"),
                            checkpoints,
                            starts,
                        },
                    );
                }
            }
            match rows.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => break,
            }
        }
        view.live_members = view.live_members.max(1);
        Ok(view)
    }

    /// Takes the lease of `shard` if its counter is still `seen` (free, or expired and nobody
    /// was faster). `Ok(false)`: someone else changed it first.
    pub async fn take(&self, shard: &str, seen: i64) -> Result<bool, BusError> {
        let taken = self
            .dynamo
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&self.pk))
            .key("sk", s(shard_key(shard)))
            .update_expression("SET lease_owner = :me, lease_expires = :exp, lease_counter = :next")
            .condition_expression("attribute_not_exists(lease_counter) OR lease_counter = :seen")
            .expression_attribute_values(":me", s(&self.member))
            .expression_attribute_values(":exp", n(now_ms() + self.lease_ms))
            .expression_attribute_values(":next", n(seen + 1))
            .expression_attribute_values(":seen", n(seen))
            .send()
            .await;
        match taken {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(unavailable(sdk(e))),
        }
    }

    /// Extends this member's lease of `shard`. `Ok(false)`: it is not this member's any more.
    pub async fn renew(&self, shard: &str) -> Result<bool, BusError> {
        self.update_owned(
            shard,
            "SET lease_expires = :exp, lease_counter = lease_counter + :one",
            Vec::new(),
            vec![
                (":exp".into(), n(now_ms() + self.lease_ms)),
                (":one".into(), n(1)),
            ],
        )
        .await
    }

    /// Writes checkpoints (attribute, sequence number) on the lease row of `shard`, all at
    /// once, only while this member owns it. `Ok(false)`: fenced off.
    pub async fn checkpoint(
        &self,
        shard: &str,
        checkpoints: &[(String, String)],
    ) -> Result<bool, BusError> {
        if checkpoints.is_empty() {
            return Ok(true);
        }
        let mut sets = Vec::new();
        let mut names = Vec::new();
        let mut values = Vec::new();
        for (i, (attribute, seq)) in checkpoints.iter().enumerate() {
            sets.push(format!("#c{i} = :c{i}"));
            names.push((format!("#c{i}"), attribute.clone()));
            values.push((format!(":c{i}"), s(seq)));
        }
        self.update_owned(shard, &format!("SET {}", sets.join(", ")), names, values)
            .await
    }

    /// Frees this member's lease of `shard` for others (checkpoints stay). `Ok(false)`: it was
    /// not this member's any more.
    pub async fn release(&self, shard: &str) -> Result<bool, BusError> {
        self.update_owned(
            shard,
            "SET lease_owner = :none, lease_expires = :zero, lease_counter = lease_counter + :one",
            Vec::new(),
            vec![
                (":none".into(), s("")),
                (":zero".into(), n(0)),
                (":one".into(), n(1)),
            ],
        )
        .await
    }

    /// Updates the lease row of `shard`, only while this member owns it.
    async fn update_owned(
        &self,
        shard: &str,
        expression: &str,
        names: Vec<(String, String)>,
        values: Vec<(String, AttributeValue)>,
    ) -> Result<bool, BusError> {
        let mut request = self
            .dynamo
            .update_item()
            .table_name(&self.table)
            .key("pk", s(&self.pk))
            .key("sk", s(shard_key(shard)))
            .update_expression(expression)
            .condition_expression("lease_owner = :me")
            .expression_attribute_values(":me", s(&self.member));
        for (name, attribute) in names {
            request = request.expression_attribute_names(name, attribute);
        }
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(unavailable(sdk(e))),
        }
    }
}
