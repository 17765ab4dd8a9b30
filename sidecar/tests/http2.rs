//! HTTP/2 through the mesh: `curl --http2-prior-knowledge` through one and
//! two sidecars (to an HTTP/1.1 instance and to an h2c-only one); one hyper
//! h2 connection's 1,000 requests spread per request over 3 instances on 3
//! nodes, never above the definition's hard RTT; HTTP/1.1 header-name case
//! kept across one and two sidecars; `gossamer call --http2`; and bad input
//! (garbage after the h2c preface, 10,000 streams on one connection through
//! two sidecars) met with a clean end, responsive agents and bounded memory.

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{
    delayed_trio, echo_service, eventually, register_port, run_bounded, wait_instances_measured,
    AgentProc, Spec,
};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn require_curl() {
    let found = Command::new("sh")
        .args(["-c", "command -v curl"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "curl is not installed: these tests call the proxy with curl --http2-prior-knowledge; \
         install Debian's curl (apt-get install -y curl, as .ci/run does)"
    );
}

/// `curl -i` of `http://SERVICE.localhost:PORT/PATH` through `proxy`: the
/// status line, headers and body as text. curl runs on a blocking thread so
/// the instances of this test process keep being served meanwhile.
async fn curl(proxy: SocketAddr, service: &str, path: &str, http2: bool) -> String {
    let (service, path) = (service.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || curl_blocking(proxy, &service, &path, http2))
        .await
        .expect("curl thread")
}

fn curl_blocking(proxy: SocketAddr, service: &str, path: &str, http2: bool) -> String {
    let host = format!("{service}.localhost:{}", proxy.port());
    let mut command = Command::new("curl");
    command
        .args(["-sS", "-i", "--max-time", "20"])
        .args(["--resolve", &format!("{host}:127.0.0.1")]);
    if http2 {
        command.arg("--http2-prior-knowledge");
    }
    command.arg(format!("http://{host}{path}"));
    let output = run_bounded(&mut command, Duration::from_secs(30), "curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl failed: {}{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// An instance speaking h2c only (no HTTP/1.1 fallback) that answers with
/// the HTTP version it was spoken to in and its name.
async fn h2c_instance(name: &str) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the h2c instance");
    let port = listener.local_addr().expect("addr").port();
    let name: Arc<str> = Arc::from(name);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: http::Request<_>| {
                    let body = format!("{name} saw {:?}", request.version());
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

async fn define(
    agent: &AgentProc,
    service: &str,
    protocol: mesh_proto::Protocol,
    hard: Option<u32>,
) {
    agent
        .client()
        .put_definition(&mesh_proto::catalog::Definition {
            name: service.to_owned(),
            version: "1".to_owned(),
            protocol,
            requirements: mesh_proto::catalog::Requirements {
                hard_rtt_ms: hard,
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .expect("put the definition");
}

#[tokio::test]
async fn curl_http2_prior_knowledge_through_one_and_two_sidecars() {
    require_curl();
    let (local_port, _local) = echo_service("web@a").await;
    let (remote_port, _remote) = echo_service("web@b").await;
    let h2_port = h2c_instance("h2only").await;
    let b = AgentProc::start(Spec::new("h2curl-b")).await;
    let a = AgentProc::start(Spec::new("h2curl-a").join(&b)).await;
    register_port(&a, "local", local_port).await;
    register_port(&b, "remote", remote_port).await;
    register_port(&b, "h2only", h2_port).await;
    define(&b, "h2only", mesh_proto::Protocol::Http2, None).await;
    common::wait_protocol(&b, "h2only", mesh_proto::Protocol::Http2).await;
    common::wait_protocol(&a, "h2only", mesh_proto::Protocol::Http2).await;
    wait_instances_measured(&a, "local", 1).await;
    wait_instances_measured(&a, "remote", 1).await;
    wait_instances_measured(&a, "h2only", 1).await;
    let proxy = a.listeners.proxy;

    // One sidecar: an HTTP/2 caller, an HTTP/1.1 instance.
    let text = curl(proxy, "local", "/", true).await;
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-gossamer-upstream: h2curl-a/"),
        "{text}"
    );
    // Two sidecars: the QUIC hop carries HTTP/2.
    let text = curl(proxy, "remote", "/", true).await;
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("x-gossamer-upstream: h2curl-b/"),
        "{text}"
    );
    // Two sidecars to an h2c-only instance: the last hop speaks HTTP/2,
    // whatever version the caller used.
    let text = curl(proxy, "h2only", "/", true).await;
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.ends_with("h2only saw HTTP/2.0"), "{text}");
    let text = curl(proxy, "h2only", "/", false).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("h2only saw HTTP/2.0"), "{text}");
}

/// An h2c connection to `proxy`.
async fn h2_connect(proxy: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake with the proxy");
    tokio::spawn(connection);
    sender
}

/// `count` GETs of `uri` on the one connection `sender`, `concurrency` at a
/// time; per answer (upstream node, RTT header), panicking on a failure.
async fn spread(
    sender: &SendRequest<Empty<Bytes>>,
    uri: &str,
    count: usize,
    concurrency: usize,
) -> Vec<(String, Option<f64>)> {
    let calls = futures_util::stream::iter(0..count).map(|i| {
        let mut sender = sender.clone();
        let request = http::Request::get(uri)
            .body(Empty::<Bytes>::new())
            .expect("request");
        async move {
            let response = sender
                .send_request(request)
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            let status = response.status();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let node = header("x-gossamer-upstream")
                .and_then(|u| u.split('/').next().map(str::to_owned))
                .unwrap_or_default();
            let rtt = header("x-gossamer-rtt-ms").and_then(|v| v.parse().ok());
            let body = response.into_body().collect().await;
            assert!(status.is_success() && body.is_ok(), "request {i}: {status}");
            (node, rtt)
        }
    });
    let all = calls.buffer_unordered(concurrency).collect::<Vec<_>>();
    tokio::time::timeout(Duration::from_secs(180), all)
        .await
        .expect("the requests finish within 180 s")
}

fn per_node(answers: &[(String, Option<f64>)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (node, _) in answers {
        *counts.entry(node.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn one_h2_connection_spreads_per_request_within_the_hard_rtt() {
    const HARD_MS: u32 = 30;
    // b is near (5 ms), c far (60 ms, over the hard requirement set later).
    let trio = delayed_trio("h2sp", "spread", true, (5, 60), &[]).await;
    wait_instances_measured(&trio.a, "spread", 3).await;
    let sender = h2_connect(trio.a.listeners.proxy).await;
    let port = trio.a.listeners.proxy.port();
    // Each request takes 200 ms at the instance, so the balancer's load
    // term, not the link, decides: every instance must get a share.
    let uri = format!("http://spread.localhost:{port}/?delay_ms=200");
    let answers = spread(&sender, &uri, 1_000, 100).await;
    let counts = per_node(&answers);
    eprintln!("1,000 requests on one h2 connection: {counts:?}");
    for node in ["h2sp-a", "h2sp-b", "h2sp-c"] {
        let n = counts.get(node).copied().unwrap_or(0);
        assert!(n > 100, "{node} served {n} of 1,000: {counts:?}");
    }

    // A hard requirement on the definition: c (60 ms) is never used, and no
    // answer came from beyond it.
    define(&trio.a, "spread", mesh_proto::Protocol::Http, Some(HARD_MS)).await;
    let client = trio.a.client();
    eventually(
        "c to be over the definition's hard RTT",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let view = client.instances("spread", &Default::default()).await.ok()?;
                (view.hard_rtt_ms == Some(HARD_MS)
                    && view.eligible.len() == 2
                    && view
                        .ineligible
                        .iter()
                        .all(|i| i.instance.node.as_str() == "h2sp-c"))
                .then_some(())
            }
        },
    )
    .await;
    let uri = format!("http://spread.localhost:{port}/?delay_ms=20");
    let answers = spread(&sender, &uri, 1_000, 100).await;
    let counts = per_node(&answers);
    eprintln!("with hard {HARD_MS} ms: {counts:?}");
    assert_eq!(counts.get("h2sp-c"), None, "{counts:?}");
    for node in ["h2sp-a", "h2sp-b"] {
        let n = counts.get(node).copied().unwrap_or(0);
        assert!(n > 100, "{node} served {n} of 1,000: {counts:?}");
    }
    for (node, rtt) in &answers {
        let rtt = rtt.unwrap_or_else(|| panic!("an answer from {node} without x-gossamer-rtt-ms"));
        assert!(rtt <= f64::from(HARD_MS), "{node} at {rtt} ms");
    }
}

/// A raw HTTP/1.1 instance: reads the request head as bytes and answers
/// with it as the body, under a header of its own in mixed case.
async fn raw_instance() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the raw instance");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let mut response = format!(
                    "HTTP/1.1 200 OK\r\nX-Instance-SaYs: HeLLo\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    head.len()
                )
                .into_bytes();
                response.extend_from_slice(&head);
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn http1_header_case_survives_one_and_two_sidecars() {
    let port = raw_instance().await;
    let b = AgentProc::start(Spec::new("h2case-b")).await;
    register_port(&b, "raw", port).await;
    let a = AgentProc::start(Spec::new("h2case-a").join(&b)).await;
    register_port(&a, "rawlocal", raw_instance().await).await;
    wait_instances_measured(&a, "raw", 1).await;
    wait_instances_measured(&a, "rawlocal", 1).await;
    for service in ["rawlocal", "raw"] {
        header_case_through(a.listeners.proxy, service).await;
    }
}

/// A raw HTTP/1.1 request for `service` with a mixed-case header: the
/// instance sees the caller's spelling, the caller the instance's.
async fn header_case_through(proxy: SocketAddr, service: &str) {
    let mut stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    stream
        .write_all(
            format!(
                "GET /case HTTP/1.1\r\nHost: {service}.localhost\r\nX-MiXed-Case: kept\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the answer within 20 s")
        .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{service}: {answer}");
    // The caller sees the instance's spelling, and the instance the caller's.
    assert!(head.contains("\r\nX-Instance-SaYs: HeLLo\r\n"), "{head}");
    assert!(body.contains("\r\nX-MiXed-Case: kept\r\n"), "{body}");
}

/// Resident memory of process `pid`, in MiB (Linux `/proc`).
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn healthy(agent: &AgentProc) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(10), agent.client().health()).await,
        Ok(Ok(h)) if h.ready
    )
}

#[tokio::test]
async fn garbage_after_the_h2c_preface_closes_only_that_connection() {
    let (port, _echo) = echo_service("after@a").await;
    let a = AgentProc::start(Spec::new("h2bad-a")).await;
    register_port(&a, "after", port).await;
    wait_instances_measured(&a, "after", 1).await;

    for garbage in [
        vec![0xffu8; 64],
        b"GET / HTTP/1.1\r\nHost: after.localhost\r\n\r\n".to_vec(),
        // A frame header announcing 16 MiB of a frame type nobody knows,
        // on stream 1, then nothing.
        vec![0xff, 0xff, 0xff, 0xee, 0, 0, 0, 0, 1],
    ] {
        let mut stream = tokio::net::TcpStream::connect(a.listeners.proxy)
            .await
            .expect("connect to the proxy");
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface");
        stream.write_all(&garbage).await.expect("garbage");
        // The agent answers with its settings and a GOAWAY, then closes; the
        // read ends (EOF or reset) instead of hanging.
        let mut sink = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut sink)).await;
        assert!(
            read.is_ok(),
            "the connection stayed open after garbage {garbage:?}"
        );
    }
    assert!(healthy(&a).await, "the agent stopped answering");
    let sender = h2_connect(a.listeners.proxy).await;
    let answers = spread(
        &sender,
        &format!("http://after.localhost:{}/", a.listeners.proxy.port()),
        10,
        1,
    )
    .await;
    assert_eq!(per_node(&answers).get("h2bad-a"), Some(&10));
}

