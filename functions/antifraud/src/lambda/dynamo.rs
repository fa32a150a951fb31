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
//! A batch's writes go in `TransactWriteItems` of up to 100 conditional actions (and ~3.5 MB),
//! so the units of a batch that fit in one transaction are written all or none; one unit whose
//! version changed cancels its transaction (reported as a conflict: the batch is evaluated
//! again). A transaction costs one call, at twice the write units of single writes.
//!
//! A unit that cannot be read whole — its TTL passed (DynamoDB deletes expired items late and in
//! any order), or a chunk is gone — loads as an empty unit at its version: the rule starts that
//! key empty and the next write replaces the item (rather than failing every retry).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, KeysAndAttributes, Put, TransactWriteItem};
use futures::{StreamExt, TryStreamExt};

use super::{StoreError, Stored, UnitStore, Write};

/// Bytes per item (DynamoDB's limit is 400 KB per item, names included).
pub const CHUNK: usize = 350_000;
/// Keys per `BatchGetItem` (DynamoDB's limit).
const BATCH_GET: usize = 100;
/// Chunk writes in flight at once.
const CONCURRENT_WRITES: usize = 16;
/// A batch's unit writes go in transactions of at most this many actions (DynamoDB's limit)…
const TRANSACTION_ITEMS: usize = 100;
/// …and about this many bytes (DynamoDB's limit is 4 MB per transaction).
const TRANSACTION_BYTES: usize = 3_500_000;
/// Transactions in flight at once.
const CONCURRENT_TRANSACTIONS: usize = 4;

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

/// A chunk item: its name, bytes and expiry (seconds).
type Chunk = (String, Vec<u8>, i64);

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

    /// The chunk items a write puts first (unconditionally: their names are unique to this
    /// write), and the conditional action on the unit's own item.
    fn prepare(&self, w: Write) -> Result<(Vec<Chunk>, TransactWriteItem, usize), StoreError> {
        let ttl = AttributeValue::N(w.expires_at_s.to_string());
        let (condition, values) = match w.expected {
            Some(v) => (
                "#v = :v",
                Some(HashMap::from([(
                    ":v".to_owned(),
                    AttributeValue::N(v.to_string()),
                )])),
            ),
            None => ("attribute_not_exists(#u)", None),
        };
        let names = match w.expected {
            Some(_) => HashMap::from([("#v".to_owned(), "v".to_owned())]),
            None => HashMap::from([("#u".to_owned(), "unit".to_owned())]),
        };
        let key = HashMap::from([("unit".to_owned(), AttributeValue::S(w.name.clone()))]);
        let Some(value) = w.value else {
            let delete = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key))
                .condition_expression(condition)
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(values)
                .build()
                .map_err(unavailable)?;
            return Ok((
                Vec::new(),
                TransactWriteItem::builder().delete(delete).build(),
                w.name.len() + 64,
            ));
        };
        let version = w.expected.map_or(1, |v| v + 1);
        let pieces: Vec<&[u8]> = if value.is_empty() {
            vec![&[]]
        } else {
            value.chunks(CHUNK).collect()
        };
        let chunks = format!("{version}|{:016x}", uuid::Uuid::now_v7().as_u128() as u64);
        let extra: Vec<Chunk> = pieces
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, p)| (chunk_name(&w.name, &chunks, i), p.to_vec(), w.expires_at_s))
            .collect();
        let size = w.name.len() + pieces[0].len() + chunks.len() + 96;
        let mut item = key;
        item.insert("v".into(), AttributeValue::N(version.to_string()));
        item.insert("n".into(), AttributeValue::N(pieces.len().to_string()));
        item.insert("c".into(), AttributeValue::S(chunks));
        item.insert("d".into(), AttributeValue::B(Blob::new(pieces[0].to_vec())));
        item.insert("ttl".into(), ttl);
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(values)
            .build()
            .map_err(unavailable)?;
        Ok((extra, TransactWriteItem::builder().put(put).build(), size))
    }

    async fn put_chunk(
        &self,
        (name, bytes, expires_at_s): (String, Vec<u8>, i64),
    ) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("unit", AttributeValue::S(name))
            .item("d", AttributeValue::B(Blob::new(bytes)))
            .item("ttl", AttributeValue::N(expires_at_s.to_string()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(sdk(&e)))
    }

    /// One transaction; `Ok(n)`: n of its actions found their unit changed (then none of them
    /// was applied).
    async fn transact(&self, actions: Vec<TransactWriteItem>) -> Result<usize, StoreError> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await
        {
            Ok(_) => Ok(0),
            Err(e) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(c)) =
                    e.as_service_error()
                {
                    let conflicts = c
                        .cancellation_reasons()
                        .iter()
                        .filter(|r| {
                            matches!(
                                r.code(),
                                Some("ConditionalCheckFailed" | "TransactionConflict")
                            )
                        })
                        .count();
                    if conflicts > 0 {
                        return Ok(conflicts);
                    }
                }
                Err(StoreError::Unavailable(sdk(&e)))
            }
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
        let mut chunks = Vec::new();
        let mut transactions: Vec<Vec<TransactWriteItem>> = vec![Vec::new()];
        let mut size = 0;
        for w in writes {
            let (extra, action, bytes) = self.prepare(w)?;
            chunks.extend(extra);
            let full = transactions.last().is_some_and(|t| {
                t.len() >= TRANSACTION_ITEMS || (!t.is_empty() && size + bytes > TRANSACTION_BYTES)
            });
            if full {
                transactions.push(Vec::new());
                size = 0;
            }
            size += bytes;
            if let Some(t) = transactions.last_mut() {
                t.push(action);
            }
        }
        futures::stream::iter(chunks)
            .map(|c| self.put_chunk(c))
            .buffer_unordered(CONCURRENT_WRITES)
            .try_collect::<Vec<()>>()
            .await?;
        let conflicts: Vec<usize> =
            futures::stream::iter(transactions.into_iter().filter(|t| !t.is_empty()))
                .map(|t| self.transact(t))
                .buffer_unordered(CONCURRENT_TRANSACTIONS)
                .try_collect()
                .await?;
        let conflicts: usize = conflicts.into_iter().sum();
        if conflicts > 0 {
            return Err(StoreError::Conflict(conflicts));
        }
        Ok(())
    }
}
