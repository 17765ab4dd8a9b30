//! HTTP/1.1 Upgrade through the mesh with a real WebSocket server and client
//! (tokio-tungstenite): the upgrade headers reach the instance, and after
//! its 101 the bytes flow both ways through one sidecar (local instance) and
//! through two (over a QUIC stream), until the close handshake.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, wait_instances_measured, AgentProc, Spec};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const MESSAGES: usize = 1_000;

/// A WebSocket echo server on a free loopback port; counts the close
/// frames it received.
async fn ws_echo() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind ws echo");
    let port = listener.local_addr().expect("addr").port();
    let closes = Arc::new(AtomicUsize::new(0));
    let seen = closes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    match message {
                        Message::Text(_) | Message::Binary(_) => {}
                        Message::Close(_) => {
                            // tungstenite answers the close by itself.
                            seen.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        _ => continue,
                    }
                    if ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, closes)
}

/// Echoes `MESSAGES` messages through `proxy` to the `ws` service, then
/// closes; checks every echo and that the server's close frame comes back.
async fn echo_through(proxy: SocketAddr, closes: &AtomicUsize) {
    let stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    let request = "ws://ws.localhost/chat"
        .into_client_request()
        .expect("request");
    let (mut ws, response) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .expect("handshake within 10 s")
    .expect("WebSocket handshake through the proxy");
    assert_eq!(response.status(), 101);
    assert!(
        response.headers().contains_key("x-gossamer-upstream"),
        "the 101 names its upstream: {:?}",
        response.headers()
    );
    let exchange = async {
        for i in 0..MESSAGES {
            let text = format!("message {i} {}", "x".repeat(i % 200));
            ws.send(Message::text(text.clone())).await.expect("send");
            match ws.next().await {
                Some(Ok(Message::Text(echo))) => assert_eq!(echo.as_str(), text),
                other => panic!("echo {i}: {other:?}"),
            }
        }
        ws.close(Some(CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "done".into(),
        }))
        .await
        .expect("send close");
        // The server's close frame comes back, then the stream ends.
        let mut got_close = false;
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(_)) => got_close = true,
                Ok(other) => panic!("after close: {other:?}"),
                Err(_) => break,
            }
        }
        assert!(got_close, "the server's close frame did not arrive");
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .expect("1,000 echoes and the close within 60 s");
    eventually(
        "the server to see the close",
        Duration::from_secs(5),
        || async { (closes.load(Ordering::SeqCst) >= 1).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn websocket_echo_through_one_sidecar() {
    let (port, closes) = ws_echo().await;
    let a = AgentProc::start(
        Spec::new("ws1-a")
            .arg("--service")
            .arg(format!("ws={port}")),
    )
    .await;
    wait_instances_measured(&a, "ws", 1).await;
    echo_through(a.listeners.proxy, &closes).await;
}

#[tokio::test]
async fn websocket_echo_through_two_sidecars() {
    let (port, closes) = ws_echo().await;
    let b = AgentProc::start(
        Spec::new("ws2-b")
            .arg("--service")
            .arg(format!("ws={port}")),
    )
    .await;
    let a = AgentProc::start(Spec::new("ws2-a").join(&b)).await;
    wait_instances_measured(&a, "ws", 1).await;
    echo_through(a.listeners.proxy, &closes).await;
}
