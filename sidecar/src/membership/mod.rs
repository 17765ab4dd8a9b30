//! SWIM membership: the one task that owns the membership core.
//!
//! The core (`core::membership`: foca, its ordered timer queue, the
//! suspicion watchdog, resizing) is sans-I/O; this task feeds it SWIM
//! packets, commands and the time, sleeps until its next timer, and turns
//! what it asks for into transport sends and member-table updates. No other
//! task touches its state (the driver shape of quinn's `ConnectionDriver`).
//!
//! A packet whose header names a source other than the node its
//! connection's certificate is issued to is refused before foca sees it
//! (`core::membership::Certified`), counted in
//! `gossamer_swim_packets_refused_total{reason="impersonation"}`, and
//! logged once per certificate. Only the SWIM source is bound: catalog
//! broadcasts riding on the packet carry other writers' records by design
//! (gossip relays them), and the catalog checks those by writer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Message, OwnedNotification, ProbeNumber, State};
use mesh_proto::api::MemberState;
use mesh_proto::coordinate::Coordinate;
use mesh_proto::gossip::{KnownMember, MemberList, MemberSummary};
use mesh_proto::{MemberKey, NodeId, NodeIdentity};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn, Instrument};

use crate::config::Profile;
use crate::core::membership::{Certified, PacketError};
use crate::metrics;
use crate::rtt::RttTable;
use crate::transport::{SwimPacket, Transport};

mod broadcasts;
pub mod swim_frame;
mod timings;

pub use broadcasts::{BroadcastKey, BroadcastReceiver, BroadcastRejected};
pub use timings::foca_config;

use broadcasts::Handler;

type SwimCore = crate::core::membership::SwimCore<NodeIdentity, Handler, SmallRng>;

/// One member as this node sees it.
#[derive(Debug, Clone)]
pub struct MemberEntry {
    /// Its identity (id, address, generation).
    pub identity: NodeIdentity,
    /// SWIM state.
    pub state: MemberState,
    /// When we last received a SWIM packet from it.
    pub last_heard: Option<Instant>,
}

/// Active members other than ourselves, by node id; published on every change.
pub type ActiveMembers = Arc<BTreeMap<NodeId, NodeIdentity>>;

enum Command {
    Announce(NodeIdentity),
    Broadcast(Vec<u8>),
    Snapshot(oneshot::Sender<Vec<MemberEntry>>),
    Known(Option<MemberSummary>, oneshot::Sender<MemberList>),
    Summary(oneshot::Sender<MemberSummary>),
    Learn(Vec<KnownMember>),
    Leave(oneshot::Sender<()>),
}

/// A handle on the membership task.
#[derive(Clone)]
pub struct Membership {
    commands: mpsc::Sender<Command>,
    active: watch::Receiver<ActiveMembers>,
    local: NodeIdentity,
}

impl Membership {
    /// Starts the task that owns foca.
    pub fn start(
        local: NodeIdentity,
        profile: Profile,
        transport: Arc<Transport>,
        swim_packets: mpsc::Receiver<SwimPacket>,
        receiver: Arc<dyn BroadcastReceiver>,
        rtt: Arc<RttTable>,
    ) -> Self {
        let (commands, command_rx) = mpsc::channel(1024);
        let (active_tx, active) = watch::channel(ActiveMembers::default());
        let core = SwimCore::new(
            local.clone(),
            Arc::new(move |size| foca_config(profile, size)),
            SmallRng::from_rng(&mut rand::rng()),
            Handler(receiver),
            Instant::now(),
        );
        let mut core = core;
        // Lifeguard, with memberlist's settings.
        core.set_lifeguard(Some(crate::core::membership::Lifeguard::default()));
        let driver = Driver {
            core,
            runtime: AccumulatingRuntime::new(),
            transport,
            active: active_tx,
            last_heard: HashMap::new(),
            impostors_logged: HashSet::new(),
            rtt,
            probes_sent: HashMap::new(),
            packet_coordinate: None,
            health_shown: 0,
            last_published: Instant::now(),
            publish_due: None,
        };
        // The span names the node, for logs of several agents in one process.
        let span = tracing::info_span!("membership", node = %local.node_id);
        tokio::spawn(driver.run(swim_packets, command_rx).instrument(span));
        Self {
            commands,
            active,
            local,
        }
    }

