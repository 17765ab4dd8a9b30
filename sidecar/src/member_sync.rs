//! Periodic member pulls: SWIM's gossip repaired by push-pull.
//!
//! Gossip carries each membership change a bounded number of times, so a
//! member that missed them (it was busy, packets were lost, a thousand joins
//! arrived at once) can lack a member for good: foca's periodic announce
//! only returns a few dozen members at a time. memberlist repairs this with
//! a full state exchange every 30 s; here a node sends a partner the summary
//! of what it knows, and pulls the partner's member list only when the two
//! differ, so at rest a round is a few bytes.
//!
//! Pulls only reach members already known, so nodes that joined through
//! each other while the seed was too busy to answer form an island whose
//! pulls agree forever (seen with 500 agents starting at once: a few stayed
//! at 1–2 members for minutes). Every third round a node tries one of its
//! `--join` targets that is not among its members, and joins through it
//! again if it answers (Consul's `retry_join` does so only until the first
//! join succeeds).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mesh_proto::NodeId;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::join::{identify, join_one, pull_members, Joiner};
use crate::membership::{ActiveMembers, Membership};
use crate::sync::choose_partner;
use crate::transport::Transport;

/// What member pulls use.
pub struct MemberSync {
    /// The members to compare and repair.
    pub membership: Membership,
    /// Streams to peers.
    pub transport: Arc<Transport>,
    /// Partners to pick from.
    pub members: watch::Receiver<ActiveMembers>,
    /// Time between pulls.
    pub interval: Duration,
    /// The `--join` targets, joined through again when one answers without
    /// being a member (None without `--join`).
    pub rejoin: Option<Joiner>,
}

/// Every how many rounds a join target that is not a member is tried.
const REJOIN_EVERY: u64 = 3;

/// Which node each join target turned out to be, once it answered.
#[derive(Default)]
struct JoinTargets {
    seen: HashMap<String, NodeId>,
    next: usize,
}

impl JoinTargets {
    /// The targets that are not among `members` (one that never answered
    /// counts as absent; one that turned out to be this node never does:
    /// a `--join` list shared by every node names each of them).
    fn absent<'a>(
        &self,
        targets: &'a [String],
        members: &ActiveMembers,
        own: &NodeId,
    ) -> Vec<&'a String> {
        targets
            .iter()
            .filter(|target| {
                !self
                    .seen
                    .get(*target)
                    .is_some_and(|id| id == own || members.contains_key(id))
            })
            .collect()
    }
}

/// Tries the next join target that is not among our members: one that
/// answers and is not a member either is joined through again.
async fn rejoin_absent_target(joiner: &Joiner, known: &mut JoinTargets, members: &ActiveMembers) {
    let absent = known.absent(&joiner.targets, members, &joiner.identity.node_id);
    let Some(target) = absent.get(known.next % absent.len().max(1)).copied() else {
        return;
    };
    known.next = known.next.wrapping_add(1);
    let within = Duration::from_secs(10);
    // A Hello first: a target not seen yet may be a member already (the
    // first join went through it), and a dead one costs no more than this.
    let peer = match tokio::time::timeout(within, identify(joiner, target)).await {
        Ok(Ok(Some((_, peer)))) => peer,
        Ok(Ok(None)) => {
            known
                .seen
                .insert(target.clone(), joiner.identity.node_id.clone());
            return;
        }
        Ok(Err(e)) => {
            debug!(%target, error = %format!("{e:#}"), "join target not answering");
            return;
        }
        Err(_) => return,
    };
    known.seen.insert(target.clone(), peer.node_id.clone());
    if members.contains_key(&peer.node_id) {
        return;
    }
    match tokio::time::timeout(within, join_one(joiner, target)).await {
        Ok(Ok(peer)) => {
            info!(%target, peer = %peer.node_id, "a join target answered but was not a member: joined through it again");
        }
        Ok(Err(e)) => debug!(%target, error = %format!("{e:#}"), "joining again failed"),
        Err(_) => debug!(%target, "joining again timed out"),
    }
}

/// The periodic pull loop.
pub async fn run(sync: MemberSync) {
    let mut tick = tokio::time::interval(sync.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and joining already pulled.
    tick.tick().await;
    let mut join_targets = JoinTargets::default();
    let mut round = 0u64;
    loop {
        tick.tick().await;
        round += 1;
        if let Some(joiner) = sync
            .rejoin
            .as_ref()
            .filter(|_| round.is_multiple_of(REJOIN_EVERY))
        {
            let members = sync.members.borrow().clone();
            rejoin_absent_target(joiner, &mut join_targets, &members).await;
        }
        let Some(peer) = choose_partner(&sync.transport, &sync.members) else {
            continue;
        };
        let summary = sync.membership.summary().await;
        let pulled = tokio::time::timeout(
            Duration::from_secs(10),
            pull_members(&sync.transport, peer, Some(summary)),
        )
        .await;
        match pulled {
            Ok(Ok(members)) if members.is_empty() => {}
            Ok(Ok(members)) => {
                debug!(%peer, members = members.len(), "a member pull found a difference");
                sync.membership.learn(members).await;
            }
            Ok(Err(e)) => debug!(%peer, error = %format!("{e:#}"), "member pull failed"),
            Err(_) => debug!(%peer, "member pull timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use mesh_proto::NodeIdentity;

    use super::*;

    use crate::test_support::node;

    #[test]
    fn a_join_target_is_absent_until_it_answered_as_a_member_or_as_this_node() {
        let targets = ["seed:4300", "me:4300", "gone:4300"].map(String::from);
        let mut members = BTreeMap::new();
        members.insert(
            node("seed"),
            NodeIdentity {
                node_id: node("seed"),
                addr: SocketAddr::from(([127, 0, 0, 1], 4300)),
                generation: 1,
            },
        );
        let members: ActiveMembers = Arc::new(members);
        let mut known = JoinTargets::default();
        let own = node("me");
        assert_eq!(known.absent(&targets, &members, &own).len(), 3);
        known.seen.insert(targets[0].clone(), node("seed"));
        known.seen.insert(targets[1].clone(), own.clone());
        known.seen.insert(targets[2].clone(), node("gone"));
        assert_eq!(known.absent(&targets, &members, &own), vec![&targets[2]]);
    }
}
