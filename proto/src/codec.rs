//! The gRPC codec of the generated services: prost's, except that a request message that is
//! not valid protobuf is the client's fault — INVALID_ARGUMENT with the ingest API's
//! `unreadable_body` code (in the message and in the `pitboss-error-code` metadata), where
//! tonic-prost answers INTERNAL. (The generated client decodes replies with it too; a reply
//! that does not decode then reads the same way.)

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

impl<U: Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
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
