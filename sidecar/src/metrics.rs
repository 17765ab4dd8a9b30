//! Metric names (a contract: dashboards and alerts depend on them), the
//! Prometheus exporter, and small helpers so call sites stay one line.

use std::net::SocketAddr;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// `gossamer_members{state}`: members by SWIM state.
pub const MEMBERS: &str = "gossamer_members";
/// `gossamer_gossip_packets_total{direction}`.
pub const GOSSIP_PACKETS: &str = "gossamer_gossip_packets_total";
/// `gossamer_gossip_bytes_total{direction}`.
pub const GOSSIP_BYTES: &str = "gossamer_gossip_bytes_total";
/// `gossamer_peer_rtt_seconds{peer}`.
pub const PEER_RTT: &str = "gossamer_peer_rtt_seconds";
/// `gossamer_catalog_records{kind}`.
pub const CATALOG_RECORDS: &str = "gossamer_catalog_records";
/// `gossamer_catalog_index`.
pub const CATALOG_INDEX: &str = "gossamer_catalog_index";
/// `gossamer_handshake_failures_total`.
pub const HANDSHAKE_FAILURES: &str = "gossamer_handshake_failures_total";
/// `gossamer_decode_errors_total`.
pub const DECODE_ERRORS: &str = "gossamer_decode_errors_total";
/// `gossamer_proxy_requests_total{service,upstream_node,code}`.
pub const PROXY_REQUESTS: &str = "gossamer_proxy_requests_total";
/// `gossamer_proxy_request_duration_seconds{service}` (histogram).
pub const PROXY_DURATION: &str = "gossamer_proxy_request_duration_seconds";
/// `gossamer_upstream_ejections_total{service}`.
pub const EJECTIONS: &str = "gossamer_upstream_ejections_total";
/// `gossamer_rtt_rejections_total{service}`.
pub const RTT_REJECTIONS: &str = "gossamer_rtt_rejections_total";
/// `gossamer_retries_total{service}`.
pub const RETRIES: &str = "gossamer_retries_total";
/// `gossamer_relay_refusals_total`: proxy frames naming no local instance.
pub const RELAY_REFUSALS: &str = "gossamer_relay_refusals_total";
/// `gossamer_dns_queries_total{type,rcode}`: DNS questions answered.
pub const DNS_QUERIES: &str = "gossamer_dns_queries_total";
/// `gossamer_supervised_copies{service}`: copies this agent runs.
pub const SUPERVISED_COPIES: &str = "gossamer_supervised_copies";
/// The `service` label of proxy metrics for a name the catalog does not know.
pub const UNKNOWN_SERVICE: &str = "unknown";
/// `gossamer_tcp_connections_total{service,upstream_node}`: connections
/// accepted on `--tcp` listeners, by the node they went to (`none` when
/// refused or unreachable).
pub const TCP_CONNECTIONS: &str = "gossamer_tcp_connections_total";
/// `gossamer_tcp_bytes_total{service,direction}`: bytes carried for `--tcp`
/// services (`out` from the local client, `in` back to it), counted when a
/// connection closes.
pub const TCP_BYTES: &str = "gossamer_tcp_bytes_total";
/// `gossamer_quic_handshakes_refused_total{reason}`: incoming QUIC
/// handshakes given no state or dropped before authentication: `retry`
/// (asked to prove its address first), `busy` (too many handshakes in
/// flight), `source` (too many from one IP address), `timeout` (not
/// finished in time), `not_gossamer` (a peer that
/// does not speak gossamer's TLS: another ALPN, malformed packets).
pub const HANDSHAKES_REFUSED: &str = "gossamer_quic_handshakes_refused_total";
/// `gossamer_http_connections_refused_total{listener,reason}`: TCP
/// connections the HTTP listeners closed unserved (`limit`: the listener's
/// connection cap; `header_timeout`: request head not sent in time).
pub const HTTP_CONNECTIONS_REFUSED: &str = "gossamer_http_connections_refused_total";
/// `gossamer_swim_packets_refused_total{reason}`: SWIM packets dropped
/// before membership applied them: `impersonation` (the packet names a
/// source other than the node its connection's certificate is issued to).
pub const SWIM_PACKETS_REFUSED: &str = "gossamer_swim_packets_refused_total";
/// The `reason` of [`SWIM_PACKETS_REFUSED`] for a packet naming another node.
pub const REFUSED_IMPERSONATION: &str = "impersonation";
/// `gossamer_build_info{version}`.
pub const BUILD_INFO: &str = "gossamer_build_info";
/// Open QUIC connections (only peers in use have one).
pub const QUIC_CONNECTIONS: &str = "gossamer_quic_connections";
/// Lifeguard's local health score (0 healthy; probe timings × score + 1).
pub const LOCAL_HEALTH: &str = "gossamer_local_health";
/// `gossamer_proxy_hops_total{stream}`: requests sent to another node's
/// sidecar, by the QUIC stream they went on: `new` (opened for it) or
/// `kept` (a hop an earlier request to the same instance left open).
pub const PROXY_HOPS: &str = "gossamer_proxy_hops_total";

