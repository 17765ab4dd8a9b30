//! Joining: learn each `--join` target's identity over a Hello stream and
//! announce ourselves to it, retrying with capped exponential backoff until
//! one answers. After that foca's periodic announces keep us in.
//!
//! The targets are `--join` and the members this node saw last time
//! ([`remember_members`] keeps them in the data dir, as Serf's snapshot):
//! a node restarted without `--join` (the first node of a cluster, say)
//! finds its peers again, where before it stayed alone and its peers kept
//! it down after a graceful leave (issue 21, row 3).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use mesh_proto::codec;
use mesh_proto::gossip::{
    KnownMember, MemberList, MemberSummary, StreamKind, MAX_MEMBER_LIST_MESSAGE,
};
use mesh_proto::NodeIdentity;
use tracing::{debug, info, warn};

use crate::membership::Membership;
use crate::persist::DataDir;
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
    /// Where to say why the node is not in a cluster, when `--join` was
    /// given (saved members alone may all be gone: being alone is then no
    /// problem).
    pub problem: Option<JoinProblem>,
}

/// Why this node is not in the cluster it was told to join (`/v1/health`
/// reports it as `degraded`; issue 21 row 11: an agent with the wrong
/// passphrase said it was fine while it never joined).
#[derive(Debug, Clone, Default)]
pub struct JoinProblem(Arc<Mutex<Option<String>>>);

impl JoinProblem {
    /// Records what is wrong.
    pub fn set(&self, problem: String) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(problem);
    }

    /// Clears it: the node joined.
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// What is wrong, if anything.
    pub fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
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
        let mut last_error = None;
        for target in &agent.targets {
            match join_one(&agent, target).await {
                Ok(peer) => {
                    info!(%target, peer = %peer.node_id, "joined the cluster");
                    joined = true;
                }
                Err(e) => {
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        warn!(%target, error = %e, attempt, "cannot join yet; retrying with backoff");
                    }
                    last_error = Some(format!("{target}: {e:#}"));
                }
            }
        }
        // The announce and its answer are single datagrams: if either was
        // lost, nobody knows us and foca's periodic announces (to known
        // members only) cannot repair it, so only a member in our table counts.
        if joined && admitted(&agent, ANNOUNCE_ANSWER).await {
            if let Some(problem) = &agent.problem {
                problem.clear();
            }
            return;
        }
        if let Some(problem) = &agent.problem {
            problem.set(format!(
                "not in a cluster: no join target answered after {attempt} attempts (last: {}); check --join and that this node has the cluster's passphrase or CA",
                last_error.as_deref().unwrap_or("announced, but no member answered")
            ));
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

/// Says hello to `target`, announces this node to it and pulls its members;
/// returns the target's identity.
pub async fn join_one(agent: &Joiner, target: &str) -> anyhow::Result<NodeIdentity> {
    let (addr, peer) = identify(agent, target)
        .await?
        .ok_or_else(|| anyhow!("{target} is this node itself"))?;
    agent.membership.announce(peer.clone()).await;
    // The announce's answer names a few dozen members; the rest
    // would trickle in over gossip for a minute at 100 nodes.
    match pull_members(&agent.transport, addr, None).await {
        Ok(members) => agent.membership.learn(members).await,
        Err(e) => {
            debug!(%addr, error = %format!("{e:#}"), "no member list pulled on join (an older agent?); gossip brings the members")
        }
    }
    Ok(peer)
}

/// Which node answers at `target` (a Hello to each address it resolves to
/// until one answers), never this node itself: `Ok(None)` when every
/// address it names is this node's (a `--join` list shared by every node
/// names each of them).
pub async fn identify(
    agent: &Joiner,
    target: &str,
) -> anyhow::Result<Option<(SocketAddr, NodeIdentity)>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("cannot resolve {target}"))?
        .collect();
    if addrs.is_empty() {
        bail!("{target} resolved to no address");
    }
    let mut last_error = None;
    for addr in addrs {
        if addr == agent.bound || addr == agent.identity.addr {
            continue;
        }
        match hello(&agent.transport, addr).await {
            Ok(peer) if peer.node_id == agent.identity.node_id => {}
            Ok(peer) => return Ok(Some((addr, peer))),
            Err(e) => last_error = Some(e),
        }
    }
    last_error.map_or(Ok(None), Err)
}

