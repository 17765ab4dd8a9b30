//! The QUIC endpoint: one per agent, serving and dialling, mutual TLS.
//!
//! Every connection, whichever side opened it, is served the same way:
//! datagrams and unidirectional streams carry SWIM packets and RTT pings,
//! bidirectional streams carry anti-entropy and proxied requests. The
//! transport only moves bytes; what they mean is for the receivers of the
//! [`Inbound`] channels.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hasher;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::Bytes;
use hkdf::Hkdf;
use mesh_proto::gossip::{DatagramKind, StreamKind, MAX_STREAM_PACKET};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::crypto::{CryptoError, HmacKey};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{
    AsyncUdpSocket, Connection, ConnectionError, ConnectionId, ConnectionIdGenerator, Endpoint,
    RecvStream, SendStream, UdpPoller,
};
use sha2::Sha256;
use tokio::sync::{mpsc, OnceCell};
use tracing::{debug, warn};

use crate::link_shim::{LinkRules, ShimSocket};
use crate::metrics;
use crate::tls::{ClusterTrust, CLUSTER_SERVER_NAME};

/// A bidirectional stream a peer opened, with its kind already read.
pub struct InboundStream {
    /// What the stream is for.
    pub kind: StreamKind,
    /// The connection it arrived on.
    pub connection: Connection,
    /// Our sending half.
    pub send: SendStream,
    /// Our receiving half, positioned after the kind byte.
    pub recv: RecvStream,
}

/// Where received traffic goes.
#[derive(Clone)]
pub struct Inbound {
    /// SWIM packets, for the membership task.
    pub swim: mpsc::Sender<Bytes>,
    /// RTT pings and pongs with the connection they came on.
    pub rtt: mpsc::Sender<(DatagramKind, Bytes, Connection)>,
    /// Bidirectional streams (sync, proxy).
    pub streams: mpsc::Sender<InboundStream>,
}

/// Timings of the QUIC layer.
#[derive(Debug, Clone, Copy)]
pub struct TransportTimings {
    /// Give up dialling a peer after this long.
    pub connect_timeout: Duration,
    /// Close a connection that has been silent this long.
    pub idle_timeout: Duration,
    /// Send a keep-alive when nothing else was sent for this long.
    pub keep_alive: Duration,
}

type Slot = Arc<OnceCell<Connection>>;

/// Application close code: membership declared the peer down.
const PEER_DOWN: u32 = 2;

/// The agent's QUIC endpoint and its connection cache.
pub struct Transport {
    endpoint: Endpoint,
    client_config: quinn::ClientConfig,
    connections: Mutex<HashMap<SocketAddr, Slot>>,
    inbound: Inbound,
    timings: TransportTimings,
    failure_log: PeerLog,
    known_peers: Arc<KnownPeers>,
}

impl Transport {
    /// Binds the endpoint on `bind` (through the link shim when rules exist).
    pub fn bind(
        bind: SocketAddr,
        trust: &ClusterTrust,
        rules: LinkRules,
        timings: TransportTimings,
        inbound: Inbound,
    ) -> anyhow::Result<Arc<Self>> {
        let mut transport_config = quinn::TransportConfig::default();
        transport_config
            .max_idle_timeout(Some(
                timings
                    .idle_timeout
                    .try_into()
                    .map_err(|_| anyhow!("idle timeout out of range"))?,
            ))
            .keep_alive_interval(Some(timings.keep_alive))
            .max_concurrent_bidi_streams(4096u32.into())
            .max_concurrent_uni_streams(1024u32.into())
            .datagram_receive_buffer_size(Some(4 * 1024 * 1024));
        let transport_config = Arc::new(transport_config);

        let server_crypto = QuicServerConfig::try_from(trust.server_config()?)
            .map_err(|e| anyhow!("TLS server config unusable for QUIC: {e}"))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport_config.clone());

