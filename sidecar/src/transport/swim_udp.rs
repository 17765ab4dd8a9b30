//! SWIM packets as plain UDP datagrams on the QUIC endpoint's socket,
//! sealed with the cluster's key (ChaCha20-Poly1305, as memberlist seals its
//! UDP packets with AES-GCM).
//!
//! Why not QUIC datagrams: a QUIC datagram needs a connection, and SWIM
//! talks to a different random member on every probe. Over QUIC that meant
//! either a connection to every member (a full mesh: keep-alives, state and
//! memory growing with the cluster) or a handshake per probe. A sealed UDP
//! packet costs one datagram each way and no state, so the cost of
//! membership per node stays independent of the cluster's size.
//!
//! On the wire: one tag byte whose two high bits are clear (no QUIC v1
//! packet has them clear, so the endpoint's guard tells the two apart from
//! the first byte and quinn drops ours as not QUIC), a random 96-bit nonce,
//! then the sealed packet and its 16-byte tag.

use std::net::SocketAddr;

use bytes::Bytes;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

/// First byte of a sealed SWIM datagram.
pub const TAG: u8 = 0x1d;
/// Bytes a sealed datagram adds to the packet.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 16;

/// The cluster key, ready to seal and open.
pub struct SwimKey(LessSafeKey);

impl SwimKey {
    /// The key from its 32 bytes (`ClusterTrust::gossip_key`).
    pub fn new(bytes: &[u8; 32]) -> Option<Self> {
        UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .ok()
            .map(|k| Self(LessSafeKey::new(k)))
    }

    /// Seals `packet` into a datagram.
    pub fn seal(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut out = Vec::with_capacity(packet.len() + OVERHEAD);
        out.push(TAG);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(packet);
        let (head, body) = out.split_at_mut(1 + NONCE_LEN);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(&head[..1]),
                body,
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    /// Opens a datagram sealed with this key; None when it is not ours
    /// (another cluster's key, garbage, or tampered with).
    pub fn open(&self, datagram: &[u8]) -> Option<Bytes> {
        if datagram.len() < OVERHEAD || datagram[0] != TAG {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&datagram[1..1 + NONCE_LEN]).ok()?;
        let mut body = datagram[1 + NONCE_LEN..].to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(&datagram[..1]), &mut body)
            .ok()?;
        let len = plain.len();
        body.truncate(len);
        Some(Bytes::from(body))
    }
}

/// A sealed datagram's source and its opened packet.
pub type Received = (SocketAddr, Bytes);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_packet_opens_only_with_the_same_key() {
        let ours = SwimKey::new(&[1u8; 32]).expect("key");
        let theirs = SwimKey::new(&[2u8; 32]).expect("key");
        let sealed = ours.seal(b"swim packet").expect("sealed");
        assert_eq!(sealed[0], TAG);
        assert_eq!(sealed.len(), b"swim packet".len() + OVERHEAD);
        assert_eq!(ours.open(&sealed).as_deref(), Some(&b"swim packet"[..]));
        assert_eq!(theirs.open(&sealed), None, "another cluster's key");
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(ours.open(&tampered), None, "tampered");
        assert_eq!(ours.open(&sealed[..10]), None, "truncated");
    }

    #[test]
    fn the_tag_is_never_a_quic_packet() {
        // QUIC v1 sets the fixed bit (0x40) in every packet; long headers
        // also set 0x80.
        assert_eq!(TAG & 0xc0, 0);
    }
}
