//! Bad input through the proxy: ten thousand distinct service names nobody
//! registered leave the number of series and the agent's memory flat.

mod common;

use std::time::Duration;

use common::{echo_service, eventually, register_port, AgentProc, Spec};
use http_body_util::{BodyExt, Full};

/// Resident memory of `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

/// Lines of the scrape that carry a `service` label.
fn service_series(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains("service=\""))
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l, |(series, _)| series)
                .to_owned()
        })
        .collect()
}

/// Sends one request per name over one keep-alive connection; every answer
/// must be a 503 (nobody registered these names).
async fn call_names(agent: &AgentProc, names: std::ops::Range<u32>) {
    let stream = tokio::net::TcpStream::connect(agent.listeners.proxy)
        .await
        .expect("connect proxy");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(connection);
    for i in names {
        let request = http::Request::get("/")
            .header("x-gossamer-service", format!("made-up-{i}"))
            .body(Full::new(bytes::Bytes::new()))
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .expect("answer within 10 s")
            .expect("answer");
        assert_eq!(response.status(), 503, "made-up-{i}");
        let _ = response.into_body().collect().await;
    }
}

#[tokio::test]
async fn ten_thousand_unknown_names_leave_series_and_memory_flat() {
    let agent = AgentProc::start(Spec::new("card").with_metrics()).await;
    let (port, _echo) = echo_service("echo@card").await;
    register_port(&agent, "echo", port).await;
    let (status, _, _) = common::http_get(
        agent.listeners.proxy,
        "/",
        &[("x-gossamer-service", "echo")],
    )
    .await
    .expect("call echo");
    assert_eq!(status, 200);
    let pid = agent.pid().expect("pid");

    // Warm up: allocator pools and the decision ring reach their size.
    call_names(&agent, 0..1_000).await;
    let series_before = service_series(&agent.metrics_text().await);
    let rss_before = rss_kib(pid);
    call_names(&agent, 1_000..11_000).await;
    let text = agent.metrics_text().await;
    let series_after = service_series(&text);
    let rss_after = rss_kib(pid);
    eprintln!(
        "10,000 unknown names: RSS {rss_before} KiB -> {rss_after} KiB, series with a service label {} -> {}",
        series_before.len(),
        series_after.len()
    );
    assert_eq!(series_before, series_after, "no new series");
    let unknown = common::metric_value(
        &text,
        "gossamer_proxy_requests_total",
        &[("service", "unknown"), ("code", "503")],
    );
    assert!(
        unknown >= 11_000.0,
        "every made-up name was counted: {unknown}"
    );
    assert!(
        text.contains("service=\"unknown\"") && !text.contains("made-up-"),
        "unknown names are counted as service=\"unknown\""
    );
    assert!(
        rss_after < rss_before + 4 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // The decision ring is bounded too.
    let decisions = eventually("decisions", Duration::from_secs(5), || async {
        let (_, _, body) =
            common::http_get(agent.listeners.admin, "/v1/decisions?limit=100000", &[]).await?;
        serde_json::from_str::<Vec<serde_json::Value>>(&body).ok()
    })
    .await;
    assert!(decisions.len() <= 256, "{} decisions kept", decisions.len());
}

/// Event streams (`/v1/events`, the UI's live updates) are capped, and
/// clients that never read hold no queue: the agent's memory stays flat
/// while the catalog changes under them.
#[tokio::test]
async fn silent_event_stream_clients_are_capped_and_hold_no_queue() {
    use tokio::io::AsyncWriteExt;

    let agent = AgentProc::start(Spec::new("silent")).await;
    let pid = agent.pid().expect("pid");
    let mut silent = Vec::new();
    for _ in 0..32 {
        let mut stream = tokio::net::TcpStream::connect(agent.listeners.admin)
            .await
            .expect("connect admin");
        stream
            .write_all(b"GET /v1/events HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("send");
        silent.push(stream);
    }
    // Each silent client got its answer head (it is readable) but reads nothing.
    for stream in &silent {
        tokio::time::timeout(Duration::from_secs(10), stream.readable())
            .await
            .expect("the agent answers every silent stream within 10 s")
            .expect("readable");
    }
    let (status, _, body) = tokio::time::timeout(
        Duration::from_secs(10),
        common::http_get(agent.listeners.admin, "/v1/events", &[]),
    )
    .await
    .expect("the 33rd stream is answered at once")
    .expect("an answer");
    assert_eq!(status, 429, "{body}");

    let client = agent.client();
    let (port, _echo) = echo_service("churn@silent").await;
    let churn = |from: usize, to: usize| {
        let client = client.clone();
        async move {
            for i in from..to {
                let instance = client
                    .register(&mesh_proto::api::RegisterInstance {
                        service: "churn".to_owned(),
                        port: Some(port),
                        address: None,
                        id: Some(format!("churn-{i}")),
                        deployment_id: None,
                        tags: Vec::new(),
                        health: None,
                    })
                    .await
                    .expect("register");
                client.deregister(&instance.id).await.expect("deregister");
            }
        }
    };
    // A first batch warms the allocator's caches (their size depends on the
    // allocator and on how busy the machine is); what must not grow is the
    // memory per further change, which a queue per silent stream would add.
    churn(0, 200).await;
    let rss_before = rss_kib(pid);
    churn(200, 700).await;
    let rss_after = rss_kib(pid);
    eprintln!("1,000 catalog changes under 32 silent event streams: RSS {rss_before} KiB -> {rss_after} KiB");
    assert!(
        rss_after < rss_before + 4 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    drop(silent);
}
