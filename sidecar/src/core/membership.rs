//! The membership core: foca, one ordered timer queue, the suspicion
//! watchdog and the resizing of foca's timings as the cluster grows.
//!
//! No tasks, no sockets, no clock reads: every call takes `now` and a foca
//! [`Runtime`] that carries sends and notifications out. Timers never leave
//! the core: foca's `submit_after` lands in the queue here, and
//! [`SwimCore::advance`] fires every due timer in deadline order (ties in
//! foca's own `Timer` order), so nothing reorders them, as a task per timer
//! would. The agent's membership task and `bench sim` drive this same type.
//!
//! A packet from the network comes with what its connection's certificate
//! proves about the sender ([`Certified`]): [`SwimCore::handle_data_from`]
//! refuses one whose header names another node as its source before foca
//! sees it, so a holder of node X's certificate cannot gossip as node Y.
//!
//! Lifeguard (`lifeguard`) runs here too: the timers foca submits are
//! stretched by this node's local health score on the way into the queue,
//! and the suspicion watchdog declares a suspect down after a timeout that
//! shrinks with independent confirmations.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foca::{
    BroadcastHandler, Codec, Config, Foca, Identity, Incarnation, Member, Message, Notification,
    PostcardCodec, Runtime, State, Timer,
};
use mesh_proto::NodeIdentity;
use rand::Rng;

mod lifeguard;

pub use lifeguard::Lifeguard;

/// foca's configuration for a cluster of a given size (the profile's table).
pub type ConfigFor = Arc<dyn Fn(usize) -> Config + Send + Sync>;

/// What the certificate of the connection a SWIM packet arrived on proves
/// about its sender.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Certified {
    /// The certificate is issued to this node id (its
    /// `spiffe://gossamer/node/ID` URI SAN): only packets from it are taken.
    Node(Arc<str>),
    /// The certificate binds no node id (an operator certificate without
    /// the URI SAN): there is nothing to hold the sender to.
    Unbound,
    /// The certificate's binding cannot be read (it names two nodes, say):
    /// no packet is taken, as no source can match it.
    Unreadable,
}

impl Certified {
    /// True when a packet whose header names `src` as its source may come
    /// over this connection.
    pub fn admits(&self, src: &str) -> bool {
        match self {
            Self::Node(id) => **id == *src,
            Self::Unbound => true,
            Self::Unreadable => false,
        }
    }
}

/// An identity with a name a certificate can vouch for.
///
/// Not foca's `Identity::addr`: that is a hash made for fast comparison, and a
/// certificate binds the name itself.
pub trait Named {
    /// The name the sender's certificate must carry.
    fn name(&self) -> &str;
}

impl Named for NodeIdentity {
    fn name(&self) -> &str {
        self.node_id.as_str()
    }
}

/// Why [`SwimCore::handle_data_from`] did not apply a packet.
#[derive(Debug)]
pub enum PacketError<T> {
    /// The header names `claimed` as the source, which the connection's
    /// certificate does not: dropped before foca saw it.
    Impersonation {
        /// The identity the packet claimed.
        claimed: T,
    },
    /// foca refused it (undecodable, too big, from ourselves, ...).
    Foca(foca::Error),
}

/// A timer waiting in the queue.
struct Pending<T> {
    at: Instant,
    seq: u64,
    timer: Timer<T>,
}

impl<T: Eq> PartialEq for Pending<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T: Eq> Eq for Pending<T> {}

impl<T: Eq> PartialOrd for Pending<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T: Eq> Ord for Pending<T> {
    /// Reversed, so the max-heap pops the earliest deadline first; ties in
    /// foca's timer order, then in the order they were scheduled.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.timer.cmp(&self.timer))
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// Wraps the caller's runtime: keeps timers in the core's queue and notes
/// whether the member set changed.
struct CoreRuntime<'a, T, R> {
    inner: &'a mut R,
    timers: &'a mut BinaryHeap<Pending<T>>,
    seq: &'a mut u64,
    now: Instant,
    members_changed: &'a mut bool,
    /// Lifeguard's view: settings, health, suspects told on probes.
    lifeguard: Option<Lifeguard>,
    health: u32,
    health_delta: &'a mut i64,
    /// Members our own probes failed: suspicions raised here.
    probe_failed: &'a mut Vec<T>,
    suspects: &'a HashMap<T, Suspicion<T>>,
    max_packet: usize,
}

