//! Kept hops: requests to an instance on another node reuse the QUIC
//! stream (and its HTTP/1.1 connection) an earlier request to the same
//! instance left open; each request is still checked and timed on its own
//! by the far sidecar.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::{
    eventually, first_instance, hops_between, http_get, open_proxy_stream, peer_transport,
    read_response, register_port, wait_alive, AgentProc, Spec, PSK,
};
use http::{Request, Response};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// An instance that answers `/slow` never (within a minute) and anything
/// else at once, with the names of the `x-gossamer-*` headers it was sent.
async fn header_instance() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    if request.uri().path() == "/slow" {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    let seen: Vec<&str> = request
                        .headers()
                        .keys()
                        .map(|name| name.as_str())
                        .filter(|name| name.starts_with("x-gossamer-"))
                        .collect();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen.join(",")))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn sequential_calls_to_another_node_go_on_one_kept_hop() {
    let b = AgentProc::start(Spec::new("kept-b")).await;
    let a = AgentProc::start(Spec::new("kept-a").join(&b).with_metrics()).await;
    wait_alive(&[&a, &b], &["kept-a", "kept-b"], Duration::from_secs(20)).await;
    let port = header_instance().await;
    register_port(&b, "kept", port).await;
    eventually(
        "a to route to kept on b",
        Duration::from_secs(20),
        || async {
            let (status, _, _) =
                http_get(a.listeners.proxy, "/", &[("host", "kept.localhost")]).await?;
            (status == 200).then_some(())
        },
    )
    .await;
    let before = a.metrics_text().await;

    const CALLS: usize = 50;
    for i in 0..CALLS {
        let (status, _, body) = http_get(a.listeners.proxy, "/", &[("host", "kept.localhost")])
            .await
            .unwrap_or_else(|| panic!("call {i}: no answer"));
        assert_eq!(status, 200, "call {i}: {body}");
        assert!(
            !body.contains("x-gossamer-hop-deadline-ms"),
            "the hop's deadline header reached the instance: {body}"
        );
    }

    let after = a.metrics_text().await;
    let (new, kept) = hops_between(&before, &after);
    assert_eq!(
        new + kept,
        CALLS as f64,
        "every call crossed to b once (new {new}, kept {kept})"
    );
    // One after another, the calls need one hop; a second may open while
    // the first's end is still being read.
    assert!(
        new <= 2.0,
        "{new} streams opened for {CALLS} sequential calls"
    );
}

/// Sends `path` on `sender` with `headers`: (status, body).
async fn call(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = Request::get(path).header("host", "kept");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Empty::new()).expect("request");
    let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
        .await
        .unwrap_or_else(|_| panic!("{path}: no answer within 20 s"))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let (status, _, body) = read_response(response).await.expect("body");
    (status, body)
}

#[tokio::test]
async fn the_far_sidecar_times_and_checks_each_request_on_a_kept_stream() {
    let b = AgentProc::start(Spec::new("hopcheck-b")).await;
    let port = header_instance().await;
    register_port(&b, "kept", port).await;
    let instance = first_instance(&b, "kept").await;

    // A caller speaking the hop itself: one stream, no deadline in its
    // frame (0), several requests.
    let caller = peer_transport(PSK, "hopcheck-caller");
    let (send, recv, lease) = open_proxy_stream(&caller, &b, &instance, "kept", 0).await;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tokio::io::join(recv, send)))
            .await
            .expect("handshake on the stream");
    tokio::spawn(connection);

    let (status, body) = call(&mut sender, "/", &[]).await;
    assert_eq!((status, body.as_str()), (200, ""), "first request");

    // The second request's own deadline, sent as the hop's header, is
    // honoured though the frame gave none; the header stays on the hop.
    let (status, body) = call(
        &mut sender,
        "/slow",
        &[("x-gossamer-hop-deadline-ms", "700")],
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert!(
        body.contains("within the caller's deadline of 700 ms"),
        "{body}"
    );
    let (status, body) = call(&mut sender, "/", &[("x-gossamer-hop-deadline-ms", "5000")]).await;
    assert_eq!(
        (status, body.as_str()),
        (200, ""),
        "the stream serves on after a 504; the header is not the instance's"
    );

    // Deregistered while the stream is kept: the next request on it is
    // refused, not relayed to an address that is no longer an instance.
    b.client()
        .deregister(&instance.id)
        .await
        .expect("deregister");
    let (status, body) = call(&mut sender, "/", &[]).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("only forwards to its own instances"),
        "{body}"
    );
    drop(lease);
}