    /// This node's identity.
    pub fn local(&self) -> &NodeIdentity {
        &self.local
    }

    /// Announces ourselves to a known peer (joining through it).
    pub async fn announce(&self, peer: NodeIdentity) {
        let _ = self.commands.send(Command::Announce(peer)).await;
    }

    /// Queues a custom broadcast (a catalog change) to ride on gossip.
    pub async fn broadcast(&self, item: Vec<u8>) {
        let _ = self.commands.send(Command::Broadcast(item)).await;
    }

    /// Every member foca remembers, down ones included, and ourselves.
    pub async fn members(&self) -> Vec<MemberEntry> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Snapshot(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Every other alive or suspect member with its incarnation: what a
    /// joiner pulls (`StreamKind::Members`). Empty when `theirs` (the
    /// puller's [`MemberSummary`]) equals ours: it knows them all already.
    pub async fn known(&self, theirs: Option<MemberSummary>) -> MemberList {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Known(theirs, tx))
            .await
            .is_err()
        {
            return MemberList::default();
        }
        rx.await.unwrap_or_default()
    }

    /// The summary of the members we know, ourselves included.
    pub async fn summary(&self) -> MemberSummary {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Summary(tx)).await.is_err() {
            return MemberSummary::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Applies a member list pulled on join: every member at once, rather
    /// than the few dozen an announce's answer holds.
    pub async fn learn(&self, members: Vec<KnownMember>) {
        let _ = self.commands.send(Command::Learn(members)).await;
    }

    /// Watches the active members (alive or suspect), ourselves excluded.
    pub fn active(&self) -> watch::Receiver<ActiveMembers> {
        self.active.clone()
    }

    /// Leaves the cluster: peers learn it from us at once instead of by failure detection.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
    }
}

struct Driver {
    core: SwimCore,
    runtime: AccumulatingRuntime<NodeIdentity>,
    transport: Arc<Transport>,
    active: watch::Sender<ActiveMembers>,
    last_heard: HashMap<NodeId, Instant>,
    /// Certificates already logged for impersonation (see `refuse`).
    impostors_logged: HashSet<Certified>,
    rtt: Arc<RttTable>,
    /// Our direct probes in flight: their round trip is an RTT sample.
    probes_sent: HashMap<(NodeId, ProbeNumber), Instant>,
    /// The coordinate carried by the packet being handled.
    packet_coordinate: Option<Coordinate>,
    /// Local health score last put in the gauge.
    health_shown: u32,
    /// When the active members were last published, and when a change
    /// since is due to be (see `publish_soon`).
    last_published: Instant,
    publish_due: Option<Instant>,
}

/// Certificates remembered as logged for impersonation at most; past it,
/// new ones are counted but not logged.
const MAX_IMPOSTORS_LOGGED: usize = 1024;

/// Shortest time between two publications of the active members, at most
/// 100 members; see [`publish_every`].
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Shortest time between two publications of `members` active members:
/// [`PUBLISH_EVERY`], and 1 ms per member past 100. A publication costs
/// every reader a walk of the table, so while a cluster forms (members
/// change with nearly every packet) this keeps that cost per second the
/// same at any size; at 500 members the table lags by at most half a second,
/// well inside the time failure detection takes.
fn publish_every(members: usize) -> Duration {
    PUBLISH_EVERY.max(Duration::from_millis(members as u64))
}

/// Direct probes remembered at most (a probe unanswered is forgotten).
const MAX_PROBES_IN_FLIGHT: usize = 64;

