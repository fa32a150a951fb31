//! WebSocket ingest (`GET /v1/ingest/ws`): a backend streams events and gets, for every frame,
//! the same per-event results as `POST /v1/events`, tagged with the frame's sequence number.
//!
//! Frames are handled one at a time and the next frame is read only after the bus has
//! acknowledged the previous one: a slow bus slows the sender down through the socket
//! (backpressure) instead of piling frames up in memory. The logic is generic over
//! `Stream`/`Sink`, so it is tested without a socket.

use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::budget::Held;
use crate::core::BodyFormat;
use crate::http::{AppState, ErrorDetail, IngestResponse, ingest_batch};

/// The answer to one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FrameReply {
    /// 1 for the first frame of the connection, then 2, 3, …
    pub seq: u64,
    #[serde(flatten)]
    pub result: FrameResult,
}

/// Per-event results, or why the whole frame was refused (nothing of it was written).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum FrameResult {
    Done(IngestResponse),
    Failed {
        error: ErrorDetail,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
    },
}

/// One frame read, and what it holds of the body budget when its reads were charged as they
/// came (a socket served by `pitboss_runtime::http::serve`); without, it is charged whole here.
#[derive(Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
    pub held: Option<Held>,
}

impl From<Vec<u8>> for Frame {
    fn from(bytes: Vec<u8>) -> Frame {
        Frame { bytes, held: None }
    }
}

/// Ingests every frame of `frames` (a JSON array of events, or one event) for `tenant`,
/// sending one reply per frame to `replies`, in order. Ends when `frames` ends.
pub async fn serve_frames<S, F, K>(
    state: &AppState,
    tenant: &str,
    mut frames: S,
    mut replies: K,
) -> Result<(), K::Error>
where
    S: Stream<Item = F> + Unpin,
    F: Into<Frame>,
    K: Sink<String> + Unpin,
{
    let mut seq = 0;
    while let Some(frame) = frames.next().await {
        seq += 1;
        let Frame { bytes: frame, held } = frame.into();
        // Held while the frame is worked on (to the end of this turn, its answer sent), it
        // counts against what requests and streams may take meanwhile.
        let (_held, taken) = match held {
            Some(held) => (held, Ok(())),
            None => {
                let held = Held::default();
                let taken = state
                    .body_budget
                    .charge(&held, tenant, frame.len())
                    .map_err(crate::error::IngestError::Overloaded);
                (held, taken)
            }
        };
        let result = match async {
            taken?;
            ingest_batch(state, tenant, &frame, BodyFormat::Json).await
        }
        .await
        {
            Ok(response) => FrameResult::Done(response),
            Err(e) => FrameResult::Failed {
                retry_after_secs: e.retry_after(),
                error: ErrorDetail {
                    code: e.code().into(),
                    message: e.to_string(),
                },
            },
        };
        let text = serde_json::to_string(&FrameReply { seq, result }).unwrap_or_default();
        replies.send(text).await?;
    }
    Ok(())
}
