//! The frame in front of a proxied request on a QUIC stream.
//!
//! After the [`crate::gossip::StreamKind::Proxy`] tag byte comes a 2-byte
//! big-endian length and the encoded [`ProxyFrame`]; then the HTTP/1.1
//! request, byte for byte. The receiving sidecar checks the frame against its
//! own registrations before it opens anything: it is never an open relay.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError, EncodeError};

/// Largest encoded frame accepted.
pub const MAX_FRAME: usize = 1024;

/// Names the instance a proxied request is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyFrame {
    /// Instance id, as in the catalog.
    pub instance_id: String,
    /// Instance address, as in the catalog; must match the local registration.
    pub address: SocketAddr,
    /// Service name, for the receiver's logs and metrics.
    pub service: String,
    /// How long the caller will wait, in ms.
    pub timeout_ms: u32,
}

/// The receiving sidecar's answer on a [`crate::gossip::StreamKind::Tcp`]
/// stream, one byte after the frame: whether the tunnel is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpStatus {
    /// Connected to the instance; bytes follow both ways.
    Connected = 0,
    /// The frame names no instance of the receiving node (never a relay).
    Refused = 1,
    /// The instance did not accept the connection.
    ConnectFailed = 2,
}

impl TcpStatus {
    /// Parses the status byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Connected),
            1 => Some(Self::Refused),
            2 => Some(Self::ConnectFailed),
            _ => None,
        }
    }
}

impl ProxyFrame {
    /// Encodes the frame with its 2-byte length prefix.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let body = codec::encode(self)?;
        let len = u16::try_from(body.len())
            .ok()
            .filter(|len| usize::from(*len) <= MAX_FRAME)
            .ok_or_else(|| EncodeError::too_large(body.len(), MAX_FRAME))?;
        let mut out = Vec::with_capacity(body.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Reads the length prefix: how many frame bytes follow.
    pub fn body_len(prefix: [u8; 2]) -> Result<usize, DecodeError> {
        let len = usize::from(u16::from_be_bytes(prefix));
        if len > MAX_FRAME {
            return Err(DecodeError::TooLarge {
                len,
                limit: MAX_FRAME,
            });
        }
        Ok(len)
    }

    /// Decodes the frame body (after the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(body, MAX_FRAME)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips_through_its_length_prefix() {
        let frame = ProxyFrame {
            instance_id: "echo-1".into(),
            address: "127.0.0.1:8080".parse().expect("addr"),
            service: "echo".into(),
            timeout_ms: 30_000,
        };
        let bytes = frame.encode().expect("encodes");
        let len = ProxyFrame::body_len([bytes[0], bytes[1]]).expect("length");
        assert_eq!(len, bytes.len() - 2);
        assert_eq!(ProxyFrame::decode(&bytes[2..]).expect("decodes"), frame);
        assert!(ProxyFrame::body_len([0xff, 0xff]).is_err());
    }

    #[test]
    fn every_tcp_status_byte_decodes_and_others_do_not() {
        for status in [
            TcpStatus::Connected,
            TcpStatus::Refused,
            TcpStatus::ConnectFailed,
        ] {
            assert_eq!(TcpStatus::from_byte(status as u8), Some(status));
        }
        assert_eq!(TcpStatus::from_byte(3), None);
    }

    #[test]
    fn a_frame_of_exactly_max_frame_bytes_is_accepted() {
        assert_eq!(ProxyFrame::body_len([0x04, 0x00]), Ok(MAX_FRAME));
        assert_eq!(
            ProxyFrame::body_len([0x04, 0x01]),
            Err(DecodeError::TooLarge {
                len: MAX_FRAME + 1,
                limit: MAX_FRAME
            })
        );
    }

    #[test]
    fn wire_limits_are_frozen() {
        // Peers of different builds must agree on these: a smaller limit on
        // one side refuses what the other side sends.
        assert_eq!(MAX_FRAME, 1024);
        assert_eq!(crate::gossip::MAX_SWIM_PACKET, 1178);
        assert_eq!(crate::gossip::MAX_STREAM_PACKET, 65_536);
        assert_eq!(crate::gossip::MAX_SYNC_MESSAGE, 16_777_216);
    }
}