/// What ended the driver's wait.
enum Wakeup {
    Timer,
    Packet(SwimPacket),
    Command(Option<Command>),
}

impl Driver {
    async fn run(
        mut self,
        mut packets: mpsc::Receiver<SwimPacket>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        // The member gauges exist from the first scrape, before (or without)
        // any peer: a lone agent shows itself alive.
        self.publish_active();
        loop {
            let next = self.core.next_wakeup();
            let next = self.publish_due.map_or(next, |due| due.min(next));
            let wake = tokio::time::Instant::from_std(next);
            let event = tokio::select! {
                _ = tokio::time::sleep_until(wake) => Wakeup::Timer,
                Some(packet) = packets.recv() => Wakeup::Packet(packet),
                command = commands.recv() => Wakeup::Command(command),
            };
            // A turn is the work after waking, not the wait before it: on
            // `lan`, a lone agent sleeps a whole second between probes.
            let started = Instant::now();
            match event {
                Wakeup::Timer => {
                    self.core.advance(Instant::now(), &mut self.runtime);
                }
                Wakeup::Packet(packet) => self.intake(packet),
                Wakeup::Command(Some(Command::Leave(done))) => {
                    self.leave().await;
                    let _ = done.send(());
                    return;
                }
                Wakeup::Command(Some(command)) => self.handle_command(command),
                Wakeup::Command(None) => return,
            }
            self.drain();
            if self.publish_due.is_some_and(|due| Instant::now() >= due) {
                self.publish_active();
            }
            let health = self.core.local_health();
            if health != self.health_shown {
                self.health_shown = health;
                ::metrics::gauge!(metrics::LOCAL_HEALTH).set(f64::from(health));
                if health > 0 {
                    debug!(health, "local health degraded: probing more slowly");
                }
            }
            let turn = started.elapsed();
            if turn > Duration::from_secs(1) {
                warn!(?turn, "one turn of the membership loop took over a second");
            }
        }
    }

    /// Feeds one packet from the network to the core.
    fn intake(&mut self, packet: SwimPacket) {
        let Some((swim, coordinate)) = swim_frame::split(&packet.bytes) else {
            note_bad_packet(foca::Error::MalformedPacket);
            return;
        };
        self.packet_coordinate = coordinate;
        let now = Instant::now();
        let result = self
            .core
            .handle_data_from(swim, &packet.certified, now, &mut self.runtime);
        match result {
            Ok(()) => {}
            Err(PacketError::Foca(e)) => note_bad_packet(e),
            Err(PacketError::Impersonation { claimed }) => self.refuse(&packet, &claimed),
        }
    }

