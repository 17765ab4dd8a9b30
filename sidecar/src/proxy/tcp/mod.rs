//! TCP services (`--tcp NAME=LISTEN_ADDR`): a local listener per service.
//! Each accepted connection goes through the same steps as an HTTP request,
//! once per connection: eligible (the definition's RTT requirements) and
//! pick (the service's balancer, which counts open connections as in
//! flight and scores by connect latency), then send: an instance on this
//! node is dialled directly; another node's instance is reached through a
//! bidirectional QUIC stream of kind [`StreamKind::Tcp`] behind the same
//! [`ProxyFrame`] as HTTP. The receiving sidecar connects only to its own
//! instances (never an open relay) and answers one [`TcpStatus`] byte. A
//! connect failure (nothing of the client's sent yet) is retried once on
//! another instance, within the service's retry budget.
//!
//! Bytes are never sniffed. Half-close passes through (EOF on one side
//! finishes the other side's write half); an error on one side resets the
//! other. When no instance meets a hard requirement the connection is
//! closed at once and the reason logged.

mod copy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::select::{Requirements, SelectError};
use mesh_proto::frame::{ProxyFrame, TcpStatus};
use mesh_proto::gossip::StreamKind;
use mesh_proto::Instance;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::{inbound, report, ProxyHandles};
use crate::metrics;
use crate::server::accept_until_stop;
use crate::transport::InboundStream;
use copy::Tunnel;

/// How long dialling an instance (directly, or through its sidecar) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `service` on `listener` until the agent stops. Connections in
/// progress keep going until either side closes them.
pub async fn serve(agent: Arc<ProxyHandles>, service: String, listener: TcpListener) {
    // Bounded labels: the service comes from the agent's own configuration.
    ::metrics::counter!(metrics::TCP_CONNECTIONS, "service" => service.clone(), "upstream_node" => "none").increment(0);
    for direction in ["in", "out"] {
        ::metrics::counter!(metrics::TCP_BYTES, "service" => service.clone(), "direction" => direction).increment(0);
    }
    let mut shutdown = agent.shutdown.clone();
    while let Some((stream, peer)) = accept_until_stop(&listener, &mut shutdown).await {
        let agent = agent.clone();
        let service = service.clone();
        tokio::spawn(async move { connection(&agent, &service, stream, peer).await });
    }
}

/// One accepted connection: pick, connect, copy, report.
async fn connection(agent: &ProxyHandles, service: &str, client: TcpStream, peer: SocketAddr) {
    let snapshot = agent.upstreams.snapshot();
    let requirements =
        agent
            .upstreams
            .effective_requirements(&snapshot, service, Requirements::default());
    let live = agent.upstreams.live_instances(&snapshot, service);
    let candidates = agent.upstreams.candidates(&snapshot, &live);
    // Nothing of the client's has been sent before the connect succeeds, so
    // a connect failure is retried once on another instance (within the
    // service's retry budget), as a connect failure of an HTTP request is.
    let mut tried: Vec<String> = Vec::new();
    let (instance, upstream, connect_latency) = loop {
        let excluded: Vec<&str> = tried.iter().map(String::as_str).collect();
        let pick = agent.upstreams.with(service, |b| {
            b.pick(&candidates, requirements, &excluded, Instant::now())
        });
        let instance = match pick.map(|p| live.get(p.index)) {
            Ok(Some(instance)) => instance,
            Ok(None) => return refuse(service, peer, "selection returned no instance", "retry"),
            Err(_) if !tried.is_empty() => {
                return refuse(
                    service,
                    peer,
                    "no other instance to retry on",
                    "see the failure above",
                );
            }
            Err(e) => {
                if matches!(e, SelectError::NoneWithinHardRtt { .. }) {
                    ::metrics::counter!(metrics::RTT_REJECTIONS, "service" => service.to_owned())
                        .increment(1);
                }
                let reason = if live.is_empty() {
                    format!("no instance of {service:?} is registered on any live node")
                } else {
                    e.message()
                };
                return refuse(service, peer, &reason, e.hint());
            }
        };
        if !tried.is_empty() {
            ::metrics::counter!(metrics::RETRIES, "service" => service.to_owned()).increment(1);
        }
        let started = Instant::now();
        match connect(agent, service, instance).await {
            Ok(upstream) => break (instance, upstream, started.elapsed()),
            Err(reason) => {
                report(agent, service, &instance.id, started.elapsed(), false);
                let node = &instance.node;
                tried.push(instance.id.clone());
                let retry = tried.len() < 2
                    && agent
                        .upstreams
                        .with(service, |b| b.try_retry(Instant::now()));
                if !retry {
                    ::metrics::counter!(metrics::TCP_CONNECTIONS, "service" => service.to_owned(), "upstream_node" => "none").increment(1);
                    warn!(%service, %peer, instance = %instance.id, %node, %reason, "closed a TCP connection: the picked instance could not be reached");
                    return;
                }
                debug!(%service, instance = %instance.id, %node, %reason, "TCP connect failed; trying another instance");
            }
        }
    };
    let node = instance.node.to_string();
    ::metrics::counter!(metrics::TCP_CONNECTIONS, "service" => service.to_owned(), "upstream_node" => node.clone()).increment(1);
    debug!(%service, %peer, instance = %instance.id, %node, ?connect_latency, "TCP connection open");
    // The balancer counts the connection in flight until it closes; its
    // latency sample is the connect time, not the connection's lifetime.
    let (result, counts) = match upstream {
        Upstream::Local(stream) => copy::tcp_to_tcp(client, stream).await,
        Upstream::Remote(tunnel) => copy::tcp_to_tunnel(client, tunnel).await,
    };
    ::metrics::counter!(metrics::TCP_BYTES, "service" => service.to_owned(), "direction" => "out")
        .increment(counts.0);
    ::metrics::counter!(metrics::TCP_BYTES, "service" => service.to_owned(), "direction" => "in")
        .increment(counts.1);
    if let Err(e) = &result {
        debug!(%service, instance = %instance.id, error = %e, "TCP connection ended with an error");
    }
    // Connected counts as a success even if the connection later broke:
    // copy errors do not say which side failed, and a client that resets
    // its connections must not eject a healthy instance. A dead node is
    // taken out by membership; one that refuses connections by the connect
    // failures above.
    report(agent, service, &instance.id, connect_latency, true);
}

