//! Admission of incoming handshakes: what a stranger can make the endpoint
//! hold before it has proved it holds the cluster's credentials.
//!
//! Every incoming handshake costs state (TLS, crypto keys, packet spaces,
//! buffers: about 80 KB before authentication, issue 21). quinn keeps up to
//! 65,536 by default, so a flood of Initial packets grew a node by 600 MB.
//! Here the number in flight is capped; past a low mark a source must first
//! prove it receives our packets (stateless retry: a token, no state kept);
//! past the cap, or past a smaller cap for one source address, it is
//! refused; and a handshake that does not finish in time
//! is dropped. Peers that do complete a handshake are few and connect
//! rarely, so the limits never touch a healthy cluster. Every refusal is
//! counted in `gossamer_quic_handshakes_refused_total{reason}` and logged
//! at most once every ten seconds for the whole endpoint.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{ConnectionError, Incoming};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

use crate::metrics;

/// Handshakes in flight at most (≈ 5 MB of pre-authentication state).
pub(super) const MAX_HANDSHAKES: usize = 64;
/// Handshakes in flight at most from one IP address, so one source that
/// proves its address cannot take every slot from the others.
pub(super) const MAX_PER_SOURCE: usize = 16;
/// Handshakes in flight past which a source must first prove its address.
pub(super) const RETRY_ABOVE: usize = 8;
/// Incoming attempts quinn queues for the accept loop (its default is
/// 65,536); the loop drains them as fast as they come.
pub(super) const MAX_INCOMING: usize = 256;
/// Bytes quinn buffers for one queued attempt, and for all of them.
pub(super) const INCOMING_BUFFER: u64 = 64 * 1024;
/// See [`INCOMING_BUFFER`].
pub(super) const INCOMING_BUFFER_TOTAL: u64 = 4 * 1024 * 1024;

/// How long a peer gets to finish its handshake: twice what our own dials
/// wait, so a slow but real peer is never cut short.
pub(super) fn handshake_timeout(connect_timeout: Duration) -> Duration {
    connect_timeout
        .saturating_mul(2)
        .max(Duration::from_secs(2))
}

/// Decides, for each incoming attempt, whether it gets state now.
pub(super) struct HandshakeGate {
    permits: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    log: Throttle,
}

impl Default for HandshakeGate {
    fn default() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            per_source: Arc::default(),
            log: Throttle::new(Duration::from_secs(10)),
        }
    }
}

/// A handshake's slot: one of the endpoint's and one of its source's.
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    source: IpAddr,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

impl HandshakeGate {
    /// The attempt with a slot to hold while its handshake runs, or None when
    /// it was answered with a retry or refused (without state either way).
    pub(super) fn admit(&self, incoming: Incoming) -> Option<(Incoming, Slot)> {
        let peer = incoming.remote_address();
        let in_flight = MAX_HANDSHAKES - self.permits.available_permits();
        let mut incoming = incoming;
        if in_flight >= RETRY_ABOVE && !incoming.remote_address_validated() {
            match incoming.retry() {
                Ok(()) => {
                    self.refused(peer, "retry", in_flight);
                    return None;
                }
                // Not allowed for this packet (it carries a token already):
                // it goes on to the cap like a validated one.
                Err(e) => incoming = e.into_incoming(),
            }
        }
        let source = peer.ip();
        let mut counts = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let from_source = counts.get(&source).copied().unwrap_or(0);
        if from_source >= MAX_PER_SOURCE {
            drop(counts);
            incoming.refuse();
            self.refused(peer, "source", in_flight);
            return None;
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                counts.insert(source, from_source + 1);
                drop(counts);
                let slot = Slot {
                    _permit: permit,
                    source,
                    per_source: self.per_source.clone(),
                };
                Some((incoming, slot))
            }
            Err(_) => {
                drop(counts);
                incoming.refuse();
                self.refused(peer, "busy", in_flight);
                None
            }
        }
    }

    /// Counts a handshake that ran out of time (its state is dropped by the caller).
    pub(super) fn timed_out(&self, peer: SocketAddr) {
        let in_flight = MAX_HANDSHAKES - self.permits.available_permits();
        self.refused(peer, "timeout", in_flight);
    }

    fn refused(&self, peer: SocketAddr, reason: &'static str, in_flight: usize) {
        metrics::handshake_refused(reason);
        if let Some(since_last) = self.log.due() {
            warn!(
                %peer,
                reason,
                in_flight,
                limit = MAX_HANDSHAKES,
                refused_since_last_line = since_last,
                "refusing unauthenticated QUIC handshakes (a flood of Initial packets?); retry: asked to prove its address, busy: too many in flight, source: too many from one address, timeout: not finished in time; logged at most once every 10 s"
            );
        }
    }
}

