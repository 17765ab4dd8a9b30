//! The Prometheus contract: after real traffic every metric of the design is
//! present on `/metrics` and has moved, and every metric the Grafana
//! dashboard queries is in that scrape.

mod common;
#[path = "common/dashboard.rs"]
mod dashboard;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    delayed_trio, eventually, http_get, metric_value, wait_instances_measured, AgentProc, Spec,
};

/// Metric names (without histogram suffixes) in a Prometheus text scrape.
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn every_contract_metric_is_scraped_and_moves() {
    let trio = delayed_trio(
        "met",
        "echo",
        false,
        (5, 40),
        // A TCP listener, so the TCP series exist from the first scrape.
        &["--base-ejection-ms", "60000", "--tcp", "echo=127.0.0.1:0"],
    )
    .await;
    wait_instances_measured(&trio.a, "echo", 2).await;
    let proxy = trio.a.listeners.proxy;
    let pinned = [("host", "echo.localhost"), ("x-gossamer-hard-rtt-ms", "20")];

    // Proxied calls: successes, then five 500s that eject b.
    for _ in 0..20 {
        let (status, _, _) = http_get(proxy, "/", &[("host", "echo.localhost")])
            .await
            .expect("answer");
        assert_eq!(status, 200);
    }
    for _ in 0..5 {
        let (status, _, _) = http_get(proxy, "/status/500", &pinned)
            .await
            .expect("answer");
        assert_eq!(status, 500);
    }
    // An impossible hard requirement: an RTT rejection.
    let (status, _, _) = http_get(
        proxy,
        "/",
        &[("host", "echo.localhost"), ("x-gossamer-hard-rtt-ms", "0")],
    )
    .await
    .expect("answer");
    assert_eq!(status, 503);
    // A GET whose first pick refuses connections: retried on the other
    // instance. With soft 10 ms the first pick is b's (5 ms), the retry
    // takes c's (40 ms). A port bound and never listening refuses.
    let refusing = |socket: &tokio::net::TcpSocket| socket.local_addr().expect("addr").port();
    let dead = tokio::net::TcpSocket::new_v4().expect("socket");
    dead.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let lone_dead = tokio::net::TcpSocket::new_v4().expect("socket");
    lone_dead
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let c_port = trio
        .echo_ports
        .iter()
        .find(|(name, _)| name == "met-c")
        .map(|(_, port)| *port)
        .expect("c's echo port");
    common::register_port(&trio.b, "gone", refusing(&dead)).await;
    common::register_port(&trio.c, "gone", c_port).await;
    // And a service whose only instance refuses: nothing to retry on.
    common::register_port(&trio.b, "lone", refusing(&lone_dead)).await;
    wait_instances_measured(&trio.a, "gone", 2).await;
    wait_instances_measured(&trio.a, "lone", 1).await;
    let (status, _, body) = http_get(
        proxy,
        "/",
        &[("host", "gone.localhost"), ("x-gossamer-soft-rtt-ms", "30")],
    )
    .await
    .expect("answer");
    assert_eq!(status, 200, "the retry on c answers: {body}");
    let (status, _, body) = http_get(proxy, "/", &[("host", "lone.localhost")])
        .await
        .expect("answer");
    assert!(
        status == 502 || status == 503,
        "a lone refusing instance: {status} {body}"
    );

    // A peer with another passphrase: a handshake failure on a.
    let outsider = AgentProc::start(
        Spec::new("met-outsider")
            .psk("another passphrase")
            .join(&trio.a),
    )
    .await;
    // A peer with the passphrase sending a forged proxy frame and a garbage
    // datagram: a relay refusal and a decode error.
    let peer = common::peer_transport(common::PSK, "met-peer");
    let connection = peer
        .connection(trio.a.listeners.quic)
        .await
        .expect("connect");
    connection
        .send_datagram(bytes::Bytes::from_static(b"\xffnot a gossamer datagram"))
        .expect("send datagram");
    let (mut send, mut recv, _, _lease) = peer
        .open_stream(trio.a.listeners.quic, mesh_proto::gossip::StreamKind::Proxy)
        .await
        .expect("open stream");
    let frame = mesh_proto::frame::ProxyFrame {
        instance_id: "nothing-here".to_owned(),
        address: trio.a.listeners.admin,
        service: "echo".to_owned(),
        timeout_ms: 0,
    };
    send.write_all(&frame.encode().expect("encode"))
        .await
        .expect("frame");
    send.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("request");
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 16)).await;

    let text = eventually(
        "every contract metric to have moved",
        Duration::from_secs(20),
        || {
            let a = &trio.a;
            async move {
                let text = a.metrics_text().await;
                let moved =
                    |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels) > 0.0;
                let all = moved("gossamer_build_info", &[])
                    && moved("gossamer_members", &[("state", "alive")])
                    && moved("gossamer_gossip_packets_total", &[("direction", "in")])
                    && moved("gossamer_gossip_packets_total", &[("direction", "out")])
                    && moved("gossamer_gossip_bytes_total", &[("direction", "out")])
                    && moved("gossamer_peer_rtt_seconds", &[("peer", "met-b")])
                    && moved("gossamer_catalog_records", &[])
                    && moved("gossamer_catalog_index", &[])
                    && moved("gossamer_handshake_failures_total", &[])
                    && moved("gossamer_decode_errors_total", &[])
                    && moved(
                        "gossamer_proxy_requests_total",
                        &[("service", "echo"), ("code", "200")],
                    )
                    && moved(
                        "gossamer_proxy_request_duration_seconds_count",
                        &[("service", "echo")],
                    )
                    && moved("gossamer_upstream_ejections_total", &[("service", "echo")])
                    && moved("gossamer_rtt_rejections_total", &[("service", "echo")])
                    && moved("gossamer_retries_total", &[("service", "gone")])
                    && moved("gossamer_relay_refusals_total", &[]);
                all.then_some(text)
            }
        },
    )
    .await;
    drop(outsider);

    // Histogram buckets resolve sub-millisecond latency.
    assert!(
        text.contains(
            "gossamer_proxy_request_duration_seconds_bucket{service=\"echo\",le=\"0.0001\"}"
        ) || text.contains("le=\"0.0001\""),
        "no sub-millisecond bucket:\n{text}"
    );
    // The peer RTT of the 40 ms link is at least about 40 ms, in seconds,
    // and above the 5 ms link's (no upper bound: that would measure the
    // machine's load).
    let rtt_b = metric_value(&text, "gossamer_peer_rtt_seconds", &[("peer", "met-b")]);
    let rtt_c = metric_value(&text, "gossamer_peer_rtt_seconds", &[("peer", "met-c")]);
    assert!(
        rtt_c > 0.03 && rtt_c > rtt_b,
        "peer RTT of met-c: {rtt_c}, of met-b: {rtt_b}"
    );
    // Retries count requests sent again, not decisions: one for "gone",
    // none for "lone", which had no second instance to go to.
    assert_eq!(
        metric_value(&text, "gossamer_retries_total", &[("service", "gone")]),
        1.0
    );
    assert_eq!(
        metric_value(&text, "gossamer_retries_total", &[("service", "lone")]),
        0.0,
        "a retry was counted that was never sent"
    );
    // Labels stay bounded: no label carries a port or a request id.
    for line in text
        .lines()
        .filter(|l| l.starts_with("gossamer_peer_rtt_seconds{"))
    {
        assert!(
            !line.contains("127.0.0.1"),
            "peer label is an address: {line}"
        );
    }

    let names = scraped_names(&text);
    for name in sidecar::metrics::EXPORTED {
        assert!(names.contains(name), "{name} missing from the scrape");
    }
    // The README's metrics table names what the scrape holds, with the
    // labels the scrape uses, and leaves nothing exported out.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let table: Vec<(String, Vec<String>)> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `gossamer_"))
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('`')?;
            let labels_cell = rest.trim_start_matches(" |").split('|').next()?;
            let labels = labels_cell
                .split(',')
                .filter_map(|l| l.trim().strip_prefix('`')?.split('`').next())
                .map(str::to_owned)
                .collect();
            Some((format!("gossamer_{name}"), labels))
        })
        .collect();
    assert!(table.len() >= 10, "README metrics table: {table:?}");
    for (name, labels) in &table {
        assert!(
            names.contains(name),
            "README lists {name}, the scrape lacks it"
        );
        for label in labels {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(name.as_str()) && l.contains(&format!("{label}=\""))),
                "README gives {name} the label {label}, the scrape does not"
            );
        }
    }
    for name in sidecar::metrics::EXPORTED {
        assert!(
            table.iter().any(|(n, _)| n == name),
            "{name} is exported but not in the README's metrics table"
        );
    }
    let queried = dashboard::dashboard_metric_names(&dashboard::load_dashboard());
    assert!(queried.len() >= 8, "dashboard queries: {queried:?}");
    for name in &queried {
        assert!(
            names.contains(name),
            "the dashboard queries {name}, which the agent does not export"
        );
    }
}