impl<T, R> Runtime<T> for CoreRuntime<'_, T, R>
where
    T: Identity + Eq + std::hash::Hash + serde::Serialize + for<'de> serde::Deserialize<'de>,
    R: Runtime<T>,
{
    fn notify(&mut self, notification: Notification<'_, T>) {
        match &notification {
            Notification::MemberUp(_) | Notification::MemberDown(_) | Notification::Rename(..) => {
                *self.members_changed = true;
            }
            // Local health: our probe went unanswered, or was answered.
            Notification::ProbeFailed(_, member) => {
                *self.health_delta += 1;
                self.probe_failed.push((*member).clone());
            }
            Notification::DataReceived(header)
                if matches!(
                    header.message,
                    Message::Ack(_) | Message::IndirectAck { .. }
                ) =>
            {
                *self.health_delta -= 1;
            }
            _ => {}
        }
        self.inner.notify(notification);
    }

    fn send_to(&mut self, to: T, data: &[u8]) {
        // The buddy system: a probe of a member we suspect tells it so, and
        // it refutes at once.
        if self.lifeguard.is_some() {
            if let Some(suspicion) = self.suspects.get(&to) {
                if let Some(parsed) = lifeguard::parse::<T>(data, |m| m.id() == &to) {
                    let told = !parsed.updates.is_empty();
                    if matches!(parsed.header.message, Message::Ping(_)) && !told {
                        let update = Member::new(to.clone(), suspicion.incarnation, State::Suspect);
                        if let Some(packet) =
                            lifeguard::with_update(data, &parsed, &update, self.max_packet)
                        {
                            self.inner.send_to(to, &packet);
                            return;
                        }
                    }
                }
            }
        }
        self.inner.send_to(to, data);
    }

    fn submit_after(&mut self, timer: Timer<T>, after: Duration) {
        let after = match (&timer, self.lifeguard) {
            // Local health stretches this node's own probing.
            (Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. }, Some(_)) => {
                after * (self.health + 1)
            }
            // foca's own suspicion timer is only a backstop: the watchdog
            // declares suspects down after Lifeguard's timeout.
            (Timer::ChangeSuspectToDown { .. }, Some(lg)) => {
                after * lg.max_timeout_mult.max(1) + after
            }
            _ => after,
        };
        *self.seq += 1;
        self.timers.push(Pending {
            at: self.now + after,
            seq: *self.seq,
            timer,
        });
    }
}

/// A suspicion the watchdog follows.
struct Suspicion<T> {
    incarnation: Incarnation,
    /// When this node first saw it.
    since: Instant,
    /// Members heard suspecting it (independent confirmations), bounded.
    confirmed_by: Vec<T>,
}

/// Confirmations remembered per suspicion (more change nothing).
const MAX_CONFIRMATIONS: usize = 16;

/// SWIM membership as plain data.
pub struct SwimCore<T: Identity, H: BroadcastHandler<T>, R: Rng> {
    foca: Foca<T, PostcardCodec, R, H>,
    config_for: ConfigFor,
    timers: BinaryHeap<Pending<T>>,
    seq: u64,
    sized_for: usize,
    next_watchdog: Instant,
    /// Members seen suspect.
    suspects: HashMap<T, Suspicion<T>>,
    /// Suspects whose suspicion our own failed probe raised: their
    /// timeout shrinks with confirmations, as Lifeguard's originator's does,
    /// even when a relayed copy of the same suspicion arrived first.
    raised_here: HashSet<T>,
    members_changed: bool,
    lifeguard: Option<Lifeguard>,
    /// Local health score (0 = healthy), Lifeguard only.
    health: u32,
    /// Watchdog rounds, for the occasional full scan.
    watchdog_rounds: u64,
    /// A probe of ours failed since the last scan (a new suspect).
    scan_due: bool,
    /// foca's packet size limit.
    max_packet: usize,
}

