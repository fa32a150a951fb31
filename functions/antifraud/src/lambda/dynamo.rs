//! Units in a DynamoDB table: partition key `unit` (S), the unit's name; `v` (N) its version,
//! `d` (B) its bytes, `n` (N) how many items hold them, `ttl` (N) when DynamoDB may delete it
//! (TTL enabled on `ttl`).
//!
//! An item holds at most 400 KB: a unit larger than [`CHUNK`] bytes (a window near its cap)
//! keeps its first chunk in its own item and the rest in items named
//! `c|<unit>|<version>|<nonce>|<i>` (`c` (S) in the unit's item holds `<version>|<nonce>`: two
//! writers of the same version never share chunk items), written before the unit's item; a
//! reader fetches the chunks the item names. Chunks of older versions are left to the TTL.
//!
//! A unit that cannot be read whole — its TTL passed (DynamoDB deletes expired items late and in
//! any order), or a chunk is gone — loads as an empty unit at its version: the rule starts that
//! key empty and the next write replaces the item (rather than failing every retry).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use futures::{StreamExt, TryStreamExt};

use super::{StoreError, Stored, UnitStore, Write};

/// Bytes per item (DynamoDB's limit is 400 KB per item, names included).
pub const CHUNK: usize = 350_000;
/// Keys per `BatchGetItem` (DynamoDB's limit).
const BATCH_GET: usize = 100;
/// Writes in flight at once.
const CONCURRENT_WRITES: usize = 16;

/// The DynamoDB unit store.
#[derive(Debug, Clone)]
pub struct DynamoUnits {
    client: Client,
    table: String,
}

fn unavailable<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn sdk<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(s) => format!(
            "{}: {}",
            s.code().unwrap_or("error"),
            s.message().unwrap_or_default()
        ),
        None => aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string(),
    }
}

fn conditional_failed<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

