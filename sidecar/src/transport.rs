//! The QUIC endpoint: one per agent, serving and dialling, mutual TLS.
//!
//! Every connection, whichever side opened it, is served the same way:
//! datagrams and unidirectional streams carry SWIM packets and RTT pings,
//! bidirectional streams carry anti-entropy and proxied requests. The
//! transport only moves bytes; what they mean is for the receivers of the
//! [`Inbound`] channels. Strangers stop at its edge: the `guard` submodule
//! counts every datagram that is not QUIC for this endpoint and every
//! refused handshake, and logs each source at most once a minute; the
//! `handshakes` submodule bounds what an unauthenticated source can make
//! the endpoint hold (a cap on handshakes in flight, stateless retry, a
//! handshake timeout).
//!
//! Each SWIM packet is handed on with what the certificate of its
//! connection proves about the sender ([`Certified`], read once per
//! connection), so membership can hold the packet's claimed source to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use mesh_proto::gossip::{DatagramKind, StreamKind, MAX_STREAM_PACKET};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream};
use tokio::sync::{mpsc, OnceCell};
use tracing::{debug, warn};

mod guard;
mod handshakes;
mod idle;
mod lease;
pub mod swim_udp;
mod udp_buffers;

use guard::{EndpointKeys, GuardedSocket, KnownPeers, PeerLog};
use handshakes::{Failure, HandshakeGate};
use lease::Leases;
pub use lease::{Leased, StreamLease};
use swim_udp::SwimKey;

pub use crate::core::membership::Certified;
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
    /// Keeps the connection from the idle close while the stream lives
    /// (see [`Leased`]).
    pub lease: StreamLease,
}

/// A SWIM packet and who its connection proves sent it.
#[derive(Debug, Clone)]
pub struct SwimPacket {
    /// The packet (foca's header, updates, broadcasts).
    pub bytes: Bytes,
    /// What the peer's certificate says the sender is.
    pub certified: Certified,
    /// Where the connection comes from, for logs.
    pub from: SocketAddr,
}

/// Where received traffic goes.
#[derive(Clone)]
pub struct Inbound {
    /// SWIM packets, for the membership task.
    pub swim: mpsc::Sender<SwimPacket>,
    /// RTT pings and pongs with the connection they came on.
    pub rtt: mpsc::Sender<(DatagramKind, Bytes, Connection)>,
    /// Bidirectional streams (sync, proxy).
    pub streams: mpsc::Sender<InboundStream>,
}

pub use crate::config::TransportTimings;

type Slot = Arc<OnceCell<Connection>>;

/// Application close code: membership declared the peer down.
const PEER_DOWN: u32 = 2;
/// Application close code: nothing used the connection for a while.
const IDLE: u32 = 3;

/// The agent's QUIC endpoint and its connection cache.
pub struct Transport {
    endpoint: Endpoint,
    client_config: quinn::ClientConfig,
    connections: Mutex<HashMap<SocketAddr, Slot>>,
    inbound: Inbound,
    timings: TransportTimings,
    failure_log: PeerLog,
    known_peers: Arc<KnownPeers>,
    stream_handler: OnceLock<StreamHandler>,
    /// The socket under quinn, for sealed SWIM datagrams.
    socket: Arc<GuardedSocket>,
    /// Set when SWIM travels as sealed UDP rather than QUIC datagrams.
    swim_key: Option<Arc<SwimKey>>,
    /// Streams open on each connection (the idle close leaves those alone).
    leases: Arc<Leases>,
}

