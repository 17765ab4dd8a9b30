//! Lifeguard (HashiCorp's extensions to SWIM, as memberlist runs them) on
//! top of foca, which has none.
//!
//! - **Local health**: a score that grows while this node's own probes go
//!   unanswered (and when it hears itself suspected) and shrinks with every
//!   ack. The core stretches its probe period and probe timeout by
//!   `score + 1`: a node whose CPU or network is starved stops accusing
//!   healthy peers at the rate it would otherwise.
//! - **Suspicion timeouts that shrink with confirmations**: a suspicion
//!   starts at `max` and shrinks towards `min` as independent members are
//!   heard suspecting the same member and incarnation:
//!   `max(min, max − (max − min) · log(C + 1) / log(K + 1))`.
//! - **The suspect is told**: a probe sent to a member this node suspects
//!   carries that suspicion (memberlist's "buddy system"), so the suspect
//!   refutes it at once instead of waiting for gossip to reach it.
//!
//! foca 2 gives what this needs without a patch: its timers pass through
//! the core's queue (so their delays can be stretched), `ProbeFailed` and
//! `DataReceived` notifications, and its codec, with which the core reads
//! (and for the buddy system rewrites) the updates a packet carries.

use std::time::Duration;

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Identity, Member, PostcardCodec, State};

/// Lifeguard's settings (memberlist's defaults in [`Lifeguard::default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lifeguard {
    /// Ceiling of the local health score (memberlist's `AwarenessMaxMultiplier`).
    pub max_health: u32,
    /// The longest suspicion timeout, as a multiple of the shortest
    /// (memberlist's `SuspicionMaxTimeoutMult`).
    pub max_timeout_mult: u32,
    /// Independent confirmations that bring a suspicion to its shortest
    /// timeout (memberlist: `SuspicionMult − 2`).
    pub confirmations: u32,
}

impl Default for Lifeguard {
    fn default() -> Self {
        Self {
            max_health: 8,
            max_timeout_mult: 6,
            confirmations: 2,
        }
    }
}

impl Lifeguard {
    /// The suspicion timeout after `confirmed` independent confirmations,
    /// between `min` and `min × max_timeout_mult`.
    pub fn suspicion_timeout(&self, min: Duration, confirmed: usize) -> Duration {
        let max = min * self.max_timeout_mult.max(1);
        let k = f64::from(self.confirmations);
        if k <= 0.0 {
            return min;
        }
        let c = confirmed as f64;
        let frac = (c + 1.0).ln() / (k + 1.0).ln();
        let span = max.saturating_sub(min).as_secs_f64();
        let timeout = max.as_secs_f64() - span * frac;
        Duration::from_secs_f64(timeout.max(min.as_secs_f64()))
    }
}

/// What a packet says, read without foca: its header, the member updates it
/// carries that the reader asked for, and where the updates end.
pub(super) struct Parsed<T> {
    pub(super) header: Header<T>,
    /// The updates `parse`'s `keep` chose (most packets carry none a reader
    /// wants: keeping every update cost an allocation per packet and more).
    pub(super) updates: Vec<Member<T>>,
    /// How many updates the packet carries in all.
    pub(super) update_count: usize,
    /// Offset of the first byte after the updates.
    pub(super) updates_end: usize,
    /// Offset of the update count (None when the packet has none).
    pub(super) count_at: Option<usize>,
}

/// Reads a foca packet's header and the updates `keep` chooses; None when it
/// does not parse (foca then rejects it too).
pub(super) fn parse<T>(packet: &[u8], keep: impl Fn(&Member<T>) -> bool) -> Option<Parsed<T>>
where
    T: Identity + serde::Serialize + for<'de> serde::Deserialize<'de>,
{
    let mut codec = PostcardCodec;
    let mut data = packet;
    let header: Header<T> = codec.decode_header(&mut data).ok()?;
    let mut updates = Vec::new();
    let mut count_at = None;
    let mut update_count = 0;
    // Mirrors foca's handle_data: broadcasts and announces carry no updates.
    if data.remaining() >= 2
        && !matches!(
            header.message,
            foca::Message::Broadcast | foca::Message::Announce
        )
    {
        count_at = Some(packet.len() - data.remaining());
        let n = data.get_u16();
        update_count = usize::from(n);
        for _ in 0..n {
            let update = codec.decode_member(&mut data).ok()?;
            if keep(&update) {
                updates.push(update);
            }
        }
    }
    let updates_end = packet.len() - data.remaining();
    Some(Parsed {
        header,
        updates,
        update_count,
        updates_end,
        count_at,
    })
}

/// `packet` with `extra` added to its updates, if it has an update list
/// and the result fits in `max_len`.
pub(super) fn with_update<T>(
    packet: &[u8],
    parsed: &Parsed<T>,
    extra: &Member<T>,
    max_len: usize,
) -> Option<Vec<u8>>
where
    T: Identity + serde::Serialize + for<'de> serde::Deserialize<'de>,
{
    let count_at = parsed.count_at?;
    let count = u16::try_from(parsed.update_count + 1).ok()?;
    let mut member = Vec::new();
    PostcardCodec.encode_member(extra, &mut member).ok()?;
    let mut out = Vec::with_capacity(packet.len() + member.len());
    out.extend_from_slice(&packet[..count_at]);
    out.put_u16(count);
    out.extend_from_slice(&packet[count_at + 2..parsed.updates_end]);
    out.extend_from_slice(&member);
    out.extend_from_slice(&packet[parsed.updates_end..]);
    (out.len() <= max_len).then_some(out)
}

/// True for a suspicion (rather than any other update).
pub(super) fn is_suspicion<T>(member: &Member<T>) -> bool {
    member.state() == State::Suspect
}