/// The metric names shared/DESIGN.md makes a contract (histograms by base name).
pub const DESIGN_CONTRACT: [&str; 13] = [
    MEMBERS,
    GOSSIP_PACKETS,
    GOSSIP_BYTES,
    PEER_RTT,
    CATALOG_RECORDS,
    CATALOG_INDEX,
    HANDSHAKE_FAILURES,
    DECODE_ERRORS,
    PROXY_REQUESTS,
    PROXY_DURATION,
    EJECTIONS,
    RTT_REJECTIONS,
    RETRIES,
];

/// Every metric the agent exports: the contract, build info, relay refusals,
/// DNS queries and TCP services (second wave of DESIGN.md; the TCP series
/// appear once a `--tcp` listener is configured), the hardening counters of
/// issues 21 and 22, the connection and Lifeguard gauges of issue 17, and
/// the kept hops of issue 16.
pub const EXPORTED: [&str; 24] = [
    MEMBERS,
    GOSSIP_PACKETS,
    GOSSIP_BYTES,
    PEER_RTT,
    CATALOG_RECORDS,
    CATALOG_INDEX,
    HANDSHAKE_FAILURES,
    DECODE_ERRORS,
    PROXY_REQUESTS,
    PROXY_DURATION,
    EJECTIONS,
    RTT_REJECTIONS,
    RETRIES,
    BUILD_INFO,
    RELAY_REFUSALS,
    DNS_QUERIES,
    TCP_CONNECTIONS,
    TCP_BYTES,
    HANDSHAKES_REFUSED,
    HTTP_CONNECTIONS_REFUSED,
    SWIM_PACKETS_REFUSED,
    QUIC_CONNECTIONS,
    LOCAL_HEALTH,
    PROXY_HOPS,
];

/// The standard `process_*` metrics the dashboard reads (from the
/// `metrics-process` crate, refreshed on every scrape).
pub const PROCESS: [&str; 3] = [
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
];

/// Buckets that resolve sub-millisecond proxy latency up to the 30 s timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Installs the global recorder once per process and returns its handle.
///
/// Several agents may run in one process (tests, the demo, the gossip
/// bench); they share one recorder, and each serves it on its own listener.
pub fn recorder() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(PROXY_DURATION.to_owned()), DURATION_BUCKETS)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let handle = HANDLE.get_or_init(|| handle).clone();
    start_upkeep(handle.clone())?;
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Alarms must see 0 before the first failure, not a missing series.
    for counter in [HANDSHAKE_FAILURES, DECODE_ERRORS, RELAY_REFUSALS] {
        metrics::counter!(counter).increment(0);
    }
    metrics::gauge!(QUIC_CONNECTIONS).set(0.0);
    metrics::gauge!(LOCAL_HEALTH).set(0.0);
    describe();
    collect_process();
    metrics::counter!(DNS_QUERIES, "type" => "A", "rcode" => "NOERROR").increment(0);
    metrics::counter!(HANDSHAKES_REFUSED, "reason" => "busy").increment(0);
    metrics::counter!(HTTP_CONNECTIONS_REFUSED, "listener" => "proxy", "reason" => "limit")
        .increment(0);
    metrics::counter!(SWIM_PACKETS_REFUSED, "reason" => REFUSED_IMPERSONATION).increment(0);
    let hops = HOP_COUNTERS.get_or_init(|| {
        [HOP_NEW, HOP_KEPT].map(|stream| metrics::counter!(PROXY_HOPS, "stream" => stream))
    });
    for counter in hops {
        counter.increment(0);
    }
    Ok(handle)
}

