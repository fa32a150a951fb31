//! The header envelope: Kinesis records have no headers, so a record's [`Headers`] travel
//! inside its data blob, in front of the body.
//!
//! ```text
//! 0x00 'P' 'B' 0x01                      magic (format 1)
//! varint  header count
//! count × (varint name length, name (UTF-8), varint value length, value)
//! body                                   the rest of the blob
//! ```
//!
//! Varints are LEB128 (7 bits a byte, low bits first), as in protobuf. No protobuf message can
//! start with a 0x00 byte (field number 0 is not a valid tag) and no JSON text can either, so a
//! blob written without an envelope — before headers existed, or by another producer — is told
//! apart by its first four bytes and read as it is: no headers, the whole blob as the value.
//!
//! A record without headers is written without an envelope (it costs nothing), unless its
//! value itself starts with the magic: then it gets an envelope with no headers, so that it
//! reads back unchanged.
//!
//! A blob that starts with the magic but does not parse (truncated, a length past the end,
//! a name that is not UTF-8) is **delivered, not dropped**: with no headers and the raw blob,
//! magic included, as its value, a warning logged and
//! `pitboss_bus_corrupt_envelopes_total{topic}` counted. Bad input never crashes a consumer
//! and is never silently dropped: the value does not decode as an event (it starts with 0x00),
//! so the consumer's decoder sends the untouched bytes to the dead-letter topic, where they can
//! be examined.

use crate::Headers;

/// First bytes of an enveloped blob: a 0x00 byte no protobuf message or JSON text starts with,
/// `PB`, and the format version.
pub const MAGIC: [u8; 4] = [0x00, b'P', b'B', 0x01];

/// Why an enveloped blob could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("the envelope ends inside its headers")]
    Truncated,
    #[error("a varint of the envelope is longer than 64 bits")]
    VarintOverflow,
    #[error("a header name of the envelope is not UTF-8")]
    NameNotUtf8,
}

/// Size of the blob [`encode`] writes for these headers and this value.
pub fn encoded_len(headers: &Headers, value: &[u8]) -> usize {
    if !needs_envelope(headers, value) {
        return value.len();
    }
    let fields: usize = headers
        .iter()
        .map(|(n, v)| varint_len(n.len()) + n.len() + varint_len(v.len()) + v.len())
        .sum();
    MAGIC.len() + varint_len(headers.len()) + fields + value.len()
}

/// The data blob of a record: the value alone (moved, not copied) when there are no headers
/// and the value does not itself look like an envelope, else the envelope and the value.
pub fn encode(headers: &Headers, value: Vec<u8>) -> Vec<u8> {
    if !needs_envelope(headers, &value) {
        return value;
    }
    let mut out = Vec::with_capacity(encoded_len(headers, &value));
    out.extend_from_slice(&MAGIC);
    put_varint(&mut out, headers.len() as u64);
    for (name, v) in headers.iter() {
        put_varint(&mut out, name.len() as u64);
        out.extend_from_slice(name.as_bytes());
        put_varint(&mut out, v.len() as u64);
        out.extend_from_slice(v);
    }
    out.extend_from_slice(&value);
    out
}

/// Reads the envelope of `blob`: `Ok(None)` when there is none (the whole blob is the value),
/// else the headers and the offset where the body starts.
pub fn decode(blob: &[u8]) -> Result<Option<(Headers, usize)>, EnvelopeError> {
    let Some(mut rest) = blob.strip_prefix(MAGIC.as_slice()) else {
        return Ok(None);
    };
    let count = take_varint(&mut rest)?;
    // Every header takes at least two bytes (two zero lengths): a count beyond that is a lie,
    // found before anything is allocated for it.
    if count > (rest.len() / 2) as u64 {
        return Err(EnvelopeError::Truncated);
    }
    let mut headers = Headers::new();
    for _ in 0..count {
        let name = take_bytes(&mut rest)?;
        let name = std::str::from_utf8(name).map_err(|_| EnvelopeError::NameNotUtf8)?;
        let value = take_bytes(&mut rest)?;
        headers.insert(name, value);
    }
    Ok(Some((headers, blob.len() - rest.len())))
}

/// Headers and value of a record read from `topic`, with the policy of this module for
/// corrupt envelopes (see the module documentation). Takes the blob to reuse its buffer.
pub fn open(topic: &str, mut blob: Vec<u8>) -> (Headers, Vec<u8>) {
    match decode(&blob) {
        Ok(None) => (Headers::new(), blob),
        Ok(Some((headers, body))) => {
            blob.drain(..body);
            (headers, blob)
        }
        Err(error) => {
            tracing::warn!(topic, %error, bytes = blob.len(), "corrupt header envelope; the record is delivered as it is, without headers");
            metrics::counter!("pitboss_bus_corrupt_envelopes_total", "topic" => topic.to_owned())
                .increment(1);
            (Headers::new(), blob)
        }
    }
}

fn needs_envelope(headers: &Headers, value: &[u8]) -> bool {
    !headers.is_empty() || value.starts_with(&MAGIC)
}

