//! Unauthenticated QUIC handshakes (issue 21, rows 1 and 10): a burst of
//! real quinn handshakes without the passphrase, from clients that never
//! answer the agent, must not grow the agent's memory without bound nor
//! stop it serving; something that is not a gossamer peer is not counted as
//! a member with the wrong passphrase.

mod common;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::{eventually, metric_value, wait_alive, AgentProc, Spec};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Endpoint, EndpointConfig, UdpPoller};
use sidecar::tls::{ClusterTrust, CLUSTER_SERVER_NAME};

const CONVERGE: Duration = Duration::from_secs(20);
/// Handshakes in the burst: at the ~80 KB each measured in issue 21,
/// unbounded they would hold ~240 MB.
const FLOOD: usize = 3_000;
/// What the agent may grow by under the burst.
const RSS_BUDGET_KB: u64 = 64 * 1024;
const REFUSED: &str = "gossamer_quic_handshakes_refused_total";

/// A UDP socket that sends but hears at most Retry packets. With
/// `hears_retries` false, a connection dialled through it sends its Initial
/// (and resends it) but never answers the agent, which is left with a
/// half-open handshake, as in a flood; with it true, the connection proves
/// its address (it echoes the Retry token) and then never answers, so the
/// agent holds a validated half-open handshake.
#[derive(Debug)]
struct Deaf {
    inner: Arc<dyn AsyncUdpSocket>,
    hears_retries: bool,
}

impl AsyncUdpSocket for Deaf {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        if !self.hears_retries {
            return Poll::Pending;
        }
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            // Long header (0x80) of type Retry (0b11 in bits 4-5).
            let is_retry = |i: usize| bufs[i].first().is_some_and(|b| b & 0xb0 == 0xb0);
            if let Some(k) = (0..n).find(|&i| is_retry(i)) {
                if k > 0 {
                    let (head, tail) = bufs.split_at_mut(k);
                    let len = meta[k].len;
                    head[0][..len].copy_from_slice(&tail[0][..len]);
                    meta[0] = meta[k];
                }
                return Poll::Ready(Ok(1));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A quinn client config with another cluster's credentials and `alpn`.
fn stranger_config(alpn: &[u8]) -> quinn::ClientConfig {
    sidecar::tls::install_crypto_provider();
    let trust = ClusterTrust::from_passphrase("not-this-cluster", "stranger").expect("trust");
    let mut crypto = trust.client_config().expect("client config");
    crypto.alpn_protocols = vec![alpn.to_vec()];
    quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(crypto).expect("QUIC client config"),
    ))
}

fn endpoint(socket: impl FnOnce(Arc<dyn AsyncUdpSocket>) -> Arc<dyn AsyncUdpSocket>) -> Endpoint {
    endpoint_on("127.0.0.1:0", socket)
}

fn endpoint_on(
    bind: &str,
    socket: impl FnOnce(Arc<dyn AsyncUdpSocket>) -> Arc<dyn AsyncUdpSocket>,
) -> Endpoint {
    let runtime = quinn::default_runtime().expect("runtime");
    let udp = std::net::UdpSocket::bind(bind).expect("bind");
    let udp = runtime.wrap_udp_socket(udp).expect("wrap");
    Endpoint::new_with_abstract_socket(EndpointConfig::default(), None, socket(udp), runtime)
        .expect("client endpoint")
}