impl<T, H, R> SwimCore<T, H, R>
where
    T: Identity + Eq + std::hash::Hash + serde::Serialize + for<'de> serde::Deserialize<'de>,
    H: BroadcastHandler<T>,
    R: Rng,
{
    /// A core for `identity` that knows nobody yet.
    pub fn new(identity: T, config_for: ConfigFor, rng: R, handler: H, now: Instant) -> Self {
        let config = config_for(1);
        let next_watchdog = now + config.probe_period;
        Self {
            foca: Foca::with_custom_broadcast(
                identity,
                config.clone(),
                rng,
                PostcardCodec,
                handler,
            ),
            config_for,
            timers: BinaryHeap::new(),
            seq: 0,
            sized_for: 1,
            next_watchdog,
            suspects: HashMap::new(),
            raised_here: HashSet::new(),
            members_changed: false,
            lifeguard: None,
            health: 0,
            watchdog_rounds: 0,
            scan_due: false,
            max_packet: config.max_packet_size.get(),
        }
    }

    /// Turns Lifeguard on (or off with None).
    pub fn set_lifeguard(&mut self, lifeguard: Option<Lifeguard>) {
        self.lifeguard = lifeguard;
        self.health = 0;
    }

    /// This node's local health score: 0 when healthy; its probe timings
    /// are stretched by `score + 1`.
    pub fn local_health(&self) -> u32 {
        self.health
    }

    /// The timeout after which the watchdog declares `member` down, if it
    /// is followed as a suspect: Lifeguard's, shrinking with confirmations.
    pub fn suspicion_timeout(&self, member: &T) -> Option<Duration> {
        let suspicion = self.suspects.get(member)?;
        let config = (self.config_for)(self.sized_for);
        Some(self.timeout_for(&config, member, suspicion))
    }

    fn timeout_for(&self, config: &Config, member: &T, suspicion: &Suspicion<T>) -> Duration {
        match self.lifeguard {
            // The first name is the suspicion's originator, not a confirmation.
            Some(lg) => {
                let timeout = lg.suspicion_timeout(
                    config.suspect_to_down_after,
                    suspicion.confirmed_by.len().saturating_sub(1),
                );
                // foca's updates do not name who raised a suspicion, so a
                // member that merely relays one is counted as confirming
                // it. A suspicion that is not ours therefore never expires
                // sooner than the watchdog allowed before Lifeguard.
                let ours = self.raised_here.contains(member)
                    || suspicion.confirmed_by.first() == Some(self.foca.identity());
                if ours {
                    timeout
                } else {
                    timeout.max(config.suspect_to_down_after * 2 + config.probe_period)
                }
            }
            None => config.suspect_to_down_after * 2 + config.probe_period,
        }
    }

    /// Read access to foca (members, identity, counts).
    pub fn foca(&self) -> &Foca<T, PostcardCodec, R, H> {
        &self.foca
    }

    /// The size foca's timings are set for.
    pub fn sized_for(&self) -> usize {
        self.sized_for
    }

    /// Timers waiting.
    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    /// True once since the last call when members came, went or renamed.
    pub fn take_members_changed(&mut self) -> bool {
        std::mem::take(&mut self.members_changed)
    }

    /// When [`SwimCore::advance`] next has something to do.
    pub fn next_wakeup(&self) -> Instant {
        self.timers
            .peek()
            .map_or(self.next_watchdog, |p| p.at.min(self.next_watchdog))
    }

    /// Runs `f` on foca with the core's runtime wrapped around `rt`, then
    /// resizes foca's timings if the member set changed.
    fn with_foca<Rt: Runtime<T>, O>(
        &mut self,
        now: Instant,
        rt: &mut Rt,
        f: impl FnOnce(&mut Foca<T, PostcardCodec, R, H>, &mut CoreRuntime<'_, T, Rt>) -> O,
    ) -> O {
        let mut changed = false;
        let mut health_delta = 0i64;
        let mut probe_failed = Vec::new();
        let max_packet = self.max_packet;
        let out = {
            let mut core_rt = CoreRuntime {
                inner: rt,
                timers: &mut self.timers,
                seq: &mut self.seq,
                now,
                members_changed: &mut changed,
                lifeguard: self.lifeguard,
                health: self.health,
                health_delta: &mut health_delta,
                probe_failed: &mut probe_failed,
                suspects: &self.suspects,
                max_packet,
            };
            f(&mut self.foca, &mut core_rt)
        };
        self.adjust_health(health_delta);
        self.scan_due |= !probe_failed.is_empty();
        self.raised_here.extend(probe_failed);
        if changed {
            self.members_changed = true;
            self.resize();
        }
        out
    }

    /// Moves the local health score by `delta`, within its bounds.
    fn adjust_health(&mut self, delta: i64) {
        let Some(lg) = self.lifeguard else {
            return;
        };
        let score = (i64::from(self.health) + delta).clamp(0, i64::from(lg.max_health));
        self.health = u32::try_from(score).unwrap_or(0);
    }

    /// Feeds one SWIM packet.
    pub fn handle_data(
        &mut self,
        data: &[u8],
        now: Instant,
        rt: &mut impl Runtime<T>,
    ) -> Result<(), foca::Error> {
        if self.lifeguard.is_some() {
            self.note_suspicions(data, now);
        }
        self.with_foca(now, rt, |foca, rt| foca.handle_data(data, rt))
    }

    /// Feeds one SWIM packet that arrived over a connection whose
    /// certificate proves `certified`: refused, untouched by foca, when its
    /// header names another node as its source. The header is decoded as
    /// foca decodes it; a packet whose header does not decode is left to
    /// foca, which refuses it as malformed.
    pub fn handle_data_from(
        &mut self,
        data: &[u8],
        certified: &Certified,
        now: Instant,
        rt: &mut impl Runtime<T>,
    ) -> Result<(), PacketError<T>>
    where
        T: Named,
    {
        if *certified != Certified::Unbound {
            if let Ok(header) = Codec::<T>::decode_header(&mut PostcardCodec, data) {
                if !certified.admits(header.src.name()) {
                    return Err(PacketError::Impersonation {
                        claimed: header.src,
                    });
                }
            }
        }
        self.handle_data(data, now, rt).map_err(PacketError::Foca)
    }

    /// Reads the suspicions a packet carries: each is a confirmation by
    /// its sender; one of ourselves lowers our health (we are missing
    /// something, or someone is missing us).
    fn note_suspicions(&mut self, data: &[u8], now: Instant) {
        let Some(parsed) = lifeguard::parse::<T>(data, lifeguard::is_suspicion) else {
            return;
        };
        let me = self.foca.identity().clone();
        let src = parsed.header.src;
        let mut about_me = false;
        for update in &parsed.updates {
            if update.id() == &me {
                about_me = true;
                continue;
            }
            let suspicion = self
                .suspects
                .entry(update.id().clone())
                .or_insert_with(|| Suspicion {
                    incarnation: update.incarnation(),
                    since: now,
                    confirmed_by: Vec::new(),
                });
            if update.incarnation() > suspicion.incarnation {
                // A newer suspicion (the member refuted, then failed again).
                *suspicion = Suspicion {
                    incarnation: update.incarnation(),
                    since: now,
                    confirmed_by: Vec::new(),
                };
            }
            if update.incarnation() == suspicion.incarnation
                && src != *update.id()
                && !suspicion.confirmed_by.contains(&src)
                && suspicion.confirmed_by.len() < MAX_CONFIRMATIONS
            {
                suspicion.confirmed_by.push(src.clone());
            }
        }
        if about_me {
            self.adjust_health(1);
        }
    }

    /// Fires every timer due at `now`, in order, and the suspicion watchdog
    /// when its period has passed; returns how many foca timers fired.
    pub fn advance(&mut self, now: Instant, rt: &mut impl Runtime<T>) -> usize {
        let mut fired = 0;
        while self.timers.peek().is_some_and(|p| p.at <= now) {
            let Some(pending) = self.timers.pop() else {
                break;
            };
            fired += 1;
            // A failed timer (stale token, say) is foca's to ignore.
            let _ = self.with_foca(now, rt, |foca, rt| foca.handle_timer(pending.timer, rt));
        }
        if now >= self.next_watchdog {
            self.expire_stuck_suspicions(now, rt);
            self.next_watchdog = now + (self.config_for)(self.sized_for).probe_period;
        }
        fired
    }

    /// Announces this node to `peer` (joining through it).
    pub fn announce(
        &mut self,
        peer: T,
        now: Instant,
        rt: &mut impl Runtime<T>,
    ) -> Result<(), foca::Error> {
        self.with_foca(now, rt, |foca, rt| foca.announce(peer, rt))
    }

    /// Queues a custom broadcast; false when the handler found it stale.
    pub fn add_broadcast(&mut self, item: &[u8]) -> Result<bool, foca::Error> {
        self.foca.add_broadcast(item)
    }

    /// Applies member states learnt elsewhere (a bootstrap, say).
    pub fn apply_many(
        &mut self,
        members: impl Iterator<Item = Member<T>>,
        apply_mine: bool,
        now: Instant,
        rt: &mut impl Runtime<T>,
    ) -> Result<(), foca::Error> {
        // States applied from outside SWIM's packets (a bootstrap, a
        // restored member list) may hold suspicions nobody times out here.
        self.scan_due = true;
        self.with_foca(now, rt, |foca, rt| foca.apply_many(members, apply_mine, rt))
    }

    /// Leaves the cluster: peers learn it from us instead of by detection.
    pub fn leave(&mut self, now: Instant, rt: &mut impl Runtime<T>) -> Result<(), foca::Error> {
        self.with_foca(now, rt, |foca, rt| foca.leave_cluster(rt))
    }

    /// Sets foca's timings for the current member count, when it crossed a
    /// power of two since the last resize.
    fn resize(&mut self) {
        let size = self.foca.num_members() + 1;
        if size.next_power_of_two() != self.sized_for.next_power_of_two() {
            let config = (self.config_for)(size);
            self.max_packet = config.max_packet_size.get();
            // foca refuses only configs that are invalid in themselves.
            let _ = self.foca.set_config(config);
            self.sized_for = size;
        }
    }

    /// Declares down a member that stayed suspect, unrefuted, past the
    /// suspicion timeout: Lifeguard's (from `max` down to `min` as
    /// confirmations arrive) when it is on, else twice foca's.
    ///
    /// foca runs its timeout only on the member that raised the suspicion,
    /// and drops it if that member changes identity meanwhile (it rejoins
    /// after a partition, say). Then nobody declares the suspect down, and
    /// once the suspicion has been gossiped its allotted times the suspect
    /// never hears of it to refute it: it would stay suspect forever. Every
    /// member running this check (as memberlist runs a timer on every
    /// member that learns of a suspicion) restores SWIM's rule.
    ///
    /// The scan of foca's members runs only while suspicions are followed,
    /// and every 16th round to catch one that arrived otherwise (a
    /// bootstrap): at rest, nothing here runs per member.
    fn expire_stuck_suspicions(&mut self, now: Instant, rt: &mut impl Runtime<T>) -> usize {
        self.watchdog_rounds += 1;
        if self.suspects.is_empty()
            && !std::mem::take(&mut self.scan_due)
            && !self.watchdog_rounds.is_multiple_of(16)
        {
            return 0;
        }
        self.scan_due = false;
        // Built once per scan: a cluster forming holds hundreds of suspects.
        let config = (self.config_for)(self.sized_for);
        let mut suspects = std::mem::take(&mut self.suspects);
        let mut still = HashMap::new();
        let mut expired = Vec::new();
        for member in self.foca.iter_membership_state() {
            if member.state() != State::Suspect {
                continue;
            }
            let id = member.id().clone();
            let suspicion = match suspects.remove(&id) {
                Some(s) if s.incarnation == member.incarnation() => s,
                // Ours (a probe of ours failed): we are its originator.
                _ => Suspicion {
                    incarnation: member.incarnation(),
                    since: now,
                    confirmed_by: vec![self.foca.identity().clone()],
                },
            };
            if now.saturating_duration_since(suspicion.since)
                > self.timeout_for(&config, &id, &suspicion)
            {
                expired.push(Member::new(id, member.incarnation(), State::Down));
            } else {
                still.insert(id, suspicion);
            }
        }
        self.suspects = still;
        let suspects = &self.suspects;
        self.raised_here.retain(|id| suspects.contains_key(id));
        let count = expired.len();
        if count > 0 {
            let _ = self.with_foca(now, rt, |foca, rt| {
                foca.apply_many(expired.into_iter(), true, rt)
            });
        }
        count
    }
}

#[cfg(test)]
mod tests;