fn chunk_name(unit: &str, chunks: &str, i: usize) -> String {
    format!("c|{unit}|{chunks}|{i}")
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn bytes(item: &HashMap<String, AttributeValue>) -> Option<Vec<u8>> {
    Some(item.get("d")?.as_b().ok()?.as_ref().to_vec())
}

impl DynamoUnits {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoUnits {
        DynamoUnits {
            client,
            table: table.into(),
        }
    }

    /// A client from the environment (credentials, `AWS_REGION`), at `endpoint` when given
    /// (LocalStack, moto).
    pub async fn from_env(table: &str, endpoint: Option<&str>) -> DynamoUnits {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(url) = endpoint {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        DynamoUnits::new(Client::new(&config), table)
    }

    /// Reads items by `unit`, strongly consistent, retrying what DynamoDB leaves unprocessed.
    async fn get_items(
        &self,
        names: &[String],
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut found = Vec::new();
        for chunk in names.chunks(BATCH_GET) {
            let keys: Vec<HashMap<String, AttributeValue>> = chunk
                .iter()
                .map(|n| HashMap::from([("unit".to_owned(), AttributeValue::S(n.clone()))]))
                .collect();
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(unavailable)?,
            );
            let mut delay = Duration::from_millis(20);
            let mut rounds = 0;
            while let Some(req) = request.take() {
                rounds += 1;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, req)
                    .send()
                    .await
                    .map_err(|e| StoreError::Unavailable(sdk(&e)))?;
                if let Some(mut r) = out.responses
                    && let Some(items) = r.remove(&self.table)
                {
                    found.extend(items);
                }
                request = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|k| !k.keys.is_empty());
                if request.is_some() {
                    if rounds >= 10 {
                        return Err(StoreError::Unavailable(
                            "BatchGetItem left keys unprocessed 10 times".into(),
                        ));
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
        Ok(found)
    }

    async fn write_one(&self, w: Write) -> Result<bool, StoreError> {
        let unit = AttributeValue::S(w.name.clone());
        let ttl = AttributeValue::N(w.expires_at_s.to_string());
        let condition = match w.expected {
            Some(v) => ("#v = :v", Some(AttributeValue::N(v.to_string()))),
            None => ("attribute_not_exists(#u)", None),
        };
        let Some(value) = w.value else {
            let mut del = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key("unit", unit)
                .condition_expression(condition.0);
            del = match condition.1 {
                Some(v) => del
                    .expression_attribute_names("#v", "v")
                    .expression_attribute_values(":v", v),
                None => del.expression_attribute_names("#u", "unit"),
            };
            return match del.send().await {
                Ok(_) => Ok(true),
                Err(e) if conditional_failed(&e) => Ok(false),
                Err(e) => Err(StoreError::Unavailable(sdk(&e))),
            };
        };
        let version = w.expected.map_or(1, |v| v + 1);
        let pieces: Vec<&[u8]> = if value.is_empty() {
            vec![&[]]
        } else {
            value.chunks(CHUNK).collect()
        };
        let chunks = format!("{version}|{:016x}", uuid::Uuid::now_v7().as_u128() as u64);
        for (i, piece) in pieces.iter().enumerate().skip(1) {
            self.client
                .put_item()
                .table_name(&self.table)
                .item("unit", AttributeValue::S(chunk_name(&w.name, &chunks, i)))
                .item("d", AttributeValue::B(Blob::new(piece.to_vec())))
                .item("ttl", ttl.clone())
                .send()
                .await
                .map_err(|e| StoreError::Unavailable(sdk(&e)))?;
        }
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("unit", unit)
            .item("v", AttributeValue::N(version.to_string()))
            .item("n", AttributeValue::N(pieces.len().to_string()))
            .item("c", AttributeValue::S(chunks))
            .item("d", AttributeValue::B(Blob::new(pieces[0].to_vec())))
            .item("ttl", ttl)
            .condition_expression(condition.0);
        put = match condition.1 {
            Some(v) => put
                .expression_attribute_names("#v", "v")
                .expression_attribute_values(":v", v),
            None => put.expression_attribute_names("#u", "unit"),
        };
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if conditional_failed(&e) => Ok(false),
            Err(e) => Err(StoreError::Unavailable(sdk(&e))),
        }
    }
}

#[async_trait]
impl UnitStore for DynamoUnits {
    async fn load(&self, names: &[String]) -> Result<HashMap<String, Stored>, StoreError> {
        let items = self.get_items(names).await?;
        let now_s = pitboss_model::Timestamp::now().as_millis() / 1000;
        let mut out = HashMap::with_capacity(items.len());
        let mut chunked: Vec<(String, String, usize)> = Vec::new();
        for item in items {
            let (Some(AttributeValue::S(name)), Some(version)) =
                (item.get("unit"), number(&item, "v"))
            else {
                continue;
            };
            let expired = number(&item, "ttl").is_some_and(|t| (t as i64) < now_s);
            let d = bytes(&item).filter(|_| !expired).unwrap_or_default();
            let n = number(&item, "n").unwrap_or(1) as usize;
            if n > 1 && !expired {
                match item.get("c").and_then(|c| c.as_s().ok()) {
                    Some(c) => chunked.push((name.clone(), c.clone(), n)),
                    None => {
                        out.insert(
                            name.clone(),
                            Stored {
                                version,
                                bytes: Vec::new(),
                            },
                        );
                        continue;
                    }
                }
            }
            out.insert(name.clone(), Stored { version, bytes: d });
        }
        if !chunked.is_empty() {
            let names: Vec<String> = chunked
                .iter()
                .flat_map(|(u, c, n)| (1..*n).map(move |i| chunk_name(u, c, i)))
                .collect();
            let pieces: HashMap<String, Vec<u8>> = self
                .get_items(&names)
                .await?
                .into_iter()
                .filter_map(|item| match (item.get("unit"), bytes(&item)) {
                    (Some(AttributeValue::S(n)), Some(d)) => Some((n.clone(), d)),
                    _ => None,
                })
                .collect();
            for (unit, chunks, n) in chunked {
                let Some(stored) = out.get_mut(&unit) else {
                    continue;
                };
                for i in 1..n {
                    match pieces.get(&chunk_name(&unit, &chunks, i)) {
                        Some(p) => stored.bytes.extend_from_slice(p),
                        None => {
                            tracing::warn!(%unit, %chunks, "a chunk of the unit is gone; it starts empty");
                            stored.bytes.clear();
                            break;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    async fn save(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let results: Vec<bool> = futures::stream::iter(writes)
            .map(|w| self.write_one(w))
            .buffer_unordered(CONCURRENT_WRITES)
            .try_collect()
            .await?;
        let conflicts = results.iter().filter(|ok| !**ok).count();
        if conflicts > 0 {
            return Err(StoreError::Conflict(conflicts));
        }
        Ok(())
    }
}
