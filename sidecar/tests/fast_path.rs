//! The proxy's HTTP/1.1 fast path against an instance that answers with
//! raw bytes: every response framing, header case both ways, 1xx, answers
//! that end with the connection, kept connections the instance closed, and
//! a connection that moves to hyper in the middle (a request with a body)
//! and goes on there. The caller is hyper's own HTTP/1.1 client on one
//! connection, so any framing mistake shows as its error.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use common::{AgentProc, Spec};

/// Answers by path, with the exact bytes a real server might send; each
/// request head it gets goes to the channel as text.
async fn scripted_instance() -> (u16, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer_connection(stream, tx.clone()));
        }
    });
    (port, rx)
}

async fn answer_connection(mut stream: TcpStream, heads: mpsc::UnboundedSender<String>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until_head_end(&mut stream, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let _ = heads.send(head.clone());
        let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let is_head = head.starts_with("HEAD ");
        let path = target.split('?').next().unwrap_or("/");
        let answer: Vec<u8> = match path {
            "/length" | "/length-then-close" if is_head => {
                b"HTTP/1.1 200 OK\r\nX-Mixed-Case: yes\r\nContent-Length: 5\r\n\r\n".to_vec()
            }
            "/length" | "/length-then-close" => {
                b"HTTP/1.1 200 OK\r\nX-Mixed-Case: yes\r\nContent-Length: 5\r\n\r\nhello".to_vec()
            }
            "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n".to_vec(),
            "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "/until-close" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end".to_vec(),
            "/empty" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            "/echo" => {
                let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                out.extend_from_slice(&body);
                out
            }
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        };
        if stream.write_all(&answer).await.is_err() {
            return;
        }
        if target == "/until-close" || target == "/length-then-close" {
            // The second closes without saying so, as an idle timeout would.
            return;
        }
    }
}

async fn read_until_head_end(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(at + 4);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One HTTP/1.1 client connection to the proxy, with header case kept.
async fn caller(proxy: std::net::SocketAddr) -> Sender {
    let stream = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
    trailers: Option<http::HeaderMap>,
}

async fn call(sender: &mut Sender, method: &str, path: &str, body: impl Into<Bytes>) -> Answer {
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "raw.localhost")
        .body(Full::new(body.into()))
        .expect("request");
    sender.ready().await.expect("connection ready");
    let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
        .await
        .expect("an answer within 20 s")
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let collected = response
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{method} {path} body: {e}"));
    let trailers = collected.trailers().cloned();
    Answer {
        status,
        headers,
        body: collected.to_bytes(),
        trailers,
    }
}

#[tokio::test]
async fn every_framing_passes_on_one_connection_and_a_large_body_moves_it_to_hyper() {
    let agent = AgentProc::start(Spec::new("fast-a").with_metrics()).await;
    let (port, mut heads) = scripted_instance().await;
    common::register_port(&agent, "raw", port).await;
    let mut sender = caller(agent.listeners.proxy).await;

    let length = call(&mut sender, "GET", "/length?q=1", Bytes::new()).await;
    assert_eq!((length.status, &length.body[..]), (200, &b"hello"[..]));
    assert!(
        length
            .headers
            .get("x-gossamer-upstream")
            .is_some_and(|v| v.as_bytes().starts_with(b"fast-a/")),
        "{:?}",
        length.headers
    );
    assert_eq!(
        length.headers.get("x-mixed-case").map(|v| v.as_bytes()),
        Some(&b"yes"[..])
    );
    let seen = heads.recv().await.expect("the instance got the request");
    assert!(seen.starts_with("GET /length?q=1 HTTP/1.1\r\n"), "{seen}");
    assert!(
        seen.contains("traceparent: 00-") && seen.contains("x-request-id: "),
        "{seen}"
    );

    let chunked = call(&mut sender, "GET", "/chunked", Bytes::new()).await;
    assert_eq!(&chunked.body[..], b"hello world");
    assert_eq!(
        chunked
            .trailers
            .as_ref()
            .and_then(|t| t.get("x-checksum"))
            .map(|v| v.as_bytes()),
        Some(&b"42"[..]),
        "trailers pass"
    );

    let head = call(&mut sender, "HEAD", "/length", Bytes::new()).await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(
        head.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"5"[..])
    );

    let early = call(&mut sender, "GET", "/early", Bytes::new()).await;
    assert_eq!((early.status, &early.body[..]), (200, &b"ok"[..]));
    let empty = call(&mut sender, "GET", "/empty", Bytes::new()).await;
    assert_eq!((empty.status, empty.body.len()), (204, 0));

    // A small body stays on the fast path; one over 64 KiB streams, so
    // hyper takes the connection from there on, and serves it.
    let echoed = call(&mut sender, "POST", "/echo", b"a small body".to_vec()).await;
    assert_eq!(
        (echoed.status, &echoed.body[..]),
        (200, &b"a small body"[..])
    );
    let large = vec![b'x'; 70 * 1024];
    let echoed = call(&mut sender, "POST", "/echo", large.clone()).await;
    assert_eq!((echoed.status, echoed.body.len()), (200, large.len()));
    let after = call(&mut sender, "GET", "/length", Bytes::new()).await;
    assert_eq!(&after.body[..], b"hello");

    // An answer delimited by the instance closing reaches the caller whole,
    // and the caller's connection closes after it.
    let mut sender = caller(agent.listeners.proxy).await;
    let until_close = call(&mut sender, "GET", "/until-close", Bytes::new()).await;
    assert_eq!(&until_close.body[..], b"until the end");
    tokio::time::timeout(Duration::from_secs(10), sender.ready())
        .await
        .expect("the connection's end is seen")
        .expect_err("the caller's connection closed after a close-delimited answer");

    let metrics = agent.metrics_text().await;
    let requests = common::metric_value(
        &metrics,
        "gossamer_proxy_requests_total",
        &[("service", "raw"), ("code", "200")],
    );
    assert!(requests >= 7.0, "every call counted: {requests}\n{metrics}");
}

#[tokio::test]
async fn pipelined_requests_and_a_kept_connection_the_instance_closed() {
    let agent = AgentProc::start(Spec::new("fast-b")).await;
    let (port, mut heads) = scripted_instance().await;
    common::register_port(&agent, "raw", port).await;

    // Three requests in one write: three answers, in order, and header
    // names in their own case both ways.
    let mut stream = TcpStream::connect(agent.listeners.proxy)
        .await
        .expect("connect");
    let one = "GET /length HTTP/1.1\r\nHost: raw.localhost\r\nX-Caller-Case: kept\r\n\r\n";
    stream
        .write_all(one.repeat(3).as_bytes())
        .await
        .expect("write");
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.windows(5).filter(|w| w == b"hello").count() < 3 {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("three answers in time")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{text}");
    assert_eq!(text.matches("X-Mixed-Case: yes\r\n").count(), 3, "{text}");
    for _ in 0..3 {
        let seen = heads.recv().await.expect("the instance got the request");
        assert!(seen.contains("\r\nX-Caller-Case: kept\r\n"), "{seen}");
    }

    // The instance closes its connection after each of these without
    // saying so: the proxy must not send the next request on the dead one.
    let mut sender = caller(agent.listeners.proxy).await;
    for i in 0..5 {
        let answer = call(&mut sender, "DELETE", "/length-then-close", Bytes::new()).await;
        assert_eq!(
            (answer.status, &answer.body[..]),
            (200, &b"hello"[..]),
            "call {i}"
        );
        // Give the close time to arrive, as between a user's calls.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
