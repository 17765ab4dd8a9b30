//! Health of this node's own instances, learnt from traffic.
//!
//! Passive detection with active recovery: the first time a call to a local
//! instance cannot connect, the owning sidecar reports it refusing to the
//! registry (whose `core::health::HealthBook` is the one rule for an
//! instance's health), which marks it `critical` in the catalog (so every sidecar in the cluster stops routing to it within a
//! gossip round, not after each has burnt its own failures) and then probes
//! its port until it accepts again, when it is marked `passing`. Healthy
//! instances cost nothing: nothing probes them. A connect that failed
//! because this agent is out of file descriptors says nothing about the
//! instance (issue 21: 21,000 idle connections got a healthy instance
//! marked critical), so it marks nothing and the agent says what is wrong.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::registry::Registry;

/// How often a critical instance's port is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long one probe may take to connect.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Instances of this node being probed back to health.
#[derive(Debug, Default)]
struct Recovering {
    ids: Mutex<HashSet<String>>,
}

impl Recovering {
    /// Claims `id` for probing; false if a probe task already owns it.
    fn claim(&self, id: &str) -> bool {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned())
    }

    fn release(&self, id: &str) {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }
}

/// Passive health of this node's instances, as traffic reports it.
pub struct PassiveHealth {
    registry: Arc<Registry>,
    recovering: Recovering,
    shutdown: watch::Receiver<bool>,
    fd_log: EveryTenSeconds,
}

/// True at most once every ten seconds.
#[derive(Debug, Default)]
struct EveryTenSeconds {
    last: Mutex<Option<Instant>>,
}

impl EveryTenSeconds {
    fn due(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(10)) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// The error when this process cannot open a socket for want of file
/// descriptors (checked by opening one: the caller's connect error is not
/// at hand, and a descriptor freed since would make the instance's fault
/// real again).
fn self_out_of_descriptors() -> Option<std::io::Error> {
    match std::net::UdpSocket::bind("127.0.0.1:0") {
        Err(e) if crate::server::out_of_descriptors(&e) => Some(e),
        _ => None,
    }
}

impl PassiveHealth {
    /// Health marked through `registry`; probes stop when `shutdown` turns true.
    pub fn new(registry: Arc<Registry>, shutdown: watch::Receiver<bool>) -> Arc<Self> {
        Arc::new(Self {
            registry,
            recovering: Recovering::default(),
            shutdown,
            fd_log: EveryTenSeconds::default(),
        })
    }

    /// A call to local instance `id` could not connect: mark it critical and
    /// probe it until it is back. Instances of other nodes are not ours to mark.
    pub async fn connect_failed(self: &Arc<Self>, id: &str) {
        if let Some(e) = self_out_of_descriptors() {
            if self.fd_log.due() {
                warn!(instance = %id, error = %e, "cannot reach a local instance because this agent is out of file descriptors; the instance is not marked critical; raise the limit (ulimit -n, LimitNOFILE) or lower --max-connections; logged at most once every 10 s");
            }
            return;
        }
        // Probed back even when its health did not change (its check had
        // marked it critical already): the refusal must be cleared for the
        // check's own verdict to apply again.
        if self.registry.observe_refusing(id, true).await.is_none() {
            return;
        }
        if !self.recovering.claim(id) {
            return;
        }
        warn!(instance = %id, "local instance refuses connections; marked critical until its port accepts again");
        let health = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            health.probe_until_back(&id).await;
            health.recovering.release(&id);
        });
    }

    async fn probe_until_back(&self, id: &str) {
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            // Deregistered (or never ours) while down: nothing left to recover.
            let snapshot = self.registry.catalog().snapshot();
            let Some(address) = snapshot.local_instance(id).map(|i| i.address) else {
                return;
            };
            let accepted = matches!(
                tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(address)).await,
                Ok(Ok(_))
            );
            if accepted {
                if self.registry.observe_refusing(id, false).await == Some(true) {
                    info!(instance = %id, "local instance accepts connections again; its declared health applies again");
                }
                return;
            }
        }
    }
}
