//! The endpoint's guard: what makes a datagram or a handshake a stranger's
//! rather than a peer's, counted and logged at most once a minute per
//! source; and the keys behind connection ids and stateless resets, stable
//! across restarts of a node.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hasher;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use hkdf::Hkdf;
use quinn::crypto::{CryptoError, HmacKey};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, ConnectionId, ConnectionIdGenerator, UdpPoller};
use sha2::Sha256;
use tracing::warn;

use tokio::sync::mpsc;

use super::swim_udp::{self, SwimKey};
use crate::metrics;

// === impl PeerLog ===

/// Remembers when each peer was last logged about, so a misbehaving peer is
/// logged at most once a minute however often it misbehaves.
#[derive(Default)]
pub(super) struct PeerLog {
    last: Mutex<HashMap<SocketAddr, Instant>>,
}

impl PeerLog {
    const EVERY: Duration = Duration::from_secs(60);
    /// Peers remembered at most; past it, stale entries are dropped, and
    /// if that is not enough, new peers go unlogged (they are still counted).
    const MAX_PEERS: usize = 4096;

    /// True when `peer` may be logged now (and records that it was).
    pub(super) fn due(&self, peer: SocketAddr) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last
            .get(&peer)
            .is_some_and(|at| now.duration_since(*at) < Self::EVERY)
        {
            return false;
        }
        if last.len() >= Self::MAX_PEERS && !last.contains_key(&peer) {
            last.retain(|_, at| now.duration_since(*at) < Self::EVERY);
            if last.len() >= Self::MAX_PEERS {
                return false;
            }
        }
        last.insert(peer, now);
        true
    }
}

// === impl KnownPeers ===

/// Addresses this endpoint completed a handshake with during this run.
#[derive(Default)]
pub(super) struct KnownPeers {
    addrs: Mutex<HashSet<SocketAddr>>,
}

impl KnownPeers {
    /// Enough for any cluster; past it, new peers are simply not remembered.
    const MAX: usize = 65_536;

    pub(super) fn insert(&self, addr: SocketAddr) {
        let mut addrs = self.addrs.lock().unwrap_or_else(|p| p.into_inner());
        if addrs.len() < Self::MAX {
            addrs.insert(addr);
        }
    }

    fn contains(&self, addr: &SocketAddr) -> bool {
        let addrs = self.addrs.lock().unwrap_or_else(|p| p.into_inner());
        addrs.contains(addr)
    }
}

// === impl EndpointKeys ===

/// The keys behind connection ids and stateless resets, derived from the
/// node's endpoint secret so they survive a restart: packets still in
/// flight for a connection of the previous run are recognised as ours (and
/// answered with a stateless reset the peer can verify) rather than taken
/// for garbage.
pub(super) struct EndpointKeys {
    pub(super) cids: KeyedCids,
    pub(super) reset: ResetKey,
}

impl EndpointKeys {
    pub(super) fn derive(secret: &[u8; 32]) -> anyhow::Result<Self> {
        let hk = Hkdf::<Sha256>::new(None, secret);
        let mut cid_key = [0u8; 8];
        let mut reset_key = [0u8; 32];
        hk.expand(b"connection ids", &mut cid_key)
            .and_then(|()| hk.expand(b"stateless reset", &mut reset_key))
            .map_err(|_| anyhow!("HKDF refused a short output"))?;
        Ok(Self {
            cids: KeyedCids {
                key: u64::from_le_bytes(cid_key),
            },
            reset: ResetKey(reset_key),
        })
    }
}

/// Connection ids of 8 bytes: a random nonce and a keyed hash of it, so an
/// incoming packet can be checked cheaply for naming one of our connections.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyedCids {
    key: u64,
}

impl KeyedCids {
    const NONCE: usize = 4;
    const LEN: usize = 8;

    fn signature(&self, nonce: &[u8]) -> [u8; Self::LEN - Self::NONCE] {
        // SipHash keyed by our secret; not cryptographic proof, a cheap filter.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        hasher.write_u64(self.key);
        hasher.write(nonce);
        let hash = hasher.finish().to_le_bytes();
        let mut out = [0u8; Self::LEN - Self::NONCE];
        out.copy_from_slice(&hash[..Self::LEN - Self::NONCE]);
        out
    }