/// Resident memory of `pid` in KiB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_burst_of_half_open_handshakes_leaves_memory_bounded_and_the_agent_serving() {
    let agent = AgentProc::start(Spec::new("flood-target").with_metrics()).await;
    let pid = agent.pid().expect("pid");
    let before = rss_kb(pid);

    let flooder = endpoint(|inner| {
        Arc::new(Deaf {
            inner,
            hears_retries: false,
        })
    });
    let config = stranger_config(sidecar::tls::ALPN);
    // Kept alive until the end: dropping one would close it politely.
    let mut pending = Vec::with_capacity(FLOOD);
    let started = Instant::now();
    let mut peak = before;
    for i in 0..FLOOD {
        let connecting = flooder
            .connect_with(config.clone(), agent.listeners.quic, CLUSTER_SERVER_NAME)
            .expect("connect");
        pending.push(connecting);
        // Paced (about 2,500/s) so loopback's socket buffers do not drop
        // the burst before the agent sees it.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            peak = peak.max(rss_kb(pid));
        }
    }
    // The agent works through what is queued; watch its memory meanwhile.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss_kb(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let growth = peak.saturating_sub(before);
    eprintln!(
        "{FLOOD} half-open handshakes in {:?}: agent RSS {before} KiB before, peak {peak} KiB (+{growth} KiB)",
        started.elapsed()
    );
    assert!(
        growth < RSS_BUDGET_KB,
        "the agent grew by {growth} KiB under {FLOOD} unauthenticated handshakes (budget {RSS_BUDGET_KB} KiB)"
    );

    // Refusals are counted under their own name, not as handshake failures.
    let text = agent.metrics_text().await;
    let refused = metric_value(&text, REFUSED, &[]);
    assert!(
        refused >= (FLOOD / 2) as f64,
        "only {refused} of {FLOOD} handshakes counted as refused: {text}"
    );
    assert_eq!(
        metric_value(&text, "gossamer_handshake_failures_total", &[]),
        0.0
    );
    let log = agent.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("refusing unauthenticated QUIC handshakes"))
        .count();
    assert!(
        (1..=3).contains(&lines),
        "the refusals should be logged a few times at most, not {lines}"
    );

    // It keeps serving: a real member joins during the flood's aftermath.
    let member = AgentProc::start(Spec::new("flood-member").join(&agent)).await;
    wait_alive(
        &[&agent, &member],
        &["flood-member", "flood-target"],
        CONVERGE,
    )
    .await;
    drop(pending);
    flooder.close(0u32.into(), b"done");
}

#[tokio::test]
async fn one_source_that_proves_its_address_cannot_take_every_handshake_slot() {
    let agent = AgentProc::start(Spec::new("source-target").with_metrics()).await;
    let target = agent.listeners.quic;
    // From another loopback address than the agents', so the flood is one
    // source and the member another.
    let flooder = endpoint_on("127.0.0.2:0", |inner| {
        Arc::new(Deaf {
            inner,
            hears_retries: true,
        })
    });
    let mut config = stranger_config(sidecar::tls::ALPN);
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(Duration::from_secs(3).try_into().expect("idle")));
    config.transport_config(Arc::new(transport));
    let flood = tokio::spawn(async move {
        // Bounded: at most 25 s, 10 new handshakes every 50 ms; each is kept
        // until its own idle timeout (dropping it would close it politely).
        let mut pending = std::collections::VecDeque::new();
        let until = Instant::now() + Duration::from_secs(25);
        while Instant::now() < until {
            for _ in 0..10 {
                let connecting = flooder
                    .connect_with(config.clone(), target, CLUSTER_SERVER_NAME)
                    .expect("connect");
                pending.push_back((Instant::now(), connecting));
            }
            while pending
                .front()
                .is_some_and(|(at, _)| at.elapsed() > Duration::from_secs(5))
            {
                pending.pop_front();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // The flood holds validated handshakes once the agent asks for retries.
    eventually("the flood to be refused per source", CONVERGE, || async {
        let text = agent.metrics_text().await;
        (metric_value(&text, REFUSED, &[("reason", "source")]) >= 1.0).then_some(())
    })
    .await;
    // A member from another address still gets in during the flood.
    let member = AgentProc::start(Spec::new("source-member").join(&agent)).await;
    wait_alive(
        &[&agent, &member],
        &["source-member", "source-target"],
        CONVERGE,
    )
    .await;
    flood.abort();
}

#[tokio::test]
async fn a_client_of_another_protocol_is_not_counted_as_a_wrong_passphrase() {
    let agent = AgentProc::start(Spec::new("alpn-target").with_metrics()).await;
    let client = endpoint(|udp| udp);
    // Three attempts with an ALPN that is not gossamer's: TLS refuses them
    // before any certificate is looked at.
    for _ in 0..3 {
        let attempt = client
            .connect_with(
                stranger_config(b"h3"),
                agent.listeners.quic,
                CLUSTER_SERVER_NAME,
            )
            .expect("connect");
        assert!(
            tokio::time::timeout(CONVERGE, attempt)
                .await
                .expect("an answer")
                .is_err(),
            "the agent accepted another protocol"
        );
    }
    let counted = eventually("the attempts to be counted", CONVERGE, || async {
        let text = agent.metrics_text().await;
        let value = metric_value(&text, REFUSED, &[("reason", "not_gossamer")]);
        (value >= 3.0).then_some(text)
    })
    .await;
    assert_eq!(
        metric_value(&counted, "gossamer_handshake_failures_total", &[]),
        0.0,
        "another protocol is not a wrong passphrase"
    );
    assert!(
        !agent.log().contains("wrong passphrase or CA"),
        "another protocol was logged as a wrong passphrase"
    );
}
