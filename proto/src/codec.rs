//! The gRPC codec of the generated services: prost's, except that a request message that is
//! not valid protobuf is the client's fault — INVALID_ARGUMENT with the ingest API's
//! `unreadable_body` code (in the message and in the `pitboss-error-code` metadata), where
//! tonic-prost answers INTERNAL. (The generated client decodes replies with it too; a reply
//! that does not decode then reads the same way.)
//!
//! Within a [`BATCH_LIMIT`] scope (the ingest server's), an [`EventBatch`](crate::v1::EventBatch)
//! holding more events than the limit is refused before it is decoded: its events are counted
//! on the wire, skipping their bytes. Decoded first, 20 MiB of empty events (two bytes each on
//! the wire, a few hundred in memory) took gigabytes before the count was checked.

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, EncodeBuf};
use tonic::metadata::MetadataValue;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Metadata key of a failed call's error code (the same codes as the HTTP API's
/// `error.code`).
pub const ERROR_CODE_METADATA: &str = "pitboss-error-code";

/// The code of a message that is not protobuf (a row of the ingest API's error table; a test
/// there checks it is one).
pub const UNREADABLE_CODE: &str = "unreadable_body";

/// The most events an `EventBatch` may hold, and the status refusing one that holds more.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimit {
    /// Events a batch may hold.
    pub max_events: usize,
    /// The status of a batch of `count` events, over `limit`.
    pub refuse: fn(count: usize, limit: usize) -> Status,
}

tokio::task_local! {
    /// The batch limit of the requests decoded within its scope (the ingest server runs each
    /// call in one).
    pub static BATCH_LIMIT: BatchLimit;
}

/// How many length-delimited entries of field `field` the top level of the protobuf message
/// `b` holds: each entry's bytes are skipped, nothing is decoded; groups (wire types 3 and 4,
/// which prost skips whole) are read through to their end. Stops (and counts what it saw) at
/// anything that is not well-formed: the decoder says what is wrong.
pub fn count_entries(mut b: &[u8], field: u64) -> usize {
    use prost::encoding::decode_varint;
    let mut n = 0;
    // Groups open around the current field (entries inside one are not the message's own).
    let mut depth = 0usize;
    while !b.is_empty() {
        let Ok(key) = decode_varint(&mut b) else {
            break;
        };
        let skip = match key & 7 {
            3 => {
                depth += 1;
                0
            }
            4 => {
                if depth == 0 {
                    break;
                }
                depth -= 1;
                0
            }
            0 => {
                if decode_varint(&mut b).is_err() {
                    break;
                }
                0
            }
            1 => 8,
            2 => {
                let Some(len) = decode_varint(&mut b)
                    .ok()
                    .and_then(|l| usize::try_from(l).ok())
                else {
                    break;
                };
                len
            }
            5 => 4,
            _ => break,
        };
        let Some(rest) = b.get(skip..) else {
            break;
        };
        if depth == 0 && key & 7 == 2 && key >> 3 == field {
            n += 1;
        }
        b = rest;
    }
    n
}

/// prost encoding and decoding; see the module docs.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(ProstCodec::default())
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = Encoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Encoder<T> {
        Encoder(tonic::codec::Codec::encoder(&mut self.0))
    }

    fn decoder(&mut self) -> Decoder<U> {
        Decoder(tonic::codec::Codec::decoder(&mut self.0))
    }
}

/// prost's encoder.
#[derive(Debug, Clone, Default)]
pub struct Encoder<T>(ProstEncoder<T>);

impl<T: Message> tonic::codec::Encoder for Encoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        self.0.encode(item, buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// prost's decoder, refusing undecodable bytes as INVALID_ARGUMENT `unreadable_body`.
#[derive(Debug, Clone, Default)]
pub struct Decoder<U>(ProstDecoder<U>);

impl<U: Message + Default + 'static> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if std::any::TypeId::of::<U>() == std::any::TypeId::of::<crate::v1::EventBatch>()
            && let Ok(limit) = BATCH_LIMIT.try_with(|l| *l)
        {
            // The whole message is buffered (tonic waits for its length): one contiguous chunk.
            let count = count_entries(bytes::Buf::chunk(buf), 1);
            if count > limit.max_events {
                return Err((limit.refuse)(count, limit.max_events));
            }
        }
        self.0.decode(buf).map_err(|e| unreadable(e.message()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// The status of a message that is not protobuf.
pub fn unreadable(detail: &str) -> Status {
    let mut status = Status::invalid_argument(format!(
        "{UNREADABLE_CODE}: the message is not valid protobuf: {detail}"
    ));
    status.metadata_mut().insert(
        ERROR_CODE_METADATA,
        MetadataValue::from_static(UNREADABLE_CODE),
    );
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_a_field_are_counted_on_the_wire_whatever_surrounds_them() {
        let event = crate::v1::Event {
            event_id: "e".into(),
            tenant_id: "acme".into(),
            ..Default::default()
        };
        let batch = crate::v1::EventBatch {
            events: vec![event.clone(), crate::v1::Event::default(), event],
        };
        let mut bytes = batch.encode_to_vec();
        assert_eq!(count_entries(&bytes, 1), 3);
        assert_eq!(count_entries(&bytes, 2), 0);
        // Other fields of every wire type in between are skipped.
        bytes.extend([0x10, 0x96, 0x01]); // field 2, varint 150
        bytes.extend([0x19, 1, 2, 3, 4, 5, 6, 7, 8]); // field 3, fixed64
        bytes.extend([0x25, 1, 2, 3, 4]); // field 4, fixed32
        bytes.extend([0x0a, 0x02, 0xff, 0xff]); // field 1 again, two bytes that are not protobuf
        assert_eq!(count_entries(&bytes, 1), 4);
        // A group (field 2) around entries of field 1 is skipped whole, as prost skips it; the
        // entries after it count.
        let mut grouped = vec![0x13, 0x0a, 0x00, 0x0a, 0x00, 0x14];
        grouped.extend([0x0au8, 0x00].repeat(5));
        assert_eq!(count_entries(&grouped, 1), 5);
        let mut leading = vec![0x13, 0x14];
        leading.extend([0x0au8, 0x00].repeat(1_000));
        assert_eq!(count_entries(&leading, 1), 1_000);
        // Cut short or not protobuf: what was seen before.
        assert_eq!(count_entries(&bytes[..bytes.len() - 1], 1), 3);
        assert_eq!(count_entries(&[0x0a, 0xff], 1), 0);
        assert_eq!(count_entries(&[], 1), 0);
        // Two bytes on the wire each: a million of them are counted without decoding one.
        let empties = [0x0au8, 0x00].repeat(1_000_000);
        assert_eq!(count_entries(&empties, 1), 1_000_000);
    }
}