    /// Counts a packet whose source is not the node its connection's
    /// certificate is issued to, and logs the first from each certificate.
    fn refuse(&mut self, packet: &SwimPacket, claimed: &NodeIdentity) {
        metrics::swim_packet_refused(metrics::REFUSED_IMPERSONATION);
        let first = !self.impostors_logged.contains(&packet.certified)
            && self.impostors_logged.len() < MAX_IMPOSTORS_LOGGED;
        if !first {
            return;
        }
        self.impostors_logged.insert(packet.certified.clone());
        let claimed = &claimed.node_id;
        let from = packet.from;
        match &packet.certified {
            Certified::Node(certified) => warn!(
                %from,
                %certified,
                %claimed,
                "refused SWIM packets claiming to come from node {claimed:?} over a connection \
                 whose certificate is issued to node {certified:?}: whoever holds that certificate \
                 runs a modified or misconfigured agent; find the host at {from}, and replace the \
                 cluster's credentials if the certificate leaked; further refusals from it are \
                 only counted, in gossamer_swim_packets_refused_total"
            ),
            _ => warn!(
                %from,
                %claimed,
                "refused SWIM packets claiming to come from node {claimed:?} over a connection \
                 whose certificate's node id cannot be read (it names two nodes?); issue the host \
                 at {from} a certificate with one spiffe://gossamer/node/ID URI SAN; further \
                 refusals are only counted, in gossamer_swim_packets_refused_total"
            ),
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Announce(peer) => {
                let now = Instant::now();
                if let Err(e) = self.core.announce(peer.clone(), now, &mut self.runtime) {
                    warn!(peer = %peer.node_id, error = %e, "cannot announce to peer");
                }
            }
            Command::Broadcast(item) => {
                if let Err(e) = self.core.add_broadcast(&item) {
                    warn!(error = %e, bytes = item.len(), "cannot gossip a catalog change; anti-entropy will carry it");
                }
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Command::Known(theirs, reply) => {
                let known = if theirs.is_some_and(|theirs| theirs == self.member_summary()) {
                    MemberList::default()
                } else {
                    self.known()
                };
                let _ = reply.send(known);
            }
            Command::Summary(reply) => {
                let _ = reply.send(self.member_summary());
            }
            Command::Learn(members) => {
                let known: HashMap<MemberKey, u64> = self
                    .core
                    .foca()
                    .iter_membership_state()
                    .map(|m| (m.id().node_id.key(), m.id().generation))
                    .collect();
                let own = self.core.foca().identity().node_id.key();
                let members = members
                    .into_iter()
                    .filter(|m| worth_learning(own, &known, m))
                    .map(|m| {
                        let state = if m.suspect {
                            State::Suspect
                        } else {
                            State::Alive
                        };
                        foca::Member::new(m.identity, m.incarnation, state)
                    });
                let now = Instant::now();
                if let Err(e) = self.core.apply_many(members, false, now, &mut self.runtime) {
                    debug!(error = %e, "a pulled member list was not applied");
                }
            }
            Command::Leave(_) => {}
        }
    }

    fn known(&self) -> MemberList {
        let foca = self.core.foca();
        // Ourselves not: foca keeps its own incarnation to itself, and the
        // joiner learnt us from the announce's answer.
        let members: Vec<KnownMember> = foca
            .iter_membership_state()
            .filter(|m| m.state() != State::Down)
            .map(|m| KnownMember {
                identity: m.id().clone(),
                incarnation: m.incarnation(),
                suspect: m.state() == State::Suspect,
            })
            .collect();
        MemberList { members }
    }

    /// What a member pull compares: every alive or suspect member and us.
    fn member_summary(&self) -> MemberSummary {
        let foca = self.core.foca();
        MemberSummary::of(
            std::iter::once(foca.identity()).chain(
                foca.iter_membership_state()
                    .filter(|m| m.state() != State::Down)
                    .map(|m| m.id()),
            ),
        )
    }

    fn snapshot(&self) -> Vec<MemberEntry> {
        let foca = self.core.foca();
        let mut out: Vec<MemberEntry> = foca
            .iter_membership_state()
            .map(|m| MemberEntry {
                identity: m.id().clone(),
                state: member_state(m.state()),
                last_heard: self.last_heard.get(&m.id().node_id).copied(),
            })
            .collect();
        out.push(MemberEntry {
            identity: foca.identity().clone(),
            state: MemberState::Alive,
            last_heard: None,
        });
        out
    }

    async fn leave(&mut self) {
        if let Err(e) = self.core.leave(Instant::now(), &mut self.runtime) {
            warn!(error = %e, "leaving the cluster failed; peers will detect the stop instead");
        }
        let mut sends = Vec::new();
        let coordinate = self.rtt.coordinate();
        while let Some((to, packet)) = self.runtime.to_send() {
            let frame = swim_frame::join(&packet, Some(&coordinate));
            if self.transport.swim_over_udp() {
                let _ = self.transport.send_swim_udp(to.addr, &frame);
                continue;
            }
            let transport = self.transport.clone();
            sends.push(tokio::spawn(async move {
                transport.send_swim(to.addr, &frame).await
            }));
        }
        for send in sends {
            let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
        }
        info!("left the cluster");
    }

    /// Carries out everything foca asked for during the last call.
    fn drain(&mut self) {
        let now = Instant::now();
        let mut coordinate = None;
        while let Some((to, packet)) = self.runtime.to_send() {
            // Every packet carries our coordinate: whoever we probe, ack or
            // gossip with learns it, so estimates need no broadcast.
            let ours = coordinate.get_or_insert_with(|| self.rtt.coordinate());
            let frame = swim_frame::join(&packet, Some(ours));
            if self.transport.swim_over_udp() {
                if let Err(e) = self.transport.send_swim_udp(to.addr, &frame) {
                    debug!(peer = %to.node_id, error = %e, "SWIM send failed");
                }
                continue;
            }
            let transport = self.transport.clone();
            tokio::spawn(async move {
                if let Err(e) = transport.send_swim(to.addr, &frame).await {
                    debug!(peer = %to.node_id, error = %e, "SWIM send failed");
                }
            });
        }
        let packet_coordinate = self.packet_coordinate.take();
        // Timers stay in the core's queue; the runtime never holds any.
        while self.runtime.to_schedule().is_some() {}
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::DataSent(header) => {
                    if let Message::Ping(probe) = header.message {
                        if self.probes_sent.len() >= MAX_PROBES_IN_FLIGHT {
                            self.probes_sent
                                .retain(|_, at| now.duration_since(*at) < Duration::from_secs(10));
                        }
                        if self.probes_sent.len() < MAX_PROBES_IN_FLIGHT {
                            self.probes_sent.insert((header.dst.node_id, probe), now);
                        }
                    }
                }
                OwnedNotification::DataReceived(header) => {
                    self.observe_packet(&header, packet_coordinate.as_ref(), now);
                    self.last_heard.insert(header.src.node_id, now);
                }
                OwnedNotification::MemberUp(id) => {
                    info!(node = %id.node_id, addr = %id.addr, generation = id.generation, "member up");
                }
                OwnedNotification::MemberDown(id) => {
                    info!(node = %id.node_id, "member down");
                    self.transport.close_peer(id.addr);
                }
                OwnedNotification::Rename(old, new) => {
                    info!(node = %new.node_id, from = old.generation, to = new.generation, "member restarted");
                    if old.addr != new.addr {
                        // Whatever waits on the old incarnation's address waits in vain.
                        self.transport.close_peer(old.addr);
                    }
                }
                OwnedNotification::Defunct => {
                    warn!("this node was declared down by the cluster; it will rejoin at the next announce");
                }
                OwnedNotification::Rejoin(id) => {
                    info!(
                        generation = id.generation,
                        "rejoined the cluster with a new generation"
                    );
                }
                _ => {}
            }
        }
        if self.core.take_members_changed() {
            self.publish_soon();
        }
    }

    /// Publishes the active members now, or at most [`publish_every`]
    /// after the last publication: while a large cluster forms, members
    /// change with nearly every packet, and each publication copies the
    /// whole member table for every reader.
    fn publish_soon(&mut self) {
        let due = self.last_published + publish_every(self.core.foca().num_members());
        if Instant::now() >= due {
            self.publish_active();
        } else if self.publish_due.is_none() {
            self.publish_due = Some(due);
        }
    }

    /// What a received packet teaches the RTT table: the sender's
    /// coordinate, and for the ack of our own probe an RTT sample (the
    /// probe's round trip) that moves our coordinate. A peer we hold a QUIC
    /// connection to is measured by the connection instead, whose estimate
    /// the calls it carries see.
    fn observe_packet(
        &mut self,
        header: &foca::Header<NodeIdentity>,
        coordinate: Option<&Coordinate>,
        now: Instant,
    ) {
        let node = &header.src.node_id;
        let coordinate = coordinate.filter(|c| c.is_valid());
        let sample = match header.message {
            Message::Ack(probe) => self
                .probes_sent
                .remove(&(node.clone(), probe))
                .map(|sent| now.duration_since(sent)),
            _ => None,
        };
        match (sample, coordinate) {
            (Some(rtt), Some(theirs)) => self.rtt.observe_coordinate(node, theirs, rtt),
            (None, Some(theirs)) => self.rtt.learn_coordinate(node, theirs),
            _ => {}
        }
        if let Some(rtt) = sample {
            if self.transport.cached(header.src.addr).is_none() {
                self.rtt.observe(node, rtt);
            }
        }
    }

    fn publish_active(&mut self) {
        self.last_published = Instant::now();
        self.publish_due = None;
        let active: BTreeMap<NodeId, NodeIdentity> = self
            .core
            .foca()
            .iter_members()
            .map(|m| (m.id().node_id.clone(), m.id().clone()))
            .collect();
        // Counted in one pass: the snapshot copies every member (and looks up
        // when it was last heard), which the gauges do not need.
        let mut alive = 1; // ourselves
        let (mut suspect, mut down) = (0, 0);
        for member in self.core.foca().iter_membership_state() {
            match member_state(member.state()) {
                MemberState::Alive => alive += 1,
                MemberState::Suspect => suspect += 1,
                MemberState::Down => down += 1,
            }
        }
        for (state, n) in [
            (MemberState::Alive, alive),
            (MemberState::Suspect, suspect),
            (MemberState::Down, down),
        ] {
            ::metrics::gauge!(metrics::MEMBERS, "state" => state.as_str()).set(f64::from(n));
        }
        self.active.send_replace(Arc::new(active));
    }
}

