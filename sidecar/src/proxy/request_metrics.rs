//! The proxy's per-request metrics (`gossamer_proxy_requests_total` and
//! `gossamer_proxy_request_duration_seconds`), with their handles kept.
//!
//! Why: `counter!` with labels that are not literals builds its key, and
//! allocates every label, on each call, even for a series that exists.
//! Through hyper's path that was seven allocations per gRPC call. Here a
//! label set's handles are built once and looked up by its labels.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::Instant;

use http::StatusCode;
use metrics::{Counter, Histogram};

use crate::metrics::{PROXY_DURATION, PROXY_REQUESTS};

/// Label sets kept at most. Labels come from the catalog and status codes,
/// so this is never reached in practice; past it the cache starts over.
const MAX_KEPT: usize = 4096;

/// Request counters and duration histograms, by label set.
#[derive(Default)]
pub struct RequestMetrics {
    kept: Mutex<KeptHandles>,
}

#[derive(Default)]
struct KeptHandles {
    /// By a hash of the labels; each bucket is checked label by label.
    by_labels: HashMap<u64, Vec<Handles>>,
    count: usize,
}

struct Handles {
    service: String,
    node: String,
    status: u16,
    protocol: &'static str,
    requests: Counter,
    duration: Histogram,
}

impl RequestMetrics {
    /// Counts one answered request of `service` (a catalog name or
    /// `unknown`), sent to `node` (None: no instance was reached), and
    /// records its duration since `started`.
    pub fn observe(
        &self,
        service: &str,
        node: Option<&str>,
        status: u16,
        protocol: &'static str,
        started: Instant,
    ) {
        let node = node.unwrap_or("none");
        let mut hasher = DefaultHasher::new();
        (service, node, status, protocol).hash(&mut hasher);
        let key = hasher.finish();
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.count >= MAX_KEPT {
            *kept = KeptHandles::default();
        }
        let KeptHandles { by_labels, count } = &mut *kept;
        let bucket = by_labels.entry(key).or_default();
        let found = bucket.iter().position(|h| {
            h.status == status && h.protocol == protocol && h.service == service && h.node == node
        });
        let at = found.unwrap_or_else(|| {
            bucket.push(Handles::register(service, node, status, protocol));
            *count += 1;
            bucket.len() - 1
        });
        let Some(handles) = bucket.get(at) else {
            return;
        };
        handles.requests.increment(1);
        handles.duration.record(started.elapsed().as_secs_f64());
    }
}

impl Handles {
    fn register(service: &str, node: &str, status: u16, protocol: &'static str) -> Self {
        let code = StatusCode::from_u16(status)
            .map_or_else(|_| status.to_string().into(), super::code_label);
        Self {
            service: service.to_owned(),
            node: node.to_owned(),
            status,
            protocol,
            requests: ::metrics::counter!(
                PROXY_REQUESTS,
                "service" => service.to_owned(),
                "upstream_node" => node.to_owned(),
                "code" => code,
                "protocol" => protocol
            ),
            duration: ::metrics::histogram!(PROXY_DURATION, "service" => service.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_label_set_is_registered_once_and_the_cache_stays_bounded() {
        let metrics = RequestMetrics::default();
        let started = Instant::now();
        for _ in 0..3 {
            metrics.observe("echo", Some("b"), 200, "http1", started);
            metrics.observe("echo", None, 503, "http1", started);
            metrics.observe("echo", Some("b"), 200, "grpc", started);
        }
        assert_eq!(metrics.kept.lock().expect("lock").count, 3);
        for i in 0..MAX_KEPT + 10 {
            metrics.observe("echo", Some(&format!("n{i}")), 200, "http1", started);
        }
        assert!(metrics.kept.lock().expect("lock").count <= MAX_KEPT);
    }
}