/// Serves one inbound bidirectional stream, on the task that accepted it.
pub type StreamHandler =
    Arc<dyn Fn(InboundStream) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

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
            // quinn keeps state for every stream a peer may open, from the
            // start of each connection, and we hold one connection per
            // member: at 4096/1024 that was 0.38 MiB per member (bench/).
            // 512 proxied requests in flight per peer is still ample; more
            // wait for a stream rather than fail.
            .max_concurrent_bidi_streams(512u32.into())
            .max_concurrent_uni_streams(64u32.into())
            .datagram_receive_buffer_size(Some(4 * 1024 * 1024));
        let transport_config = Arc::new(transport_config);

        let server_crypto = QuicServerConfig::try_from(trust.server_config()?)
            .map_err(|e| anyhow!("TLS server config unusable for QUIC: {e}"))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport_config.clone());
        // Bounded state before authentication (see `handshakes`).
        server_config
            .max_incoming(handshakes::MAX_INCOMING)
            .incoming_buffer_size(handshakes::INCOMING_BUFFER)
            .incoming_buffer_size_total(handshakes::INCOMING_BUFFER_TOTAL);

        let client_crypto = QuicClientConfig::try_from(trust.client_config()?)
            .map_err(|e| anyhow!("TLS client config unusable for QUIC: {e}"))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport_config);

        let socket = std::net::UdpSocket::bind(bind).map_err(|e| {
            anyhow!(
                "cannot bind the QUIC endpoint on {bind} (UDP): {e}; choose a free --bind address"
            )
        })?;
        udp_buffers::widen(&socket);
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
        let swim_key = trust
            .gossip_key
            .as_ref()
            .map(|k| SwimKey::new(k).map(Arc::new).context("unusable SWIM key"))
            .transpose()?;
        let socket = Arc::new(GuardedSocket {
            inner: socket,
            cids: keys.cids,
            known_peers: known_peers.clone(),
            log: PeerLog::default(),
            swim: swim_key.clone().map(|k| (k, inbound.swim.clone())),
            swim_closed: std::sync::atomic::AtomicBool::new(false),
        });
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(keys.reset));
        endpoint_config.cid_generator(move || Box::new(keys.cids));
        let endpoint = Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server_config),
            socket.clone(),
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
            stream_handler: OnceLock::new(),
            known_peers,
            socket,
            swim_key,
            leases: Arc::default(),
        });
        tokio::spawn(accept_loop(transport.clone()));
        tokio::spawn(idle::close_idle(
            Arc::downgrade(&transport),
            transport.timings.idle_close,
        ));
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

    /// True when SWIM travels as sealed UDP datagrams ([`Transport::send_swim_udp`]).
    pub fn swim_over_udp(&self) -> bool {
        self.swim_key.is_some()
    }

    /// Sends one SWIM packet to `addr` as a sealed UDP datagram: no
    /// connection, no waiting. Errors when there is no cluster key or the
    /// socket refused it (a full buffer: the packet is lost, as on UDP).
    pub fn send_swim_udp(&self, addr: SocketAddr, packet: &[u8]) -> anyhow::Result<()> {
        let key = self
            .swim_key
            .as_ref()
            .ok_or_else(|| anyhow!("no cluster key: SWIM rides QUIC datagrams"))?;
        let sealed = key
            .seal(packet)
            .ok_or_else(|| anyhow!("cannot seal a SWIM packet"))?;
        metrics::gossip_packet("out", packet.len());
        self.socket
            .send_swim(addr, &sealed)
            .with_context(|| format!("cannot send a SWIM datagram to {addr}"))
    }

    /// Live connections, by peer address (the RTT table samples these).
    pub fn live(&self) -> Vec<(SocketAddr, Connection)> {
        let connections = self.lock_connections();
        connections
            .iter()
            .filter_map(|(addr, slot)| {
                slot.get()
                    .filter(|c| c.close_reason().is_none())
                    .map(|c| (*addr, c.clone()))
            })
            .collect()
    }

    /// Closes the connection to `addr` if it is still `stable_id` and was
    /// idle (the idle sweeper): a later use dials again.
    /// True while a stream of connection `stable_id` is open.
    fn has_open_streams(&self, stable_id: usize) -> bool {
        self.leases.held(stable_id)
    }

    fn close_idle(&self, addr: SocketAddr, stable_id: usize) {
        let mut connections = self.lock_connections();
        let same = connections
            .get(&addr)
            .and_then(|s| s.get())
            .is_some_and(|c| c.stable_id() == stable_id);
        if same {
            if let Some(connection) = connections.remove(&addr).as_ref().and_then(|s| s.get()) {
                connection.close(IDLE.into(), b"idle");
            }
        }
    }

    /// Sends one SWIM packet to `addr` over QUIC: as a datagram when it
    /// fits, else on a unidirectional stream.
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
    ) -> anyhow::Result<(SendStream, RecvStream, Connection, StreamLease)> {
        let connection = self.connection(addr).await?;
        let lease = self.leases.take(connection.stable_id());
        let (mut send, recv) = connection
            .open_bi()
            .await
            .with_context(|| format!("cannot open a stream to {addr}"))?;
        send.write_all(&[kind as u8]).await?;
        Ok((send, recv, connection, lease))
    }

    /// Serves inbound streams with `handler` on the task that accepted each,
    /// from now on: a proxied request reaches its handler without a hop
    /// through a channel and a dispatcher task (one wake-up less per call).
    /// Without a handler, streams go to [`Inbound::streams`].
    pub fn serve_streams_with(&self, handler: StreamHandler) {
        let _ = self.stream_handler.set(handler);
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
        self.socket
            .swim_closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
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

    /// Counts a handshake TLS refused over a certificate (another
    /// passphrase or CA) in `gossamer_handshake_failures_total`, and logs
    /// it at most once per peer per minute. Something that is not a
    /// gossamer peer (another ALPN, malformed) is counted apart, so it does
    /// not read as a misconfigured member; silence, resets and deliberate
    /// closes are not refusals.
    fn note_failed_handshake(&self, peer: SocketAddr, error: &ConnectionError) {
        match handshakes::classify(error) {
            Failure::Credentials => {
                metrics::handshake_failure();
                if self.failure_log.due(peer) {
                    warn!(%peer, %error, "QUIC handshake failed (wrong passphrase or CA?); ignoring this peer; logged at most once a minute per peer");
                }
            }
            Failure::NotGossamer => handshakes::note_not_gossamer(peer, error),
            Failure::Other => debug!(%peer, %error, "QUIC connection attempt ended"),
        }
    }
}