fn varint_len(v: usize) -> usize {
    let bits = usize::BITS - v.leading_zeros();
    (bits.max(1) as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(rest: &mut &[u8]) -> Result<u64, EnvelopeError> {
    let mut v = 0u64;
    for (i, &b) in rest.iter().enumerate() {
        let shift = 7 * i as u32;
        if shift >= 64 || (shift == 63 && b > 1) {
            return Err(EnvelopeError::VarintOverflow);
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            *rest = &rest[i + 1..];
            return Ok(v);
        }
    }
    Err(EnvelopeError::Truncated)
}

fn take_bytes<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], EnvelopeError> {
    let len = take_varint(rest)?;
    let len = usize::try_from(len).map_err(|_| EnvelopeError::Truncated)?;
    if len > rest.len() {
        return Err(EnvelopeError::Truncated);
    }
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header;
    use proptest::prelude::*;

    fn sample() -> Headers {
        Headers::new()
            .with(header::TYPE, "bet_placed")
            .with(header::TENANT, "t1")
            .with(header::EVENT_TIME, "1712345678901")
            .with("empty", Vec::new())
            .with(header::TYPE, vec![0u8, 255, 1]) // a repeated name, a binary value
    }

    fn round_trip(headers: &Headers, value: &[u8]) -> (Headers, Vec<u8>) {
        let blob = encode(headers, value.to_vec());
        assert_eq!(
            blob.len(),
            encoded_len(headers, value),
            "encoded_len is exact"
        );
        open("t", blob)
    }

    #[test]
    fn headers_and_value_round_trip_in_order() {
        let (headers, value) = round_trip(&sample(), b"\x0a\x03abc");
        assert_eq!(headers, sample());
        assert_eq!(value, b"\x0a\x03abc");
        assert_eq!(headers.get_str(header::TYPE), Some("bet_placed"));
    }

    #[test]
    fn a_record_without_headers_has_no_envelope() {
        let blob = encode(&Headers::new(), b"{\"a\":1}".to_vec());
        assert_eq!(blob, b"{\"a\":1}");
        assert_eq!(encoded_len(&Headers::new(), b"xyz"), 3);
    }

    #[test]
    fn a_legacy_blob_is_the_value_with_no_headers() {
        for legacy in [
            &b""[..],
            b"\x0a\x05hello",
            b"{\"type\":\"bet\"}",
            b"\x00",
            b"\x00P",
            b"\x00PB",
            b"\x00PB\x02 a later format",
        ] {
            assert_eq!(decode(legacy), Ok(None), "{legacy:?}");
            assert_eq!(
                open("t", legacy.to_vec()),
                (Headers::new(), legacy.to_vec())
            );
        }
    }

    #[test]
    fn a_value_that_looks_like_an_envelope_reads_back_unchanged() {
        let tricky = [&MAGIC[..], b"\x01\x01a\x01b rest"].concat();
        let blob = encode(&Headers::new(), tricky.clone());
        assert_ne!(blob, tricky, "wrapped in an empty envelope");
        assert_eq!(open("t", blob), (Headers::new(), tricky));
    }

    #[test]
    fn every_cut_inside_the_headers_is_corrupt_and_delivered_raw() {
        let blob = encode(&sample(), b"body".to_vec());
        let body_at = blob.len() - 4;
        for cut in MAGIC.len()..body_at {
            let short = &blob[..cut];
            assert!(decode(short).is_err(), "cut at {cut} must not parse");
            assert_eq!(open("t", short.to_vec()), (Headers::new(), short.to_vec()));
        }
    }

    #[test]
    fn corrupt_envelopes_are_errors_not_panics() {
        let cases: [(&[u8], EnvelopeError); 5] = [
            (b"", EnvelopeError::Truncated),                       // no count
            (b"\x05\x00\x00", EnvelopeError::Truncated),           // 5 headers in 2 bytes
            (b"\x01\x05ab", EnvelopeError::Truncated),             // name past the end
            (b"\x01\x02\xff\xfe\x00", EnvelopeError::NameNotUtf8), // name not UTF-8
            (&[0xff; 11], EnvelopeError::VarintOverflow),          // count of 77 bits
        ];
        for (tail, expected) in cases {
            let blob = [&MAGIC[..], tail].concat();
            assert_eq!(decode(&blob).map(|_| ()), Err(expected), "{tail:?}");
        }
        // The largest length a varint holds: refused before anything is allocated.
        let huge = [&MAGIC[..], b"\x01", &[0xff; 9], b"\x01"].concat();
        assert_eq!(decode(&huge).map(|_| ()), Err(EnvelopeError::Truncated));
    }

    #[test]
    fn varints_match_their_length() {
        for v in [0usize, 1, 127, 128, 300, 16_383, 16_384, usize::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v as u64);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(take_varint(&mut out.as_slice()), Ok(v as u64));
        }
    }

    proptest! {
        #[test]
        fn any_headers_and_value_round_trip(
            pairs in proptest::collection::vec((".{0,12}", proptest::collection::vec(any::<u8>(), 0..40)), 0..6),
            value in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let headers: Headers = pairs.into_iter().collect();
            let (h, v) = round_trip(&headers, &value);
            prop_assert_eq!(h, headers);
            prop_assert_eq!(v, value);
        }

        #[test]
        fn any_blob_after_the_magic_opens_without_panicking(
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let blob = [&MAGIC[..], &tail].concat();
            let (headers, value) = open("t", blob.clone());
            match decode(&blob) {
                Ok(Some((h, at))) => {
                    prop_assert_eq!(headers, h);
                    prop_assert_eq!(value, blob[at..].to_vec());
                }
                Ok(None) => prop_assert!(false, "the magic is there"),
                Err(_) => {
                    prop_assert!(headers.is_empty());
                    prop_assert_eq!(value, blob);
                }
            }
        }
    }
}