/// The join targets: `--join` as given, then the saved members' addresses
/// not already named and not this node's own.
pub fn targets(join: &[String], saved: &[SocketAddr], own: &[SocketAddr]) -> Vec<String> {
    let mut targets = join.to_vec();
    for addr in saved {
        let text = addr.to_string();
        if !own.contains(addr) && !targets.contains(&text) {
            targets.push(text);
        }
    }
    targets
}

/// Keeps the addresses of the active members in the data dir when they
/// change, at most every 5 s (a rejoin hint need not be
/// fresh, and while a large cluster forms they change many times a second).
/// An empty set is never saved: when every peer has left, the last ones
/// known are still the best guess for finding the cluster again.
pub async fn remember_members(membership: Membership, data: DataDir) {
    let mut active = membership.active();
    let mut saved = BTreeSet::new();
    loop {
        let addrs: BTreeSet<SocketAddr> = active
            .borrow_and_update()
            .values()
            .map(|identity| identity.addr)
            .collect();
        if !addrs.is_empty() && addrs != saved {
            let list: Vec<SocketAddr> = addrs.iter().copied().collect();
            let data = data.clone();
            match tokio::task::spawn_blocking(move || data.save_members(&list)).await {
                Ok(Ok(())) => saved = addrs,
                Ok(Err(e)) => {
                    warn!(error = %format!("{e:#}"), "cannot save the members to rejoin after a restart")
                }
                Err(_) => {}
            }
            tokio::time::sleep(SAVE_MEMBERS_EVERY).await;
        }
        if active.changed().await.is_err() {
            return;
        }
    }
}

/// Shortest time between two saves of the member addresses.
const SAVE_MEMBERS_EVERY: Duration = Duration::from_secs(5);

/// Asks the agent at `addr` who it is.
pub async fn hello(transport: &Arc<Transport>, addr: SocketAddr) -> anyhow::Result<NodeIdentity> {
    let (mut send, mut recv, connection, _lease) =
        transport.open_stream(addr, StreamKind::Hello).await?;
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

/// Pulls every member the agent at `addr` knows (push-pull on join), or,
/// given our `summary`, nothing when it knows the same members.
pub async fn pull_members(
    transport: &Arc<Transport>,
    addr: SocketAddr,
    summary: Option<MemberSummary>,
) -> anyhow::Result<Vec<KnownMember>> {
    let (mut send, mut recv, _, _lease) = transport.open_stream(addr, StreamKind::Members).await?;
    if let Some(summary) = summary {
        send.write_all(&codec::encode(&summary)?).await?;
    }
    send.finish()?;
    let bytes = tokio::time::timeout(
        Duration::from_secs(5),
        recv.read_to_end(MAX_MEMBER_LIST_MESSAGE),
    )
    .await
    .map_err(|_| anyhow!("{addr} did not send its member list"))??;
    let list: MemberList = codec::decode(&bytes, MAX_MEMBER_LIST_MESSAGE)
        .map_err(|e| anyhow!("bad member list from {addr}: {e}"))?;
    Ok(list.members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_members_follow_join_without_duplicates_or_ourselves() {
        let a: SocketAddr = "10.0.0.1:4300".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:4300".parse().expect("addr");
        let own: SocketAddr = "10.0.0.9:4300".parse().expect("addr");
        let join = vec!["10.0.0.1:4300".to_owned(), "seed.example:4300".to_owned()];
        assert_eq!(
            targets(&join, &[a, b, own], &[own]),
            vec!["10.0.0.1:4300", "seed.example:4300", "10.0.0.2:4300"]
        );
        assert!(targets(&[], &[own], &[own]).is_empty());
    }
}