        let client_crypto = QuicClientConfig::try_from(trust.client_config()?)
            .map_err(|e| anyhow!("TLS client config unusable for QUIC: {e}"))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport_config);

        let socket = std::net::UdpSocket::bind(bind).map_err(|e| {
            anyhow!(
                "cannot bind the QUIC endpoint on {bind} (UDP): {e}; choose a free --bind address"
            )
        })?;
        let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
        let socket = runtime
            .wrap_udp_socket(socket)
            .context("cannot wrap the UDP socket")?;
        let socket: Arc<dyn quinn::AsyncUdpSocket> = if rules.is_empty() {
            socket
        } else {
            Arc::new(ShimSocket::new(socket, rules))
        };
        let keys = EndpointKeys::derive(&trust.endpoint_secret)?;
        let known_peers = Arc::new(KnownPeers::default());
        let socket = Arc::new(GuardedSocket {
            inner: socket,
            cids: keys.cids,
            known_peers: known_peers.clone(),
            log: PeerLog::default(),
        });
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(keys.reset));
        endpoint_config.cid_generator(move || Box::new(keys.cids));
        let endpoint = Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server_config),
            socket,
            runtime,
        )
        .context("cannot start the QUIC endpoint")?;

        let transport = Arc::new(Self {
            endpoint,
            client_config,
            connections: Mutex::new(HashMap::new()),
            inbound,
            timings,
            failure_log: PeerLog::default(),
            known_peers,
        });
        tokio::spawn(accept_loop(transport.clone()));
        Ok(transport)
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .context("QUIC endpoint has no address")
    }

    /// A live connection to `addr`, dialling it if there is none. Concurrent
    /// callers share one dial.
    pub async fn connection(self: &Arc<Self>, addr: SocketAddr) -> anyhow::Result<Connection> {
        let slot = {
            let mut connections = self.lock_connections();
            let slot = connections.entry(addr).or_default();
            if slot.get().is_some_and(|c| c.close_reason().is_some()) {
                *slot = Arc::default();
            }
            slot.clone()
        };
        let connection = slot.get_or_try_init(|| self.dial(addr)).await?.clone();
        Ok(connection)
    }

    /// The cached connection to `addr`, if one is live (no dialling).
    pub fn cached(&self, addr: SocketAddr) -> Option<Connection> {
        let connections = self.lock_connections();
        connections
            .get(&addr)?
            .get()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    async fn dial(self: &Arc<Self>, addr: SocketAddr) -> anyhow::Result<Connection> {
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, CLUSTER_SERVER_NAME)
            .with_context(|| format!("cannot dial {addr}"))?;
        let connection = match tokio::time::timeout(self.timings.connect_timeout, connecting).await
        {
            Err(_) => {
                return Err(anyhow!(
                    "no answer from {addr} within {:?}",
                    self.timings.connect_timeout
                ))
            }
            Ok(Err(e)) => {
                self.note_failed_handshake(addr, &e);
                return Err(anyhow!("handshake with {addr} failed: {e}"));
            }
            Ok(Ok(connection)) => connection,
        };
        self.known_peers.insert(addr);
        tokio::spawn(serve_connection(self.clone(), connection.clone()));
        Ok(connection)
    }

    /// Sends one SWIM packet to `addr`: as a datagram when it fits, else on a
    /// unidirectional stream.
    pub async fn send_swim(
        self: &Arc<Self>,
        addr: SocketAddr,
        packet: &[u8],
    ) -> anyhow::Result<()> {
        let connection = self.connection(addr).await?;
        let fits = connection
            .max_datagram_size()
            .is_some_and(|max| packet.len() < max);
        metrics::gossip_packet("out", packet.len());
        if fits {
            let mut datagram = Vec::with_capacity(packet.len() + 1);
            datagram.push(DatagramKind::Swim as u8);
            datagram.extend_from_slice(packet);
            connection
                .send_datagram(Bytes::from(datagram))
                .with_context(|| format!("cannot send a datagram to {addr}"))?;
        } else {
            let mut stream = connection.open_uni().await?;
            stream.write_all(&[StreamKind::Swim as u8]).await?;
            stream.write_all(packet).await?;
            stream.finish()?;
        }
        Ok(())
    }

    /// Opens a bidirectional stream of `kind` to `addr`.
    pub async fn open_stream(
        self: &Arc<Self>,
        addr: SocketAddr,
        kind: StreamKind,
    ) -> anyhow::Result<(SendStream, RecvStream, Connection)> {
        let connection = self.connection(addr).await?;
        let (mut send, recv) = connection
            .open_bi()
            .await
            .with_context(|| format!("cannot open a stream to {addr}"))?;
        send.write_all(&[kind as u8]).await?;
        Ok((send, recv, connection))
    }

    /// Closes the connection to `addr`, if any: the peer was declared down,
    /// so requests still waiting on it fail now (and safe ones are retried
    /// elsewhere) instead of when the idle timeout finally notices.
    pub fn close_peer(&self, addr: SocketAddr) {
        let slot = self.lock_connections().remove(&addr);
        if let Some(connection) = slot.as_ref().and_then(|s| s.get()) {
            connection.close(PEER_DOWN.into(), b"peer declared down");
        }
    }

    /// Closes every connection and waits briefly for the close to be sent.
    pub async fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"agent stopping");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Slot>> {
        // A poisoned cache only means a panic elsewhere; its data is still valid.
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember_incoming(&self, connection: &Connection) {
        let slot = Arc::new(OnceCell::new_with(Some(connection.clone())));
        let mut connections = self.lock_connections();
        let replace = connections
            .get(&connection.remote_address())
            .is_none_or(|s| s.get().is_none_or(|c| c.close_reason().is_some()));
        if replace {
            connections.insert(connection.remote_address(), slot);
        }
    }

    fn forget(&self, connection: &Connection) {
        let mut connections = self.lock_connections();
        let addr = connection.remote_address();
        if connections
            .get(&addr)
            .and_then(|s| s.get())
            .is_some_and(|c| c.stable_id() == connection.stable_id())
        {
            connections.remove(&addr);
        }
    }

    /// Counts a handshake the TLS or QUIC layer refused (another passphrase
    /// or CA, an incompatible peer), and logs it at most once per peer per
    /// minute. Silence, resets and deliberate closes are not refusals.
    fn note_failed_handshake(&self, peer: SocketAddr, error: &ConnectionError) {
        if !is_refusal(error) {
            debug!(%peer, %error, "QUIC connection attempt ended");
            return;
        }
        metrics::handshake_failure();
        if self.failure_log.due(peer) {
            warn!(%peer, %error, "QUIC handshake failed (wrong passphrase or CA?); ignoring this peer; logged at most once a minute per peer");
        }
    }
}

