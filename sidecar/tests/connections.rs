//! Connections exist only to peers in use: an idle one closes, and the next
//! use (an anti-entropy round, a proxied call) dials again.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{echo_service, eventually, http_get, PSK};
use mesh_proto::gossip::StreamKind;
use sidecar::transport::{Inbound, Transport, TransportTimings};

/// A transport whose connections close after `idle_close` of no use, and
/// that answers every stream it is offered with "pong".
fn transport(name: &str, idle_close: Duration) -> Arc<Transport> {
    sidecar::tls::install_crypto_provider();
    let trust = sidecar::tls::ClusterTrust::from_passphrase(PSK, name).expect("trust");
    let (swim, _) = tokio::sync::mpsc::channel(16);
    let (rtt, _) = tokio::sync::mpsc::channel(16);
    let (streams, mut inbound) =
        tokio::sync::mpsc::channel::<sidecar::transport::InboundStream>(16);
    tokio::spawn(async move {
        while let Some(mut stream) = inbound.recv().await {
            let _ = stream.recv.read_to_end(64).await;
            let _ = stream.send.write_all(b"pong").await;
            let _ = stream.send.finish();
            // Keep the stream until the peer has read the answer.
            let _ = stream.send.stopped().await;
        }
    });
    Transport::bind(
        "127.0.0.1:0".parse().expect("addr"),
        &trust,
        sidecar::link_shim::LinkRules::default(),
        TransportTimings {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            // Keep-alives run more often than the idle close: they must
            // not count as use.
            keep_alive: Duration::from_millis(200),
            idle_close,
        },
        Inbound { swim, rtt, streams },
    )
    .expect("bind transport")
}

async fn ping(from: &Arc<Transport>, to: std::net::SocketAddr) -> Vec<u8> {
    let (mut send, mut recv, _, _lease) = from
        .open_stream(to, StreamKind::Sync)
        .await
        .expect("a stream to the peer");
    send.write_all(b"ping").await.expect("write");
    send.finish().expect("finish");
    recv.read_to_end(64).await.expect("the answer")
}

#[tokio::test]
async fn idle_connections_close_and_reopen_on_demand() {
    let a = transport("conn-a", Duration::from_millis(600));
    let b = transport("conn-b", Duration::from_secs(600));
    let b_addr = b.local_addr().expect("addr");

    assert_eq!(ping(&a, b_addr).await, b"pong");
    let first = a.cached(b_addr).expect("a holds a connection to b");

    let closed = eventually(
        "a closes its idle connection to b",
        Duration::from_secs(20),
        || {
            let open = a.live().len();
            async move { (open == 0).then_some(()) }
        },
    )
    .await;
    let () = closed;
    assert!(
        first.close_reason().is_some(),
        "the idle connection is closed"
    );

    // The next use dials again.
    assert_eq!(ping(&a, b_addr).await, b"pong");
    let second = a.cached(b_addr).expect("a connection again");
    assert_ne!(first.stable_id(), second.stable_id(), "a new connection");
    assert_eq!(a.live().len(), 1);
}

#[tokio::test]
async fn a_quiet_stream_keeps_its_connection_open_on_both_sides() {
    // A WebSocket or a database connection may say nothing for longer than
    // the idle close; closing the connection under it would cut it.
    let idle = Duration::from_millis(400);
    let a = transport("quiet-a", idle);
    let b = transport("quiet-b", idle);
    let b_addr = b.local_addr().expect("addr");
    let (mut send, mut recv, connection, lease) = a
        .open_stream(b_addr, StreamKind::Sync)
        .await
        .expect("a stream to b");
    tokio::time::sleep(idle * 5).await;
    assert!(
        connection.close_reason().is_none(),
        "the connection under a quiet stream was closed: {:?}",
        connection.close_reason()
    );
    send.write_all(b"ping")
        .await
        .expect("write after the quiet");
    send.finish().expect("finish");
    assert_eq!(recv.read_to_end(64).await.expect("the answer"), b"pong");
    drop((send, recv, lease));
    eventually(
        "a closes the connection once its stream is gone",
        Duration::from_secs(20),
        || {
            let closed = connection.close_reason().is_some();
            async move { closed.then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn a_proxied_call_reaches_a_node_with_no_open_connection() {
    let quick = |name: &str, join: Vec<String>| {
        let mut config = sidecar::demo::local_config(name, join, Vec::new());
        config.idle_close = Some(Duration::from_millis(500));
        // No anti-entropy round during the test: it would reopen the connection.
        config.anti_entropy = Some(Duration::from_secs(3600));
        config
    };
    let b = sidecar::agent::start(quick("conn-b", Vec::new()))
        .await
        .expect("b starts");
    let b_quic = b.agent.listeners.quic.to_string();
    let a = sidecar::agent::start(quick("conn-a", vec![b_quic]))
        .await
        .expect("a starts");
    let (port, _echo) = echo_service("echo-on-b").await;
    common::register_port_at(b.agent.listeners.admin, "echo", port).await;

    // The instance reaches a by gossip (SWIM needs no connection), and the
    // connection the join opened closes once idle.
    let b_addr = b.agent.listeners.quic;
    let a_client =
        client::Client::new(&format!("http://{}", a.agent.listeners.admin)).expect("client");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let view = a_client
            .instances("echo", &client::Requirements::default())
            .await;
        let known = view.is_ok_and(|v| !v.eligible.is_empty() || !v.ineligible.is_empty());
        let idle = a.agent.transport.cached(b_addr).is_none();
        if known && idle {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after 30 s: a knows b's instance: {known}; a holds no connection to b: {idle}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let proxy = a.agent.listeners.proxy;
    let (status, headers, body) = eventually(
        "a call through a's proxy reaches b",
        Duration::from_secs(20),
        || async move {
            http_get(proxy, "/hello", &[("host", "echo.localhost")])
                .await
                .filter(|(status, _, _)| *status == 200)
        },
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let upstream = headers
        .get("x-gossamer-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(upstream.starts_with("conn-b"), "served by b: {upstream}");
    assert!(
        a.agent.transport.cached(b_addr).is_some(),
        "the call opened a connection to b"
    );
    a.stop().await;
    b.stop().await;
}