    /// True when `cid` could have been issued by this endpoint.
    fn is_ours(&self, cid: &[u8]) -> bool {
        cid.len() == Self::LEN && cid[Self::NONCE..] == self.signature(&cid[..Self::NONCE])
    }
}

impl ConnectionIdGenerator for KeyedCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut cid = [0u8; Self::LEN];
        let nonce: [u8; Self::NONCE] = rand::random();
        cid[..Self::NONCE].copy_from_slice(&nonce);
        cid[Self::NONCE..].copy_from_slice(&self.signature(&nonce));
        ConnectionId::new(&cid)
    }

    fn cid_len(&self) -> usize {
        Self::LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// HMAC-SHA256 key for stateless-reset tokens (HKDF-Extract is HMAC).
pub(super) struct ResetKey([u8; 32]);

impl ResetKey {
    fn mac(&self, data: &[u8]) -> [u8; 32] {
        let (prk, _) = Hkdf::<Sha256>::extract(Some(&self.0), data);
        prk.into()
    }
}

impl HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = self.mac(data);
        let n = signature_out.len().min(mac.len());
        signature_out[..n].copy_from_slice(&mac[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let mac = self.mac(data);
        let differ = signature.len() != mac.len()
            || signature
                .iter()
                .zip(mac.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0;
        if differ {
            Err(CryptoError)
        } else {
            Ok(())
        }
    }
}

// === impl GuardedSocket ===

/// Smallest UDP payload of a client's first flight (RFC 9000 §14.1).
const MIN_INITIAL_DATAGRAM: usize = 1200;
/// QUIC versions quinn speaks.
const QUIC_VERSIONS: &[u32] = &[
    0x0000_0001,
    0xff00_001d,
    0xff00_001e,
    0xff00_001f,
    0xff00_0020,
    0xff00_0021,
    0xff00_0022,
];

/// Smallest stateless reset (RFC 9000 §10.3): 5 bytes, then a 16-byte token.
const MIN_STATELESS_RESET: usize = 21;

/// Why a datagram cannot be QUIC meant for this endpoint, or `Ok` when it may be.
///
/// Only the first packet's header is read. A packet must name one of our
/// connection ids, except a client's first flight (Initial or 0-RTT), which
/// names an id of the client's choosing and is then padded to 1200 bytes,
/// and a stateless reset from a peer we had a connection with (it looks
/// like a short-header packet with random bytes; `known_peer` says whether
/// the source is such a peer).
fn check_datagram(data: &[u8], cids: &KeyedCids, known_peer: bool) -> Result<(), &'static str> {
    let first = *data.first().ok_or("empty datagram")?;
    if first & 0x80 == 0 {
        // Short header: flags, then our 8-byte connection id.
        let cid = data.get(1..1 + KeyedCids::LEN).ok_or("truncated packet")?;
        let maybe_reset = known_peer && data.len() >= MIN_STATELESS_RESET;
        return if cids.is_ours(cid) || maybe_reset {
            Ok(())
        } else {
            Err("unknown connection id")
        };
    }
    // Long header: flags, version, dcid length, dcid, ...
    let version = data
        .get(1..5)
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map(u32::from_be_bytes)
        .ok_or("truncated header")?;
    let dcid_len = usize::from(*data.get(5).ok_or("truncated header")?);
    let dcid = data.get(6..6 + dcid_len).ok_or("truncated header")?;
    if version == 0 {
        // Version negotiation: an answer to a packet of ours.
        return if cids.is_ours(dcid) {
            Ok(())
        } else {
            Err("unsolicited version negotiation")
        };
    }
    if !QUIC_VERSIONS.contains(&version) {
        return Err("unsupported QUIC version");
    }
    if dcid_len > 20 {
        return Err("connection id longer than 20 bytes");
    }
    let first_flight = matches!((first >> 4) & 0b11, 0 | 1);
    if cids.is_ours(dcid) || (first_flight && data.len() >= MIN_INITIAL_DATAGRAM) {
        Ok(())
    } else if first_flight {
        Err("undersized initial packet")
    } else {
        Err("unknown connection id")
    }
}

/// The endpoint's UDP socket, watched: every datagram that cannot be QUIC
/// for this endpoint is counted in `gossamer_decode_errors_total` and
/// logged at most once a minute per source. quinn then drops it as usual.
pub(super) struct GuardedSocket {
    pub(super) inner: Arc<dyn AsyncUdpSocket>,
    pub(super) cids: KeyedCids,
    pub(super) known_peers: Arc<KnownPeers>,
    pub(super) log: PeerLog,
    /// Sealed SWIM datagrams are opened here and handed to membership
    /// (None when SWIM rides QUIC datagrams: no cluster key).
    pub(super) swim: Option<(Arc<SwimKey>, mpsc::Sender<super::SwimPacket>)>,
    /// Set when the transport shuts down: sealed SWIM stops both ways, as
    /// QUIC's does when the endpoint closes (quinn keeps polling the socket
    /// until the last handle goes, and a stopped node must not answer).
    pub(super) swim_closed: AtomicBool,
}

impl fmt::Debug for GuardedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedSocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl GuardedSocket {
    /// Takes the sealed SWIM datagrams out of a received buffer: true when
    /// every datagram in it was one (then quinn must not see it).
    fn take_swim(&self, meta: &RecvMeta, buf: &[u8]) -> bool {
        let Some((key, packets)) = &self.swim else {
            return false;
        };
        let closed = self.swim_closed.load(Ordering::Relaxed);
        let data = buf.get(..meta.len).unwrap_or(buf);
        let mut all = !data.is_empty();
        for datagram in data.chunks(meta.stride.max(1)) {
            if datagram.first() != Some(&swim_udp::TAG) {
                all = false;
                continue;
            }
            match key.open(datagram) {
                Some(_) if closed => {}
                Some(packet) => {
                    metrics::gossip_packet("in", packet.len());
                    // A full queue means the membership task is behind:
                    // dropping is what UDP would do, and SWIM tolerates it.
                    // Sealed with the cluster's key: only the passphrase
                    // vouches for the sender, so nothing binds its source.
                    let _ = packets.try_send(super::SwimPacket {
                        bytes: packet,
                        certified: super::Certified::Unbound,
                        from: meta.addr,
                    });
                }
                None => self.refuse_sealed(meta.addr),
            }
        }
        all
    }

    /// Sends one sealed SWIM datagram (dropped if the socket is full, as
    /// UDP would).
    pub(super) fn send_swim(&self, to: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        if self.swim_closed.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.inner.try_send(&Transmit {
            destination: to,
            ecn: None,
            contents: datagram,
            segment_size: None,
            src_ip: None,
        })
    }

    fn inspect(&self, meta: &RecvMeta, buf: &[u8]) {
        let data = buf.get(..meta.len).unwrap_or(buf);
        if data.is_empty() {
            self.refuse(meta.addr, "empty datagram");
            return;
        }
        // With GRO, one buffer holds several datagrams `stride` apart.
        for datagram in data.chunks(meta.stride.max(1)) {
            if self.swim.is_some() && datagram.first() == Some(&swim_udp::TAG) {
                continue; // opened by take_swim
            }
            // The peer lookup takes a lock, so only suspicious datagrams pay for it.
            let verdict = check_datagram(datagram, &self.cids, false).or_else(|_| {
                check_datagram(datagram, &self.cids, self.known_peers.contains(&meta.addr))
            });
            if let Err(why) = verdict {
                self.refuse(meta.addr, why);
            }
        }
    }

    /// A datagram tagged as sealed SWIM that does not open with our key:
    /// most likely a node given another passphrase, so it counts as a
    /// failed authentication, as its QUIC handshake would.
    fn refuse_sealed(&self, source: SocketAddr) {
        metrics::handshake_failure();
        if self.log.due(source) {
            warn!(%source, "dropped a SWIM packet not sealed with this cluster's key: a node with another passphrase, or garbage; check the passphrase of the node at that address; logged at most once a minute per source");
        }
    }

    fn refuse(&self, source: SocketAddr, why: &str) {
        metrics::decode_error();
        if self.log.due(source) {
            warn!(%source, reason = why, "dropped a UDP datagram that is not QUIC for this agent (garbage, or a stale peer); logged at most once a minute per source");
        }
    }
}

impl AsyncUdpSocket for GuardedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &polled {
            for (buf, meta) in bufs.iter().zip(meta.iter_mut()).take(*n) {
                if self.take_swim(meta, buf) {
                    // quinn reads nothing from an empty buffer.
                    meta.len = 0;
                } else {
                    self.inspect(meta, buf);
                }
            }
        }
        polled
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cids() -> KeyedCids {
        EndpointKeys::derive(&[7u8; 32]).expect("keys").cids
    }

    #[test]
    fn our_connection_ids_validate_and_others_do_not() {
        let mut ours = cids();
        for _ in 0..100 {
            let cid = ours.generate_cid();
            assert!(ours.is_ours(&cid));
        }
        let theirs = EndpointKeys::derive(&[8u8; 32]).expect("keys").cids;
        let cid = ours.generate_cid();
        assert!(!theirs.is_ours(&cid));
        assert!(!ours.is_ours(&cid[..7]));
    }

    #[test]
    fn garbage_is_refused_and_plausible_quic_is_not() {
        let mut gen = cids();
        let cid = gen.generate_cid();
        let refused = |data: &[u8]| check_datagram(data, &gen, false).is_err();
        // Garbage of every shape.
        assert!(refused(b""));
        assert!(refused(b"x"));
        assert!(refused(b"garbage, not QUIC at all"));
        assert!(refused(&[0xff; 1300]));
        assert!(refused(&[0u8; 64]));
        // A short-header packet naming one of our connection ids.
        let mut short = vec![0x40];
        short.extend_from_slice(&cid);
        short.extend_from_slice(&[0u8; 30]);
        assert!(!refused(&short));
        // A client's Initial: its own id, padded to 1200 bytes, or too short.
        let mut initial = vec![0xc0, 0, 0, 0, 1, 8];
        initial.extend_from_slice(&[9u8; 8]);
        let mut padded = initial.clone();
        padded.resize(1200, 0);
        assert!(!refused(&padded));
        assert!(refused(&initial));
        // A Handshake packet must name one of ours.
        let mut handshake = vec![0xe0, 0, 0, 0, 1, 8];
        handshake.extend_from_slice(&cid);
        handshake.resize(100, 0);
        assert!(!refused(&handshake));
        handshake[6] ^= 1;
        assert!(refused(&handshake));
        // A stateless reset (random bytes) is let through from a peer we know.
        let reset = [0x4au8; 40];
        assert!(refused(&reset));
        assert!(check_datagram(&reset, &gen, true).is_ok());
        assert!(check_datagram(&reset[..20], &gen, true).is_err());
        // An unknown version.
        let mut future = vec![0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8];
        future.resize(1200, 0);
        assert!(refused(&future));
    }

    #[test]
    fn reset_tokens_verify_only_with_the_same_key() {
        let a = EndpointKeys::derive(&[1u8; 32]).expect("keys").reset;
        let b = EndpointKeys::derive(&[2u8; 32]).expect("keys").reset;
        let mut token = [0u8; 32];
        a.sign(b"cid", &mut token);
        assert!(a.verify(b"cid", &token).is_ok());
        assert!(a.verify(b"other", &token).is_err());
        assert!(b.verify(b"cid", &token).is_err());
        assert!(a.verify(b"cid", &token[..16]).is_err());
    }

    #[test]
    fn a_peer_is_logged_at_most_once_a_minute() {
        let log = PeerLog::default();
        let peer: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        assert!(log.due(peer));
        assert!(!log.due(peer));
        assert!(log.due("127.0.0.1:10".parse().expect("addr")));
    }
}