#[tokio::test]
async fn ten_thousand_streams_on_one_connection_stay_bounded() {
    const STREAMS: usize = 10_000;
    const RSS_LIMIT_MIB: f64 = 200.0;
    // Through two sidecars: the caller's agent holds the h2 streams, the
    // instance's agent one QUIC stream per request.
    let (port, _echo) = echo_service("slow@b").await;
    let b = AgentProc::start(Spec::new("h2many-b")).await;
    register_port(&b, "slow", port).await;
    let a = AgentProc::start(Spec::new("h2many-a").join(&b)).await;
    wait_instances_measured(&a, "slow", 1).await;
    let pids = [
        a.pid().expect("the agent runs as a process"),
        b.pid().expect("the agent runs as a process"),
    ];
    let rss = || pids.iter().map(|&pid| rss_mib(pid)).fold(0.0, f64::max);
    let before = rss();

    let sender = h2_connect(a.listeners.proxy).await;
    let uri = format!(
        "http://slow.localhost:{}/?delay_ms=100",
        a.listeners.proxy.port()
    );
    // Every request is started at once; the server admits a bounded number
    // of concurrent streams and the rest wait at the client.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        let mut sender = sender.clone();
        let request = http::Request::get(&uri)
            .body(Empty::<Bytes>::new())
            .expect("request");
        tasks.spawn(async move {
            match sender.send_request(request).await {
                Ok(response) => {
                    let ok = response.status() == 200;
                    ok && response.into_body().collect().await.is_ok()
                }
                Err(_) => false,
            }
        });
    }
    let (mut ok, mut failed, mut peak) = (0usize, 0usize, before);
    let mut health_checked = false;
    let all = async {
        while let Some(result) = tasks.join_next().await {
            if result.unwrap_or(false) {
                ok += 1;
            } else {
                failed += 1;
            }
            peak = peak.max(rss());
            // Mid-flight, the admin API still answers.
            if !health_checked && ok + failed == STREAMS / 2 {
                health_checked = true;
                assert!(healthy(&a).await, "no health answer under 10,000 streams");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(300), all)
        .await
        .expect("10,000 streams complete or fail within 300 s");
    let after = rss();
    eprintln!(
        "{STREAMS} streams: {ok} OK, {failed} failed; larger agent RSS {before:.1} MiB \
         before, peak {peak:.1} MiB, {after:.1} MiB after"
    );
    assert_eq!(ok + failed, STREAMS);
    assert!(ok > 0, "no stream succeeded");
    assert!(health_checked);
    assert!(peak < RSS_LIMIT_MIB, "agent RSS peaked at {peak:.1} MiB");
    assert!(healthy(&a).await, "the caller's agent stopped answering");
    assert!(healthy(&b).await, "the instance's agent stopped answering");
}

#[tokio::test]
async fn gossamer_call_http2_speaks_http2_to_the_proxy() {
    let (port, _echo) = echo_service("cli@b").await;
    let b = AgentProc::start(Spec::new("h2cli-b")).await;
    register_port(&b, "web", port).await;
    let a = AgentProc::start(Spec::new("h2cli-a").join(&b)).await;
    wait_instances_measured(&a, "web", 1).await;
    let admin = format!("http://{}", a.listeners.admin);
    let run = |http2: bool| {
        let admin = admin.clone();
        tokio::task::spawn_blocking(move || {
            let mut command = common::gossamer();
            command.args(["--agent", &admin, "call", "web", "/hello"]);
            if http2 {
                command.arg("--http2");
            }
            run_bounded(&mut command, Duration::from_secs(30), "gossamer call")
        })
    };
    let output = run(true).await.expect("gossamer call thread");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.starts_with("HTTP/2 200 OK from h2cli-b/"), "{text}");
    // Without the flag, the same call speaks HTTP/1.1.
    let output = run(false).await.expect("gossamer call thread");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("HTTP 200 OK from h2cli-b/"), "{text}");
}
