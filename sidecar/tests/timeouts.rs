//! `x-gossamer-timeout-ms` bounds the whole wait: an instance that sends its
//! answer's head and then goes silent has its body cut once it is silent for
//! the caller's timeout, on one sidecar and across two; a body that keeps
//! flowing is not cut however long it lasts.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{register_port, wait_instances_measured, AgentProc, Spec};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP/1.1 instance whose answers are chunked: `/stall` sends one chunk
/// and then nothing; `/drip` sends a chunk every 100 ms for 1.5 s.
async fn slow_instance() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n",
                    )
                    .await;
                if text.starts_with("GET /drip") {
                    for _ in 0..15 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let _ = stream.write_all(b"1\r\n.\r\n").await;
                    }
                    let _ = stream.write_all(b"0\r\n\r\n").await;
                } else {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            });
        }
    });
    port
}

/// GETs `path` of `service` through `proxy` with a 500 ms caller timeout;
/// Ok(body) when the body ended cleanly, Err(what happened) otherwise, and
/// how long it took from the request.
async fn get(proxy: SocketAddr, service: &str, path: &str) -> (Result<String, String>, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        let stream = tokio::net::TcpStream::connect(proxy)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        let request = http::Request::get(path)
            .header("host", format!("{service}.localhost"))
            .header("x-gossamer-timeout-ms", "500")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok(String::from_utf8_lossy(&body.to_bytes()).to_string())
    })
    .await
    .unwrap_or_else(|_| Err("no end within 20 s".to_owned()));
    (result, started.elapsed())
}

#[tokio::test]
async fn a_silent_body_is_cut_after_the_callers_timeout_and_a_flowing_one_is_not() {
    let a = AgentProc::start(Spec::new("timeout-a")).await;
    let b = AgentProc::start(Spec::new("timeout-b").join(&a)).await;
    register_port(&a, "near", slow_instance().await).await;
    register_port(&b, "far", slow_instance().await).await;
    wait_instances_measured(&a, "far", 1).await;

    for service in ["near", "far"] {
        let (result, took) = get(a.listeners.proxy, service, "/stall").await;
        let error = result.expect_err("the stalled body must not end cleanly");
        assert!(error.starts_with("body"), "{service}: {error}");
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(15),
            "{service}: cut after {took:?}, expected after about 500 ms of silence"
        );

        // 1.5 s in all, three times the timeout, but never 500 ms silent.
        let (result, took) = get(a.listeners.proxy, service, "/drip").await;
        assert_eq!(
            result.as_deref(),
            Ok("first..............."),
            "{service}: a flowing body was cut after {took:?}"
        );
    }
}
