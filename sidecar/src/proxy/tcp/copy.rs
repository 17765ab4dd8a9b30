//! Copying a TCP connection's bytes both ways, to a local instance or
//! through a QUIC tunnel, with half-close passed on and failures reset.
//!
//! Toward a tunnel, what is read from TCP goes to quinn as the `Bytes` it
//! was read into (`write_chunk`): tokio's generic copy copied each byte once
//! more, out of its copy buffer into quinn's (bench/README "TCP bulk").
//!
//! Memory stays flat when one side never reads: a direction holds at most
//! one [`READ_SIZE`] buffer, and quinn takes a chunk only within the
//! stream's flow-control credit, so a stalled reader stalls the writer.

use std::io;

use bytes::BytesMut;
use quinn::{RecvStream, SendStream, VarInt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::transport::StreamLease;

/// Bytes read from TCP at most per read: bulk transfers move in large
/// writes (a 1 MB redis value took 128 writes per hop at tokio's default
/// 8 KiB), and memory stays bounded per connection.
const READ_SIZE: usize = 64 * 1024;
/// QUIC error code sent when the local side of a tunnel failed.
const RESET_CODE: u32 = 1;

/// The two halves of a tunnel's QUIC stream and its hold on the connection.
pub(super) struct Tunnel {
    pub recv: RecvStream,
    pub send: SendStream,
    pub lease: StreamLease,
}

/// Bytes copied: (TCP side → other side, other side → TCP side).
pub(super) type Counts = (u64, u64);

/// Copies between `tcp` and another TCP connection (an instance on this
/// node) until both directions are done. EOF on one side shuts down the
/// other's write half; an error resets both (RST instead of FIN).
pub(super) async fn tcp_to_tcp(
    mut tcp: TcpStream,
    mut other: TcpStream,
) -> (io::Result<()>, Counts) {
    match tokio::io::copy_bidirectional_with_sizes(&mut tcp, &mut other, READ_SIZE, READ_SIZE).await
    {
        Ok(counts) => (Ok(()), counts),
        Err(e) => {
            let _ = tcp.set_zero_linger();
            let _ = other.set_zero_linger();
            (Err(e), (0, 0))
        }
    }
}

/// Copies between `tcp` and a QUIC tunnel until both directions are done.
/// EOF from TCP finishes the QUIC send half, the end of the QUIC stream
/// shuts down TCP's write half; an error on either side resets the other
/// (a QUIC reset and stop, a TCP RST).
pub(super) async fn tcp_to_tunnel(mut tcp: TcpStream, tunnel: Tunnel) -> (io::Result<()>, Counts) {
    // The lease holds the connection open until the copy, and any reset
    // below, is done.
    let Tunnel {
        mut recv,
        mut send,
        lease: _lease,
    } = tunnel;
    let (mut tcp_read, mut tcp_write) = tcp.split();
    let up = async {
        let mut total = 0u64;
        let mut buf = BytesMut::new();
        loop {
            // Small reads share one allocation; a chunk quinn still holds
            // (unacknowledged) keeps only its own part of it alive.
            buf.reserve(READ_SIZE);
            let n = tcp_read.read_buf(&mut buf).await?;
            if n == 0 {
                send.finish().map_err(io::Error::other)?;
                return Ok::<u64, io::Error>(total);
            }
            total += n as u64;
            send.write_chunk(buf.split().freeze()).await?;
        }
    };
    let down = async {
        let mut total = 0u64;
        // Not `read_chunk`: it hands out one QUIC frame (about 1.4 KB) at a
        // time, and a write per frame cost the receiving agent twice the CPU.
        let mut buf = vec![0u8; READ_SIZE];
        while let Some(n) = recv.read(&mut buf).await? {
            tcp_write.write_all(&buf[..n]).await?;
            total += n as u64;
        }
        tcp_write.shutdown().await?;
        Ok::<u64, io::Error>(total)
    };
    match tokio::try_join!(up, down) {
        Ok(counts) => (Ok(()), counts),
        Err(e) => {
            let _ = send.reset(VarInt::from_u32(RESET_CODE));
            let _ = recv.stop(VarInt::from_u32(RESET_CODE));
            let _ = tcp.set_zero_linger();
            (Err(e), (0, 0))
        }
    }
}