fn refuse(service: &str, peer: SocketAddr, reason: &str, hint: &str) {
    ::metrics::counter!(metrics::TCP_CONNECTIONS, "service" => service.to_owned(), "upstream_node" => "none").increment(1);
    warn!(%service, %peer, %reason, %hint, "closed a TCP connection: no instance to send it to");
}

/// Where an accepted connection goes.
enum Upstream {
    Local(TcpStream),
    Remote(Tunnel),
}

async fn connect(
    agent: &ProxyHandles,
    service: &str,
    instance: &Instance,
) -> Result<Upstream, String> {
    if instance.node == *agent.node_id() {
        return match dial(instance.address).await {
            Ok(stream) => Ok(Upstream::Local(stream)),
            Err(e) => {
                agent.health.connect_failed(&instance.id).await;
                Err(e)
            }
        };
    }
    let sidecar = agent
        .upstreams
        .sidecar_addr(&instance.node)
        .ok_or_else(|| format!("node {} left the cluster", instance.node))?;
    let frame = ProxyFrame {
        instance_id: instance.id.clone(),
        address: instance.address,
        service: service.to_owned(),
        timeout_ms: 0,
    };
    let open = async {
        let (mut send, mut recv, _, lease) = agent
            .transport
            .open_stream(sidecar, StreamKind::Tcp)
            .await
            .map_err(|e| e.to_string())?;
        let bytes = frame.encode().map_err(|e| e.to_string())?;
        send.write_all(&bytes).await.map_err(|e| e.to_string())?;
        let mut status = [0u8; 1];
        recv.read_exact(&mut status)
            .await
            .map_err(|e| format!("sidecar {sidecar} closed the tunnel: {e}"))?;
        match TcpStatus::from_byte(status[0]) {
            Some(TcpStatus::Connected) => Ok(Tunnel { recv, send, lease }),
            Some(TcpStatus::Refused) => Err(format!(
                "sidecar {sidecar} has no instance {} (stale catalog)",
                instance.id
            )),
            Some(TcpStatus::ConnectFailed) => Err(format!(
                "instance {} at {} refused the connection on its node",
                instance.id, instance.address
            )),
            None => Err(format!("sidecar {sidecar} answered an unknown status")),
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
        Ok(result) => result.map(Upstream::Remote),
        Err(_) => Err(format!(
            "no tunnel through {sidecar} within {CONNECT_TIMEOUT:?}"
        )),
    }
}

async fn dial(address: SocketAddr) -> Result<TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(format!("connect to {address}: {e}")),
        Err(_) => Err(format!(
            "connect to {address}: no answer within {CONNECT_TIMEOUT:?}"
        )),
    }
}

/// Serves one tunnel a peer sidecar opened: checks the frame names an
/// instance of this node, connects to it, answers the status byte, then
/// copies until both sides are done.
pub async fn serve_stream(
    agent: &Arc<ProxyHandles>,
    mut stream: InboundStream,
) -> anyhow::Result<()> {
    let frame = inbound::read_frame(&mut stream.recv).await?;
    let peer = stream.connection.remote_address();
    if !inbound::is_own_instance(agent, &frame, peer) {
        stream.send.write_all(&[TcpStatus::Refused as u8]).await?;
        stream.send.finish()?;
        return Ok(());
    }
    let instance = match dial(frame.address).await {
        Ok(instance) => instance,
        Err(reason) => {
            agent.health.connect_failed(&frame.instance_id).await;
            warn!(%peer, instance = %frame.instance_id, %reason, "tunnelled TCP connection: the instance refused");
            stream
                .send
                .write_all(&[TcpStatus::ConnectFailed as u8])
                .await?;
            stream.send.finish()?;
            return Ok(());
        }
    };
    stream.send.write_all(&[TcpStatus::Connected as u8]).await?;
    let tunnel = Tunnel {
        recv: stream.recv,
        send: stream.send,
        lease: stream.lease,
    };
    // The instance plays the client's part of the copy here.
    let (result, (sent, received)) = copy::tcp_to_tunnel(instance, tunnel).await;
    debug!(%peer, instance = %frame.instance_id, sent, received, "tunnelled TCP connection closed");
    result.map_err(|e| anyhow::anyhow!("tunnel to {}: {e}", frame.instance_id))
}
