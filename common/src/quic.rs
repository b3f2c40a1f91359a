//! Frames over QUIC streams: the async glue between [`crate::codec`]'s sans-IO decoder and quinn, shared by
//! the agent and the coordinator. Behind the `quic` feature, so the protocol itself stays free of I/O.

use crate::{
    codec::{self, CodecError, FrameDecoder},
    wire::{Request, WireRequest},
};
use serde::{Serialize, de::DeserializeOwned};

/// Largest chunk read from a stream at once.
const READ_CHUNK: usize = 256 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameIoError {
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The stream or connection failed while reading.
    #[error("read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream or connection failed while writing.
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream was already closed.
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
}

/// Reads the next message; `Ok(None)` at a clean end of stream.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder,
) -> Result<Option<T>, FrameIoError> {
    loop {
        if let Some(msg) = dec.next_message::<T>()? {
            return Ok(Some(msg));
        }
        match recv.read_chunk(READ_CHUNK, true).await? {
            Some(chunk) => dec.push(&chunk.bytes),
            None => {
                dec.finish()?;
                return Ok(None);
            }
        }
    }
}

/// Writes one message as a frame.
pub async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), FrameIoError> {
    let frame = codec::encode(msg)?;
    send.write_all(&frame).await?;
    Ok(())
}

/// Makes `request` on a fresh request stream: writes it as the stream's one frame, finishes the send half,
/// and reads the one answer, typed by the request (a [`crate::wire::Response`] of another request's kind is
/// a [`CodecError::Malformed`]). `Ok(None)` when the stream ends without an answer.
pub async fn call<R: WireRequest>(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    request: R,
) -> Result<Option<R::Answer>, FrameIoError> {
    let request: Request = request.into();
    write_frame(send, &request).await?;
    send.finish()?;
    read_frame::<R::Answer>(recv, &mut FrameDecoder::new()).await
}
