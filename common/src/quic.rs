//! Frames over QUIC streams: the async glue between [`crate::codec`]'s sans-IO decoder and quinn, shared by
//! the agent and the coordinator. Behind the `quic` feature, so the protocol itself stays free of I/O.

use crate::{
    codec::{self, CodecError, FrameDecoder},
    wire::{Request, WireRequest},
};
use serde::{Serialize, de::DeserializeOwned};

/// Largest chunk read from a stream at once.
const READ_CHUNK: usize = 256 * 1024;

/// Kernel buffer a farm UDP socket asks for, each way. The kernel's default (about 208 KiB) overflowed on
/// loopback when 64 answers arrived at once, and every datagram dropped there costs its stream a probe
/// timeout (at least 25 ms); the kernel grants at most `net.core.rmem_max` / `wmem_max`.
pub const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// A UDP socket for a farm endpoint, and the buffers the kernel granted it.
#[derive(Debug)]
pub struct FarmSocket {
    /// The bound socket, non-blocking, for `quinn::Endpoint::new`.
    pub socket: std::net::UdpSocket,
    /// Receive buffer the kernel granted, in bytes (Linux reports twice what it counts as payload).
    pub receive_buffer: usize,
    /// Send buffer the kernel granted, in bytes.
    pub send_buffer: usize,
}

impl FarmSocket {
    /// Binds `addr` and asks for [`SOCKET_BUFFER_BYTES`] each way (a refusal is not an error: the socket
    /// keeps the kernel's size, which [`FarmSocket::small_buffers`] reports).
    pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        socket.bind(&addr.into())?;
        socket.set_nonblocking(true)?;
        let receive_buffer = socket.recv_buffer_size()?;
        let send_buffer = socket.send_buffer_size()?;
        Ok(Self { socket: socket.into(), receive_buffer, send_buffer })
    }

    /// What to tell the operator when the kernel granted less than half of [`SOCKET_BUFFER_BYTES`] either
    /// way (bursts of answers may then be dropped and resent late); `None` when the buffers are large.
    pub fn small_buffers(&self) -> Option<String> {
        let enough = SOCKET_BUFFER_BYTES / 2;
        (self.receive_buffer < enough || self.send_buffer < enough).then(|| {
            format!(
                "the kernel granted UDP buffers of {} KiB (receive) and {} KiB (send), not the {} KiB asked: \
                 bursts of shards may lose datagrams; raise net.core.rmem_max and net.core.wmem_max \
                 (sysctl -w net.core.rmem_max={SOCKET_BUFFER_BYTES} net.core.wmem_max={SOCKET_BUFFER_BYTES})",
                self.receive_buffer / 1024,
                self.send_buffer / 1024,
                SOCKET_BUFFER_BYTES / 1024
            )
        })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_farm_socket_binds_and_reports_what_the_kernel_granted() {
        let bound = FarmSocket::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        assert_ne!(bound.socket.local_addr().expect("local addr").port(), 0);
        assert!(bound.receive_buffer > 0 && bound.send_buffer > 0, "{bound:?}");
        let warning = bound.small_buffers();
        assert_eq!(
            warning.is_some(),
            bound.receive_buffer.min(bound.send_buffer) < SOCKET_BUFFER_BYTES / 2,
            "{warning:?}"
        );
        let small = FarmSocket { receive_buffer: 425_984, send_buffer: 16 << 20, ..bound };
        let warning = small.small_buffers().expect("a 416 KiB receive buffer is small");
        assert!(warning.contains("416 KiB (receive)") && warning.contains("net.core.rmem_max"));
    }
}
