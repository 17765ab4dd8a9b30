//! Periodic member pulls: SWIM's gossip repaired by push-pull.
//!
//! Gossip carries each membership change a bounded number of times, so a
//! member that missed them (it was busy, packets were lost, a thousand joins
//! arrived at once) can lack a member for good: foca's periodic announce
//! only returns a few dozen members at a time. memberlist repairs this with
//! a full state exchange every 30 s; here a node sends a partner the summary
//! of what it knows, and pulls the partner's member list only when the two
//! differ, so at rest a round is a few bytes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::debug;

use crate::join::pull_members;
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
}

/// The periodic pull loop.
pub async fn run(sync: MemberSync) {
    let mut tick = tokio::time::interval(sync.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and joining already pulled.
    tick.tick().await;
    loop {
        tick.tick().await;
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
