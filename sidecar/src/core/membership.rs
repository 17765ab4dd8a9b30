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

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foca::{
    BroadcastHandler, Codec, Config, Foca, Identity, Incarnation, Member, Notification,
    PostcardCodec, Runtime, State, Timer,
};
use rand::Rng;

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
}

impl<T: Identity + Eq, R: Runtime<T>> Runtime<T> for CoreRuntime<'_, T, R> {
    fn notify(&mut self, notification: Notification<'_, T>) {
        if matches!(
            notification,
            Notification::MemberUp(_) | Notification::MemberDown(_) | Notification::Rename(..)
        ) {
            *self.members_changed = true;
        }
        self.inner.notify(notification);
    }

    fn send_to(&mut self, to: T, data: &[u8]) {
        self.inner.send_to(to, data);
    }

    fn submit_after(&mut self, timer: Timer<T>, after: Duration) {
        *self.seq += 1;
        self.timers.push(Pending {
            at: self.now + after,
            seq: *self.seq,
            timer,
        });
    }
}

/// SWIM membership as plain data.
pub struct SwimCore<T: Identity, H: BroadcastHandler<T>, R: Rng> {
    foca: Foca<T, PostcardCodec, R, H>,
    config_for: ConfigFor,
    timers: BinaryHeap<Pending<T>>,
    seq: u64,
    sized_for: usize,
    next_watchdog: Instant,
    /// Members seen suspect, with the incarnation and when first seen.
    suspects: HashMap<(T, Incarnation), Instant>,
    members_changed: bool,
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
            foca: Foca::with_custom_broadcast(identity, config, rng, PostcardCodec, handler),
            config_for,
            timers: BinaryHeap::new(),
            seq: 0,
            sized_for: 1,
            next_watchdog,
            suspects: HashMap::new(),
            members_changed: false,
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
        let out = {
            let mut core_rt = CoreRuntime {
                inner: rt,
                timers: &mut self.timers,
                seq: &mut self.seq,
                now,
                members_changed: &mut changed,
            };
            f(&mut self.foca, &mut core_rt)
        };
        if changed {
            self.members_changed = true;
            self.resize();
        }
        out
    }

    /// Feeds one SWIM packet.
    pub fn handle_data(
        &mut self,
        data: &[u8],
        now: Instant,
        rt: &mut impl Runtime<T>,
    ) -> Result<(), foca::Error> {
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
        T::Addr: AsRef<str>,
    {
        if *certified != Certified::Unbound {
            if let Ok(header) = Codec::<T>::decode_header(&mut PostcardCodec, data) {
                if !certified.admits(header.src.addr().as_ref()) {
                    return Err(PacketError::Impersonation {
                        claimed: header.src,
                    });
                }
            }
        }
        self.handle_data(data, now, rt).map_err(PacketError::Foca)
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
            // foca refuses only configs that are invalid in themselves.
            let _ = self.foca.set_config((self.config_for)(size));
            self.sized_for = size;
        }
    }

    /// Declares down a member that stayed suspect, unrefuted, well past the
    /// suspicion timeout.
    ///
    /// foca runs that timeout only on the member that raised the suspicion,
    /// and drops it if that member changes identity meanwhile (it rejoins
    /// after a partition, say). Then nobody declares the suspect down, and
    /// once the suspicion has been gossiped its allotted times the suspect
    /// never hears of it to refute it: it would stay suspect forever. Every
    /// member running this check (as memberlist runs a timer on every
    /// member that learns of a suspicion) restores SWIM's rule.
    fn expire_stuck_suspicions(&mut self, now: Instant, rt: &mut impl Runtime<T>) -> usize {
        let config = (self.config_for)(self.sized_for);
        let limit = config.suspect_to_down_after * 2 + config.probe_period;
        let mut seen = HashMap::new();
        let mut expired = Vec::new();
        for member in self.foca.iter_membership_state() {
            if member.state() != State::Suspect {
                continue;
            }
            let key = (member.id().clone(), member.incarnation());
            let since = self.suspects.get(&key).copied().unwrap_or(now);
            if now.saturating_duration_since(since) > limit {
                expired.push(Member::new(
                    member.id().clone(),
                    member.incarnation(),
                    State::Down,
                ));
            } else {
                seen.insert(key, since);
            }
        }
        self.suspects = seen;
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