/// True for a handshake refused by the TLS or QUIC layer, on either side.
fn is_refusal(error: &ConnectionError) -> bool {
    match error {
        ConnectionError::TransportError(_) | ConnectionError::VersionMismatch => true,
        ConnectionError::ConnectionClosed(_) => is_tls_alert(error),
        _ => false,
    }
}

async fn accept_loop(transport: Arc<Transport>) {
    while let Some(incoming) = transport.endpoint.accept().await {
        let transport = transport.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            match incoming.await {
                Ok(connection) => {
                    transport.known_peers.insert(peer);
                    transport.remember_incoming(&connection);
                    serve_connection(transport, connection).await;
                }
                Err(e) => transport.note_failed_handshake(peer, &e),
            }
        });
    }
}

/// Serves one connection until it closes.
async fn serve_connection(transport: Arc<Transport>, connection: Connection) {
    let datagrams = read_datagrams(transport.inbound.clone(), connection.clone());
    let uni = accept_uni(transport.inbound.clone(), connection.clone());
    let bi = accept_bi(transport.inbound.clone(), connection.clone());
    tokio::join!(datagrams, uni, bi);
    transport.forget(&connection);
    // In TLS 1.3 the client finishes first; a server that then rejects our
    // certificate closes the connection with a TLS alert.
    if let Some(reason) = connection.close_reason().filter(is_tls_alert) {
        transport.note_failed_handshake(connection.remote_address(), &reason);
    }
    debug!(peer = %connection.remote_address(), reason = ?connection.close_reason(), "connection closed");
}

/// True when the peer closed the connection with a TLS alert (a crypto error code).
fn is_tls_alert(reason: &ConnectionError) -> bool {
    matches!(reason, ConnectionError::ConnectionClosed(close)
        if (0x100..0x200).contains(&u64::from(close.error_code)))
}

