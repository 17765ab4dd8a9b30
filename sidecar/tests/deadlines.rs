//! The caller's deadline travels in the proxy frame, and the far sidecar
//! honours it on its own: when the calling side cannot reset the stream (a
//! partition swallows the reset), the far side still answers 504 at the
//! deadline and lets go of the instance.

mod common;

use std::time::Duration;

use common::{
    first_instance, open_proxy_stream, peer_transport, register_port, AgentProc, Spec, PSK,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// An instance that reads one request head and never answers; it reports
/// when the request arrived and when its connection was closed.
async fn stalling_instance() -> (u16, oneshot::Receiver<()>, oneshot::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (arrived_tx, arrived) = oneshot::channel();
    let (closed_tx, closed) = oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut chunk = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65_536 {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = arrived_tx.send(());
        // Never answers; reads only to see the connection end.
        loop {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = closed_tx.send(());
    });
    (port, arrived, closed)
}

#[tokio::test]
async fn the_far_sidecar_answers_504_at_the_callers_deadline_and_lets_go_of_the_instance() {
    let b = AgentProc::start(Spec::new("deadline-b")).await;
    let (port, arrived, closed) = stalling_instance().await;
    register_port(&b, "stall", port).await;
    let instance = first_instance(&b, "stall").await;

    // A calling sidecar that sends its request and then goes silent: it
    // neither finishes nor resets the stream, as when a partition eats
    // everything it sends after the request.
    let caller = peer_transport(PSK, "deadline-caller");
    let (mut send, mut recv, _lease) =
        open_proxy_stream(&caller, &b, &instance, "stall", 800).await;
    send.write_all(b"GET /slow HTTP/1.1\r\nhost: stall\r\n\r\n")
        .await
        .expect("write request");
    tokio::time::timeout(Duration::from_secs(10), arrived)
        .await
        .expect("the request reaches the instance")
        .expect("instance task alive");

    // Without the deadline in the frame nothing would ever come back.
    let mut answer = Vec::new();
    let head = tokio::time::timeout(Duration::from_secs(20), async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match recv.read_chunk(4096, true).await {
                Ok(Some(chunk)) => answer.extend_from_slice(&chunk.bytes),
                Ok(None) | Err(_) => break,
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .expect("the far sidecar answers once the caller's deadline passed");
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    // The body (JSON error and hint) follows the head.
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        let mut body = String::new();
        while !body.contains("deadline") {
            match recv.read_chunk(4096, true).await {
                Ok(Some(chunk)) => body.push_str(&String::from_utf8_lossy(&chunk.bytes)),
                Ok(None) | Err(_) => break,
            }
        }
        body
    })
    .await
    .unwrap_or_default();
    let text = format!("{head}{rest}");
    assert!(
        text.contains("within the caller's deadline of 800 ms"),
        "the 504 names the deadline: {text}"
    );
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the far sidecar closes its connection to the instance")
        .expect("instance task alive");
    drop(send);
}