/// A log line at most once per period for a whole kind of event, with the
/// number of events since the last line.
pub(super) struct Throttle {
    every: Duration,
    last: Mutex<Option<Instant>>,
    count: AtomicU64,
}

impl Throttle {
    pub(super) fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(None),
            count: AtomicU64::new(0),
        }
    }

    /// Counts one event; Some(events since the last line, this one
    /// included) when a line is due now.
    pub(super) fn due(&self) -> Option<u64> {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.every) {
            return None;
        }
        *last = Some(now);
        Some(self.count.swap(0, Ordering::Relaxed))
    }
}

/// What a failed handshake says about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// TLS refused a certificate, ours or theirs: another passphrase or CA.
    Credentials,
    /// Not a gossamer peer: another ALPN, broken TLS or QUIC, another version.
    NotGossamer,
    /// Silence, a reset, a deliberate close: nothing to report.
    Other,
}

/// TLS alerts about certificates (RFC 8446 §6.2): bad_certificate,
/// unsupported_certificate, certificate_revoked, certificate_expired,
/// certificate_unknown, unknown_ca, access_denied, decrypt_error (a
/// signature that does not verify), certificate_required.
const CERTIFICATE_ALERTS: [u64; 9] = [42, 43, 44, 45, 46, 48, 49, 51, 116];

/// Classifies a handshake's error, on either side of it.
pub(super) fn classify(error: &ConnectionError) -> Failure {
    let code = match error {
        ConnectionError::TransportError(e) => u64::from(e.code),
        ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
        ConnectionError::VersionMismatch => return Failure::NotGossamer,
        _ => return Failure::Other,
    };
    // Crypto errors are 0x100 + the TLS alert (RFC 9001 §4.8).
    match code.checked_sub(0x100) {
        Some(alert) if CERTIFICATE_ALERTS.contains(&alert) => Failure::Credentials,
        Some(alert) if alert < 0x100 => Failure::NotGossamer,
        // A transport error (protocol violation, ...) during the handshake:
        // on a closed-by-peer connection it is the peer's business.
        _ if matches!(error, ConnectionError::TransportError(_)) => Failure::NotGossamer,
        _ => Failure::Other,
    }
}

/// Counts and logs (at debug level: it is noise, not an alarm) a handshake
/// with something that is not a gossamer peer.
pub(super) fn note_not_gossamer(peer: SocketAddr, error: &ConnectionError) {
    metrics::handshake_refused("not_gossamer");
    debug!(%peer, %error, "QUIC handshake with something that is not a gossamer peer (another protocol, or malformed)");
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn::TransportErrorCode;

    fn closed(code: TransportErrorCode) -> ConnectionError {
        ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: code,
            frame_type: None,
            reason: Default::default(),
        })
    }

    #[test]
    fn certificate_alerts_are_credentials_and_other_protocols_are_not() {
        assert_eq!(
            classify(&closed(TransportErrorCode::crypto(48))),
            Failure::Credentials
        );
        assert_eq!(
            classify(&closed(TransportErrorCode::crypto(116))),
            Failure::Credentials
        );
        // no_application_protocol: another ALPN.
        assert_eq!(
            classify(&closed(TransportErrorCode::crypto(120))),
            Failure::NotGossamer
        );
        assert_eq!(
            classify(&closed(TransportErrorCode::crypto(50))),
            Failure::NotGossamer
        );
        assert_eq!(
            classify(&ConnectionError::VersionMismatch),
            Failure::NotGossamer
        );
        assert_eq!(classify(&ConnectionError::TimedOut), Failure::Other);
        assert_eq!(classify(&ConnectionError::Reset), Failure::Other);
    }

    #[test]
    fn the_throttle_lets_one_line_through_per_period_with_the_count() {
        let throttle = Throttle::new(Duration::from_secs(3600));
        assert_eq!(throttle.due(), Some(1));
        assert_eq!(throttle.due(), None);
        assert_eq!(throttle.due(), None);
        let quick = Throttle::new(Duration::ZERO);
        assert_eq!(quick.due(), Some(1));
        assert_eq!(quick.due(), Some(1));
    }
}