/// Whether a member from a pulled list is news: one we do not know, or
/// know by an older generation. A partner's view of a member we know (a
/// suspicion since refuted, say) is no fresher than ours: applying every
/// state flapped a formed cluster of 250 agents (1.2 catalog changes per
/// agent per second at rest). Never ourselves: foca does not list its own
/// identity among the members, so a partner's memory of our previous
/// generation would join our table as a member of its own, and stay there
/// as down.
fn worth_learning(own: MemberKey, known: &HashMap<MemberKey, u64>, member: &KnownMember) -> bool {
    let key = member.identity.node_id.key();
    key != own
        && known
            .get(&key)
            .is_none_or(|generation| *generation < member.identity.generation)
}

/// foca's member state as the API names it.
fn member_state(state: State) -> MemberState {
    match state {
        State::Alive => MemberState::Alive,
        State::Suspect => MemberState::Suspect,
        State::Down => MemberState::Down,
    }
}

fn note_bad_packet(error: foca::Error) {
    match error {
        foca::Error::DataFromOurselves => {}
        foca::Error::Decode(_) | foca::Error::MalformedPacket | foca::Error::DataTooBig => {
            metrics::decode_error();
            debug!(%error, "dropped a malformed SWIM packet");
        }
        other => debug!(error = %other, "SWIM packet not applied"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::node;

    fn member(name: &str, generation: u64) -> KnownMember {
        KnownMember {
            identity: NodeIdentity {
                node_id: node(name),
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], 4300)),
                generation,
            },
            incarnation: 0,
            suspect: false,
        }
    }

    #[test]
    fn a_pulled_list_teaches_only_news_and_never_ourselves() {
        let own = node("self").key();
        let known: HashMap<MemberKey, u64> = [(node("b").key(), 5)].into_iter().collect();
        assert!(worth_learning(own, &known, &member("c", 1)), "unknown");
        assert!(
            worth_learning(own, &known, &member("b", 6)),
            "a newer generation"
        );
        assert!(
            !worth_learning(own, &known, &member("b", 5)),
            "the one we know"
        );
        assert!(
            !worth_learning(own, &known, &member("b", 4)),
            "an older one"
        );
        // A partner still remembers our previous generation.
        assert!(!worth_learning(own, &known, &member("self", 1)));
        assert!(!worth_learning(own, &known, &member("self", u64::MAX)));
    }
}
