//! Closes connections nobody uses, so an agent holds connections only to
//! the peers it talks to (upstreams of its proxy, anti-entropy partners,
//! joiners) and not one per member: what a connection costs (keep-alives,
//! quinn's state, a task) then stays independent of the cluster's size.
//!
//! "Used" is read from quinn's own counters: a STREAM or DATAGRAM frame in
//! either direction since the last look. Keep-alive PINGs and ACKs do not
//! count, and a connection with a stream open is never idle, however quiet
//! (`lease`). The next use simply dials again (`Transport::connection`).

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use quinn::Connection;

use super::Transport;

/// What changes when a connection carries anything for the application.
fn activity(connection: &Connection) -> u64 {
    let stats = connection.stats();
    stats.frame_tx.stream
        + stats.frame_rx.stream
        + stats.frame_tx.datagram
        + stats.frame_rx.datagram
}

/// Runs until the transport is dropped: every quarter of `idle_close`,
/// closes each connection whose activity did not change for `idle_close`.
pub(super) async fn close_idle(transport: Weak<Transport>, idle_close: Duration) {
    let mut tick = tokio::time::interval((idle_close / 4).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // stable id → (activity seen, when it last changed)
    let mut seen: HashMap<usize, (u64, Instant)> = HashMap::new();
    loop {
        tick.tick().await;
        let Some(transport) = transport.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut next = HashMap::new();
        let live = transport.live();
        ::metrics::gauge!(crate::metrics::QUIC_CONNECTIONS).set(live.len() as f64);
        for (addr, connection) in live {
            let id = connection.stable_id();
            let count = activity(&connection);
            let since = match seen.get(&id) {
                Some((before, since)) if *before == count => *since,
                _ => now,
            };
            if now.duration_since(since) >= idle_close && !transport.has_open_streams(id) {
                transport.close_idle(addr, id);
            } else {
                next.insert(id, (count, since));
            }
        }
        seen = next;
    }
}