/// How often histogram samples are folded into their buckets (the
/// exporter's own default when it runs its upkeep itself).
const UPKEEP_EVERY: std::time::Duration = if cfg!(test) {
    std::time::Duration::from_millis(20)
} else {
    std::time::Duration::from_secs(5)
};

/// Upkeep rounds run so far (read by a test).
static UPKEEP_ROUNDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Folds histogram samples into their buckets every [`UPKEEP_EVERY`], on a
/// thread of its own (the recorder outlives any one agent's runtime).
///
/// Why: a recorded sample waits in a queue until a scrape or an upkeep
/// drains it. Without upkeep, an agent nobody scraped grew by about 16
/// bytes per proxied request (2.7–3.3 MiB per 150,000–200,000 requests).
fn start_upkeep(handle: PrometheusHandle) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
            UPKEEP_ROUNDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .context("cannot start the metrics upkeep thread")?;
    Ok(())
}

/// HELP text for every metric the agent exports (Prometheus's linter
/// rejects a metric without one).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        MEMBERS,
        "Members of the cluster as this node's SWIM sees them, by state"
    );
    describe_counter!(
        GOSSIP_PACKETS,
        "SWIM packets sent and received, by direction"
    );
    describe_counter!(
        GOSSIP_BYTES,
        Unit::Bytes,
        "SWIM bytes sent and received, by direction"
    );
    describe_gauge!(
        PEER_RTT,
        Unit::Seconds,
        "Smoothed measured round-trip time to each peer"
    );
    describe_gauge!(CATALOG_RECORDS, "Records in this node's catalog, by kind");
    describe_gauge!(
        SUPERVISED_COPIES,
        "Copies of each supervised service this agent runs (stopping ones included until they exit)"
    );
    describe_gauge!(
        CATALOG_INDEX,
        "The catalog index: grows on every change this node sees"
    );
    describe_counter!(
        HANDSHAKE_FAILURES,
        "QUIC handshakes that failed (for example another passphrase), and sealed SWIM packets that do not open with this cluster's key"
    );
    describe_counter!(
        DECODE_ERRORS,
        "Packets and messages dropped because they could not be decoded"
    );
    describe_counter!(
        PROXY_REQUESTS,
        "Requests through the outbound proxy, by service (unknown for names the catalog does not hold), upstream node and status code"
    );
    describe_histogram!(
        PROXY_DURATION,
        Unit::Seconds,
        "Time from a proxied request's arrival to its response head, by service"
    );
    describe_counter!(
        EJECTIONS,
        "Instances ejected after consecutive failures, by service"
    );
    describe_counter!(
        RTT_REJECTIONS,
        "Requests answered 503 because no instance lay within the hard RTT requirement, by service"
    );
    describe_counter!(RETRIES, "Requests retried on another instance, by service");
    describe_counter!(
        RELAY_REFUSALS,
        "Proxy frames refused because they named no instance of this node (no open relay)"
    );
    describe_counter!(
        DNS_QUERIES,
        "DNS questions answered on --dns-listen, by query type (A, AAAA, SRV, SOA, ANY, other) and response code"
    );
    describe_counter!(
        HANDSHAKES_REFUSED,
        "Incoming QUIC handshakes refused or given no state before authentication, by reason (retry: asked to prove its address; busy: too many in flight; source: too many from one address; timeout: not finished in time; not_gossamer: another protocol or malformed)"
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "TCP connections the proxy, admin or metrics listener closed unserved, by listener and reason (limit: connection cap reached; header_timeout: request head not sent in time)"
    );
    describe_counter!(
        SWIM_PACKETS_REFUSED,
        "SWIM packets refused before membership applied them, by reason (impersonation: the packet names a source other than the node its connection's certificate is issued to)"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the agent's version is the label");
    describe_gauge!(
        QUIC_CONNECTIONS,
        "Open QUIC connections to peers (only peers in use: upstreams, anti-entropy partners; idle ones close)"
    );
    describe_gauge!(
        LOCAL_HEALTH,
        "Lifeguard's local health score: 0 when healthy; this node's probe period and timeout are stretched by score + 1"
    );
    describe_counter!(
        PROXY_HOPS,
        "Requests sent to another node's sidecar, by stream (new: a QUIC stream opened for it; kept: one an earlier request to the same instance left open)"
    );
    describe_counter!(
        TCP_CONNECTIONS,
        "Connections accepted on --tcp listeners, by service and the node of the instance they went to (none: refused or unreachable)"
    );
    describe_counter!(
        TCP_BYTES,
        "Bytes carried for --tcp services, by direction (out: from the local client to the instance, in: back), counted at close"
    );
}