#[tokio::test]
async fn a_lone_agent_exports_every_gauge_from_its_first_scrape() {
    // No peer, no traffic: the gauges are there anyway, so dashboards and
    // alerts see 1 alive member and 0s rather than missing series.
    let agent = AgentProc::start(Spec::new("gauges-lone")).await;
    let text = agent.metrics_text().await;
    let line = |name: &str, labels: &str| {
        text.lines()
            .any(|l| l.starts_with(&format!("{name}{labels} ")))
    };
    assert!(line("gossamer_members", "{state=\"alive\"}"), "{text}");
    assert_eq!(
        metric_value(&text, "gossamer_members", &[("state", "alive")]),
        1.0,
        "{text}"
    );
    for state in ["suspect", "down"] {
        assert!(
            line("gossamer_members", &format!("{{state=\"{state}\"}}")),
            "no gossamer_members{{state={state:?}}}: {text}"
        );
    }
    for name in [
        "gossamer_catalog_index",
        "gossamer_handshake_failures_total",
        "gossamer_decode_errors_total",
        "gossamer_relay_refusals_total",
    ] {
        assert!(
            line(name, ""),
            "{name} missing from the first scrape: {text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("gossamer_catalog_records{")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("gossamer_build_info{")),
        "{text}"
    );
}