async fn read_datagrams(inbound: Inbound, connection: Connection) {
    while let Ok(datagram) = connection.read_datagram().await {
        let Some((&tag, _)) = datagram.split_first() else {
            metrics::decode_error();
            continue;
        };
        let body = datagram.slice(1..);
        match DatagramKind::from_byte(tag) {
            Some(DatagramKind::Swim) => {
                metrics::gossip_packet("in", body.len());
                // A full queue means the membership task is behind: dropping
                // is what UDP would do, and SWIM tolerates it.
                let _ = inbound.swim.try_send(body);
            }
            Some(kind @ (DatagramKind::Ping | DatagramKind::Pong)) => {
                let _ = inbound.rtt.try_send((kind, body, connection.clone()));
            }
            None => metrics::decode_error(),
        }
    }
}

async fn accept_uni(inbound: Inbound, connection: Connection) {
    while let Ok(mut stream) = connection.accept_uni().await {
        let inbound = inbound.clone();
        tokio::spawn(async move {
            let Ok(bytes) = stream.read_to_end(MAX_STREAM_PACKET + 1).await else {
                metrics::decode_error();
                return;
            };
            match bytes.split_first() {
                Some((&tag, body)) if StreamKind::from_byte(tag) == Some(StreamKind::Swim) => {
                    metrics::gossip_packet("in", body.len());
                    let _ = inbound.swim.send(Bytes::copy_from_slice(body)).await;
                }
                _ => metrics::decode_error(),
            }
        });
    }
}

async fn accept_bi(inbound: Inbound, connection: Connection) {
    while let Ok((send, mut recv)) = connection.accept_bi().await {
        let inbound = inbound.clone();
        let connection = connection.clone();
        tokio::spawn(async move {
            let mut tag = [0u8; 1];
            if recv.read_exact(&mut tag).await.is_err() {
                return;
            }
            match StreamKind::from_byte(tag[0]) {
                Some(kind @ (StreamKind::Sync | StreamKind::Proxy | StreamKind::Hello)) => {
                    let _ = inbound
                        .streams
                        .send(InboundStream {
                            kind,
                            connection,
                            send,
                            recv,
                        })
                        .await;
                }
                _ => metrics::decode_error(),
            }
        });
    }
}

// === impl PeerLog ===

/// Remembers when each peer was last logged about, so a misbehaving peer is
/// logged at most once a minute however often it misbehaves.
#[derive(Default)]
struct PeerLog {
    last: Mutex<HashMap<SocketAddr, Instant>>,
}

impl PeerLog {
    const EVERY: Duration = Duration::from_secs(60);
    /// Peers remembered at most; past it, stale entries are dropped, and
    /// if that is not enough, new peers go unlogged (they are still counted).
    const MAX_PEERS: usize = 4096;

    /// True when `peer` may be logged now (and records that it was).
    fn due(&self, peer: SocketAddr) -> bool {
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
struct KnownPeers {
    addrs: Mutex<HashSet<SocketAddr>>,
}

impl KnownPeers {
    /// Enough for any cluster; past it, new peers are simply not remembered.
    const MAX: usize = 65_536;

    fn insert(&self, addr: SocketAddr) {
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
struct EndpointKeys {
    cids: KeyedCids,
    reset: ResetKey,
}

impl EndpointKeys {
    fn derive(secret: &[u8; 32]) -> anyhow::Result<Self> {
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
struct KeyedCids {
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
struct ResetKey([u8; 32]);

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
struct GuardedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    cids: KeyedCids,
    known_peers: Arc<KnownPeers>,
    log: PeerLog,
}

impl fmt::Debug for GuardedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardedSocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl GuardedSocket {
    fn inspect(&self, meta: &RecvMeta, buf: &[u8]) {
        let data = buf.get(..meta.len).unwrap_or(buf);
        if data.is_empty() {
            self.refuse(meta.addr, "empty datagram");
            return;
        }
        // With GRO, one buffer holds several datagrams `stride` apart.
        for datagram in data.chunks(meta.stride.max(1)) {
            // The peer lookup takes a lock, so only suspicious datagrams pay for it.
            let verdict = check_datagram(datagram, &self.cids, false).or_else(|_| {
                check_datagram(datagram, &self.cids, self.known_peers.contains(&meta.addr))
            });
            if let Err(why) = verdict {
                self.refuse(meta.addr, why);
            }
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
        cx: &mut TaskContext,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &polled {
            for (buf, meta) in bufs.iter().zip(meta.iter()).take(*n) {
                self.inspect(meta, buf);
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
