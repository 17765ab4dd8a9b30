//! Joining: learn each `--join` target's identity over a Hello stream and
//! announce ourselves to it, retrying with capped exponential backoff until
//! one answers. After that foca's periodic announces keep us in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use mesh_proto::codec;
use mesh_proto::gossip::StreamKind;
use mesh_proto::NodeIdentity;
use tracing::{info, warn};

use crate::membership::Membership;
use crate::transport::Transport;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long an announce may go unanswered before it is sent again.
const ANNOUNCE_ANSWER: Duration = Duration::from_secs(2);
/// Largest Hello answer accepted.
pub const MAX_HELLO: usize = 1024;

/// What joining uses.
pub struct Joiner {
    /// `--join` targets (host:port, resolved on every attempt).
    pub targets: Vec<String>,
    /// This node's identity (never joined through itself).
    pub identity: NodeIdentity,
    /// The address the QUIC endpoint is bound to.
    pub bound: SocketAddr,
    /// Where the announce goes.
    pub membership: Membership,
    /// Hello streams.
    pub transport: Arc<Transport>,
}

/// Joins through the configured targets; returns once one answered.
pub async fn run(agent: Joiner) {
    if agent.targets.is_empty() {
        return;
    }
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut joined = false;
        for target in &agent.targets {
            match join_one(&agent, target).await {
                Ok(peer) => {
                    info!(%target, peer = %peer.node_id, "joined the cluster");
                    joined = true;
                }
                Err(e) if attempt == 1 || attempt.is_multiple_of(10) => {
                    warn!(%target, error = %e, attempt, "cannot join yet; retrying with backoff")
                }
                Err(_) => {}
            }
        }
        // The announce and its answer are single datagrams: if either was
        // lost, nobody knows us and foca's periodic announces (to known
        // members only) cannot repair it, so only a member in our table counts.
        if joined && admitted(&agent, ANNOUNCE_ANSWER).await {
            return;
        }
        if joined {
            warn!(
                attempt,
                "announced but no member answered; announcing again"
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Whether the membership table holds a member within `within`.
async fn admitted(agent: &Joiner, within: Duration) -> bool {
    let mut active = agent.membership.active();
    let wait = active.wait_for(|members| !members.is_empty());
    let answered = tokio::time::timeout(within, wait).await;
    matches!(answered, Ok(Ok(_)))
}

async fn join_one(agent: &Joiner, target: &str) -> anyhow::Result<NodeIdentity> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("cannot resolve {target}"))?
        .collect();
    let mut last_error = anyhow!("{target} resolved to no address");
    for addr in addrs {
        if addr == agent.bound || addr == agent.identity.addr {
            continue;
        }
        match hello(&agent.transport, addr).await {
            Ok(peer) if peer.node_id == agent.identity.node_id => {
                last_error = anyhow!("{target} is this node itself");
            }
            Ok(peer) => {
                agent.membership.announce(peer.clone()).await;
                return Ok(peer);
            }
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// Asks the agent at `addr` who it is.
pub async fn hello(transport: &Arc<Transport>, addr: SocketAddr) -> anyhow::Result<NodeIdentity> {
    let (mut send, mut recv, connection) = transport.open_stream(addr, StreamKind::Hello).await?;
    send.finish()?;
    let bytes = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(MAX_HELLO))
        .await
        .map_err(|_| anyhow!("{addr} did not answer hello"))??;
    let identity: NodeIdentity =
        codec::decode(&bytes, MAX_HELLO).map_err(|e| anyhow!("bad hello from {addr}: {e}"))?;
    // The seed's id must be the one its certificate was issued to.
    let certified = crate::tls::peer_node_id(&connection);
    crate::tls::check_claimed_id(certified.as_deref(), identity.node_id.as_str())
        .map_err(|e| anyhow!("{addr}: {e}"))?;
    Ok(identity)
}