/// The `process_*` metrics (resident memory, CPU seconds, open fds, …).
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: std::sync::OnceLock<metrics_process::Collector> = std::sync::OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let collector = metrics_process::Collector::default();
        collector.describe();
        collector
    })
}

/// Refreshes the `process_*` metrics; called before every scrape.
pub fn collect_process() {
    process_collector().collect();
}

/// Counts one gossip packet of `bytes` in `direction` ("in" or "out").
pub fn gossip_packet(direction: &'static str, bytes: usize) {
    metrics::counter!(GOSSIP_PACKETS, "direction" => direction).increment(1);
    metrics::counter!(GOSSIP_BYTES, "direction" => direction).increment(bytes as u64);
}

/// Counts one undecodable packet or message.
pub fn decode_error() {
    metrics::counter!(DECODE_ERRORS).increment(1);
}

/// Counts one failed QUIC handshake.
pub fn handshake_failure() {
    metrics::counter!(HANDSHAKE_FAILURES).increment(1);
}

/// Counts one incoming handshake refused before authentication; `reason`
/// comes from a fixed set (see [`HANDSHAKES_REFUSED`]).
pub fn handshake_refused(reason: &'static str) {
    metrics::counter!(HANDSHAKES_REFUSED, "reason" => reason).increment(1);
}

/// Counts one TCP connection an HTTP listener closed unserved; both labels
/// come from fixed sets (see [`HTTP_CONNECTIONS_REFUSED`]).
pub fn http_connection_refused(listener: &'static str, reason: &'static str) {
    metrics::counter!(HTTP_CONNECTIONS_REFUSED, "listener" => listener, "reason" => reason)
        .increment(1);
}

/// Counts one SWIM packet refused before membership applied it; `reason`
/// comes from a fixed set (see [`SWIM_PACKETS_REFUSED`]).
pub fn swim_packet_refused(reason: &'static str) {
    metrics::counter!(SWIM_PACKETS_REFUSED, "reason" => reason).increment(1);
}

/// The `stream` of [`PROXY_HOPS`] for a request on a stream opened for it.
pub const HOP_NEW: &str = "new";
/// The `stream` of [`PROXY_HOPS`] for a request on a kept hop.
pub const HOP_KEPT: &str = "kept";

/// Counts one request sent to another node's sidecar on a `stream`
/// ([`HOP_NEW`] or [`HOP_KEPT`]).
pub fn proxy_hop(stream: &'static str) {
    match HOP_COUNTERS.get() {
        Some([new, kept]) => if stream == HOP_KEPT { kept } else { new }.increment(1),
        None => metrics::counter!(PROXY_HOPS, "stream" => stream).increment(1),
    }
}

/// The hop counters ([`HOP_NEW`], [`HOP_KEPT`]), registered once with the
/// recorder: the recorder builds (and allocates) a key on every `counter!`
/// call, and these count every request to another node.
static HOP_COUNTERS: std::sync::OnceLock<[metrics::Counter; 2]> = std::sync::OnceLock::new();

/// Address the exporter is served on, for logs.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/metrics")
}

/// Publishes the catalog index.
pub fn index(index: u64) {
    ::metrics::gauge!(CATALOG_INDEX).set(index as f64);
}

/// Counts one DNS answer; both labels come from fixed sets.
pub fn dns_query(qtype: &'static str, rcode: &'static str) {
    metrics::counter!(DNS_QUERIES, "type" => qtype, "rcode" => rcode).increment(1);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn histogram_samples_are_drained_without_a_scrape() {
        let handle = recorder().expect("the recorder installs");
        metrics::histogram!(PROXY_DURATION, "service" => "upkeep-test").record(0.001);
        let before = UPKEEP_ROUNDS.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while UPKEEP_ROUNDS.load(Ordering::Relaxed) < before + 2 {
            assert!(Instant::now() < deadline, "no upkeep round within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = handle.render();
        assert!(
            text.contains(
                r#"gossamer_proxy_request_duration_seconds_count{service="upkeep-test"} 1"#
            ),
            "{text}"
        );
    }
}