/// Admits incoming handshakes through the gate (see `handshakes`) and
/// serves those that complete.
async fn accept_loop(transport: Arc<Transport>) {
    let gate = Arc::new(HandshakeGate::default());
    let limit = handshakes::handshake_timeout(transport.timings.connect_timeout);
    while let Some(incoming) = transport.endpoint.accept().await {
        let Some((incoming, permit)) = gate.admit(incoming) else {
            continue;
        };
        let transport = transport.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            // Dropping an unfinished handshake closes it and frees its state.
            let handshake = tokio::time::timeout(limit, incoming).await;
            drop(permit);
            match handshake {
                Ok(Ok(connection)) => {
                    transport.known_peers.insert(peer);
                    transport.remember_incoming(&connection);
                    serve_connection(transport, connection).await;
                }
                Ok(Err(e)) => transport.note_failed_handshake(peer, &e),
                Err(_) => gate.timed_out(peer),
            }
        });
    }
}

/// Serves one connection until it closes.
async fn serve_connection(transport: Arc<Transport>, connection: Connection) {
    let certified = certified(&connection);
    let datagrams = read_datagrams(
        transport.inbound.clone(),
        connection.clone(),
        certified.clone(),
    );
    let uni = accept_uni(transport.inbound.clone(), connection.clone(), certified);
    let bi = accept_bi(transport.clone(), connection.clone());
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

/// What the peer's certificate proves about who sends on `connection`.
fn certified(connection: &Connection) -> Certified {
    match crate::tls::peer_binding(connection) {
        Ok(Some(id)) => Certified::Node(id.into()),
        Ok(None) => Certified::Unbound,
        Err(why) => {
            // Membership warns (once) when it refuses the packets.
            debug!(peer = %connection.remote_address(), %why, "a peer's certificate binds no readable node id");
            Certified::Unreadable
        }
    }
}

async fn read_datagrams(inbound: Inbound, connection: Connection, certified: Certified) {
    let from = connection.remote_address();
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
                let _ = inbound.swim.try_send(SwimPacket {
                    bytes: body,
                    certified: certified.clone(),
                    from,
                });
            }
            Some(kind @ (DatagramKind::Ping | DatagramKind::Pong)) => {
                let _ = inbound.rtt.try_send((kind, body, connection.clone()));
            }
            None => metrics::decode_error(),
        }
    }
}

async fn accept_uni(inbound: Inbound, connection: Connection, certified: Certified) {
    let from = connection.remote_address();
    while let Ok(mut stream) = connection.accept_uni().await {
        let inbound = inbound.clone();
        let certified = certified.clone();
        tokio::spawn(async move {
            let Ok(bytes) = stream.read_to_end(MAX_STREAM_PACKET + 1).await else {
                metrics::decode_error();
                return;
            };
            match bytes.split_first() {
                Some((&tag, body)) if StreamKind::from_byte(tag) == Some(StreamKind::Swim) => {
                    metrics::gossip_packet("in", body.len());
                    let packet = SwimPacket {
                        bytes: Bytes::copy_from_slice(body),
                        certified,
                        from,
                    };
                    let _ = inbound.swim.send(packet).await;
                }
                _ => metrics::decode_error(),
            }
        });
    }
}

async fn accept_bi(transport: Arc<Transport>, connection: Connection) {
    while let Ok((send, mut recv)) = connection.accept_bi().await {
        let transport = transport.clone();
        let connection = connection.clone();
        let lease = transport.leases.take(connection.stable_id());
        tokio::spawn(async move {
            let mut tag = [0u8; 1];
            if recv.read_exact(&mut tag).await.is_err() {
                return;
            }
            let kind = match StreamKind::from_byte(tag[0]) {
                Some(
                    kind @ (StreamKind::Sync
                    | StreamKind::Proxy
                    | StreamKind::Hello
                    | StreamKind::Members
                    | StreamKind::Tcp),
                ) => kind,
                _ => return metrics::decode_error(),
            };
            let stream = InboundStream {
                kind,
                connection,
                send,
                recv,
                lease,
            };
            match transport.stream_handler.get() {
                Some(handler) => handler(stream).await,
                None => {
                    let _ = transport.inbound.streams.send(stream).await;
                }
            }
        });
    }
}
