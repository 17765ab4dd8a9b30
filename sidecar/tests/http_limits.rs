//! The HTTP listeners' bounds (issue 21, rows 4 and 5): idle and slowloris
//! connections are closed once the header-read timeout passes, and past
//! `--max-connections` new connections are answered 503 and closed while
//! those already open keep working.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{eventually, metric_value, AgentProc, Spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REFUSED: &str = "gossamer_http_connections_refused_total";
/// Generous next to the 1 s header-read timeout the tests set.
const CLOSE_WITHIN: Duration = Duration::from_secs(20);

/// Reads until the peer closes (or `limit` passes); what was read, and
/// whether the peer closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

/// Sends one request on a kept-alive connection and reads its answer head
/// and body (by content-length).
async fn request(stream: &mut TcpStream, raw: &str) -> String {
    stream.write_all(raw.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                return text;
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            other => panic!("no complete answer ({other:?}): {text}"),
        }
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

#[tokio::test]
async fn idle_and_slowloris_connections_are_closed_after_the_header_timeout() {
    let agent = AgentProc::start(
        Spec::new("slowloris")
            .with_metrics()
            .arg("--header-read-timeout-ms")
            .arg("1000"),
    )
    .await;
    let mut tasks = Vec::new();
    for addr in [agent.listeners.proxy, agent.listeners.admin] {
        for i in 0..20 {
            tasks.push(tokio::spawn(async move {
                let mut stream = connect(addr).await;
                let started = Instant::now();
                if i % 2 == 0 {
                    // Idle: never a byte.
                    let (_, closed) = read_until_closed(&mut stream, CLOSE_WITHIN).await;
                    return (closed, started.elapsed());
                }
                // Slowloris: a request head one byte at a time, never finished.
                let head = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ";
                let _ = stream.write_all(head).await;
                let deadline = Instant::now() + CLOSE_WITHIN;
                while Instant::now() < deadline {
                    if stream.write_all(b"a").await.is_err() {
                        return (true, started.elapsed());
                    }
                    let mut buf = [0u8; 1024];
                    match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf))
                        .await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => return (true, started.elapsed()),
                        _ => {}
                    }
                }
                (false, started.elapsed())
            }));
        }
    }
    // Meanwhile a blocking query longer than the header timeout is answered:
    // the timeout is for the request head, not for the answer.
    let mut blocking = connect(agent.listeners.admin).await;
    let first = request(
        &mut blocking,
        "GET /v1/services HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let index = first
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-gossamer-index:")
                .map(|v| v.trim().to_owned())
        })
        .expect("index header");
    let asked = Instant::now();
    let answer = request(
        &mut blocking,
        &format!("GET /v1/services?index={index}&wait=3s HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "the query did not block"
    );

    for task in tasks {
        let (closed, after) = task.await.expect("task");
        assert!(closed, "a connection was still open after {after:?}");
    }
    let text = agent.metrics_text().await;
    for listener in ["proxy", "admin"] {
        let counted = metric_value(
            &text,
            REFUSED,
            &[("listener", listener), ("reason", "header_timeout")],
        );
        assert!(counted >= 20.0, "{listener}: {counted} timeouts counted");
    }
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_get_503_and_open_ones_keep_working() {
    const CAP: usize = 50;
    const EXTRA: usize = 400;
    let agent = AgentProc::start(
        Spec::new("conncap")
            .with_metrics()
            .arg("--max-connections")
            .arg(CAP.to_string()),
    )
    .await;
    let addr = agent.listeners.admin;
    // One working connection, then enough idle ones to fill the cap.
    let mut working = connect(addr).await;
    let health = "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n";
    assert!(request(&mut working, health)
        .await
        .starts_with("HTTP/1.1 200"));
    // Fill the cap: a connection not answered within 300 ms holds a slot.
    // The harness's own readiness probe may still hold one for a moment, so
    // filling stops at a refusal, waits, and fills again what was freed.
    let mut idle = Vec::new();
    for _ in 0..2 {
        loop {
            let mut stream = connect(addr).await;
            let (answer, closed) = read_until_closed(&mut stream, Duration::from_millis(300)).await;
            if closed {
                assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
                break;
            }
            idle.push(stream);
            assert!(
                idle.len() < CAP + 10,
                "{} connections open and none refused: the cap of {CAP} does not hold",
                idle.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        idle.len() < CAP,
        "{} idle connections besides the working one",
        idle.len()
    );
    // Every connection past the cap is answered 503 JSON and closed.
    let mut refused = 0;
    for _ in 0..EXTRA {
        let mut extra = connect(addr).await;
        let (answer, closed) = read_until_closed(&mut extra, Duration::from_secs(10)).await;
        if !(closed && answer.starts_with("HTTP/1.1 503") && answer.contains("--max-connections")) {
            // One slot too many: fail now rather than wait on each of the rest.
            break;
        }
        refused += 1;
    }
    assert_eq!(refused, EXTRA, "connections past the cap of {CAP}");
    // The open ones keep working.
    assert!(request(&mut working, health)
        .await
        .starts_with("HTTP/1.1 200"));
    // The proxy listener has its own cap: it is not full.
    let mut proxy = connect(agent.listeners.proxy).await;
    let answer = request(
        &mut proxy,
        "GET / HTTP/1.1\r\nHost: nosuch.localhost\r\n\r\n",
    )
    .await;
    assert!(!answer.contains("--max-connections"), "{answer}");
    // Closing idle connections frees their slots.
    idle.clear();
    eventually(
        "a slot to be free again",
        Duration::from_secs(10),
        || async {
            let mut stream = connect(addr).await;
            let answer = request(&mut stream, health).await;
            answer.starts_with("HTTP/1.1 200").then_some(())
        },
    )
    .await;
    let text = agent.metrics_text().await;
    let counted = metric_value(
        &text,
        REFUSED,
        &[("listener", "admin"), ("reason", "limit")],
    );
    assert!(counted >= EXTRA as f64, "{counted} refusals counted");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Sets the soft limit on open files of `pid` (the hard one stays: raising
/// it back would need privileges).
fn set_fd_limit(pid: u32, limit: usize) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit failed");
}

#[tokio::test]
async fn an_agent_out_of_descriptors_blames_itself_not_its_healthy_instance() {
    let agent = AgentProc::start(Spec::new("fd-out")).await;
    let pid = agent.pid().expect("pid");
    let (port, _echo) = common::echo_service("fd-echo").await;
    common::register_port(&agent, "fdecho", port).await;
    // Connections accepted before the descriptors run out.
    let mut caller = connect(agent.listeners.proxy).await;
    let mut admin = connect(agent.listeners.admin).await;
    let instances = "GET /v1/services/fdecho/instances HTTP/1.1\r\nHost: x\r\n\r\n";
    assert!(request(&mut admin, instances).await.contains("passing"));

    // Lower the agent's limit a little above what it holds, then fill it
    // with idle connections to its proxy.
    let limit = open_fds(pid) + 30;
    set_fd_limit(pid, limit);
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(connect(agent.listeners.proxy).await);
    }
    eventually(
        "the agent to run out of descriptors",
        Duration::from_secs(10),
        || async { (open_fds(pid) >= limit).then_some(()) },
    )
    .await;

    // A call to the healthy local instance cannot connect...
    let answer = request(
        &mut caller,
        "GET / HTTP/1.1\r\nHost: fdecho.localhost\r\n\r\n",
    )
    .await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    // ...and the instance is not blamed for it; the log says why.
    let listed = request(&mut admin, instances).await;
    assert!(
        listed.contains("passing") && !listed.contains("critical"),
        "the healthy instance was marked: {listed}"
    );
    assert!(
        agent.log().contains("out of file descriptors"),
        "the log does not say the agent is out of descriptors"
    );

    // Once descriptors are free again, calls go through.
    idle.clear();
    set_fd_limit(pid, 4_096);
    eventually("calls to work again", Duration::from_secs(20), || async {
        let mut stream = connect(agent.listeners.proxy).await;
        let answer = request(
            &mut stream,
            "GET / HTTP/1.1\r\nHost: fdecho.localhost\r\n\r\n",
        )
        .await;
        answer.starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
}

#[tokio::test]
async fn requests_hyper_cannot_parse_are_answered_with_json_errors() {
    let agent = AgentProc::start(Spec::new("badframing")).await;
    let many_headers: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases = [
        (
            format!("GET /v1/health HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n"),
            "431",
        ),
        (
            "POST /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                .to_owned(),
            "400",
        ),
        (
            "GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n".to_owned(),
            "400",
        ),
    ];
    for addr in [agent.listeners.admin, agent.listeners.proxy] {
        for (raw, status) in &cases {
            let mut stream = connect(addr).await;
            stream.write_all(raw.as_bytes()).await.expect("write");
            let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status} ")),
                "{addr}: {answer}"
            );
            let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
            let json: serde_json::Value = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("{addr}: not JSON ({e}): {answer}"));
            assert!(
                json["error"].is_string() && json["hint"].is_string(),
                "{json}"
            );
        }
    }
    // Requests on a connection that served fine are untouched.
    let mut stream = connect(agent.listeners.admin).await;
    let ok = request(&mut stream, "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}
