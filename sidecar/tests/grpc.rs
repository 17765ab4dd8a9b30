//! gRPC through the mesh with a real gRPC implementation (tonic, with a
//! raw-bytes codec so no protoc is needed): unary, server streaming and
//! bidirectional streaming through one sidecar (instance on the caller's
//! node) and through two (over a QUIC stream); statuses and trailers reach
//! the client; `grpc-timeout` bounds the proxy's wait; the proxy's own
//! errors are gRPC statuses; an instance answering UNAVAILABLE is ejected.
//!
//! The instances speak HTTP/2 only (hyper's h2 server, no HTTP/1.1
//! fallback), so a hop that spoke HTTP/1.1 to them would fail the test.

mod common;
#[path = "common/grpc_harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{eventually, metric_value, register_port, wait_instances_measured, AgentProc, Spec};
use harness::{grpc_instance, Raw, CUSTOM_MESSAGE};
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const SERVICE: &str = "greeter";

// --------------------------------------------------------------- client

/// A tonic client of `service` through `proxy`: the channel connects to
/// the proxy port, and requests carry `:authority` `SERVICE.localhost:PORT`.
async fn grpc_client(proxy: SocketAddr, service: &str) -> tonic::client::Grpc<Channel> {
    let origin = format!("http://{service}.localhost:{}", proxy.port())
        .parse()
        .expect("origin");
    let channel = Endpoint::from_shared(format!("http://{proxy}"))
        .expect("endpoint")
        .origin(origin)
        .connect()
        .await
        .expect("connect to the proxy");
    tonic::client::Grpc::new(channel)
}

async fn unary<T>(
    grpc: &mut tonic::client::Grpc<T>,
    path: &'static str,
    request: tonic::Request<Bytes>,
) -> Result<tonic::Response<Bytes>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError>,
{
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("not ready: {}", e.into())))?;
    grpc.unary(request, PathAndQuery::from_static(path), Raw)
        .await
}

fn metadata(response: &tonic::metadata::MetadataMap, key: &str) -> String {
    response
        .get(key)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Unary, server streaming (with trailers), bidirectional echo and a
/// custom status, all through `proxy` to an instance on `node`.
async fn exercise(proxy: SocketAddr, node: &str) {
    let mut grpc = grpc_client(proxy, SERVICE).await;

    let reply = unary(
        &mut grpc,
        "/t.Test/Unary",
        tonic::Request::new("hello".into()),
    )
    .await
    .expect("unary call");
    assert_eq!(reply.get_ref().as_ref(), b"hello");
    assert_eq!(metadata(reply.metadata(), "x-instance"), "inst");
    assert!(
        metadata(reply.metadata(), "x-gossamer-upstream").starts_with(&format!("{node}/")),
        "{:?}",
        reply.metadata()
    );

    // A 3 MiB message (under gRPC's usual 4 MiB limit) each way: flow
    // control across every hop.
    let big = Bytes::from(vec![7u8; 3 * 1024 * 1024]);
    let reply = unary(&mut grpc, "/t.Test/Unary", tonic::Request::new(big.clone()))
        .await
        .expect("3 MiB unary call");
    assert!(reply.get_ref() == &big, "the 3 MiB echo differs");

    // Server streaming: 100 messages in order, then OK in the trailers.
    grpc.ready().await.expect("ready");
    let mut stream = grpc
        .server_streaming(
            tonic::Request::new(Bytes::from("100")),
            PathAndQuery::from_static("/t.Test/List"),
            Raw,
        )
        .await
        .expect("server streaming call")
        .into_inner();
    for i in 0..100 {
        let item = stream.message().await.expect("stream item");
        assert_eq!(item.as_deref(), Some(format!("item {i}").as_bytes()));
    }
    assert_eq!(stream.message().await.expect("end of stream"), None);

    // A status after data travels only in trailers: it must arrive.
    grpc.ready().await.expect("ready");
    let mut stream = grpc
        .server_streaming(
            tonic::Request::new(Bytes::from("3!")),
            PathAndQuery::from_static("/t.Test/List"),
            Raw,
        )
        .await
        .expect("server streaming call")
        .into_inner();
    for i in 0..3 {
        let item = stream.message().await.expect("stream item");
        assert_eq!(item.as_deref(), Some(format!("item {i}").as_bytes()));
    }
    let status = stream
        .message()
        .await
        .expect_err("the trailers carry RESOURCE_EXHAUSTED");
    assert_eq!(
        (status.code(), status.message()),
        (Code::ResourceExhausted, "stopped after 3")
    );

    // Bidirectional: each message is echoed before the next is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    grpc.ready().await.expect("ready");
    let mut echoes = grpc
        .streaming(
            tonic::Request::new(outbound),
            PathAndQuery::from_static("/t.Test/Echo"),
            Raw,
        )
        .await
        .expect("bidirectional call")
        .into_inner();
    let exchange = async {
        for i in 0..100 {
            let message = Bytes::from(format!("ping {i} {}", "x".repeat(i * 10)));
            tx.send(message.clone()).await.expect("send");
            let echo = echoes.message().await.expect("echo");
            assert_eq!(echo.as_ref(), Some(&message), "echo {i}");
        }
        drop(tx);
        assert_eq!(echoes.message().await.expect("end of echoes"), None);
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .expect("100 echoes within 60 s");

    // A handler's own status, code and message, reaches the caller.
    let status = unary(&mut grpc, "/t.Test/Fail", tonic::Request::new(Bytes::new()))
        .await
        .expect_err("Fail answers a status");
    assert_eq!(
        (status.code(), status.message()),
        (Code::FailedPrecondition, CUSTOM_MESSAGE)
    );
}

/// Puts the `greeter` definition (protocol grpc) through `writer` and waits
/// until `caller` sees it and `instances` measured instances.
async fn define_grpc(writer: &AgentProc, caller: &AgentProc, service: &str, instances: usize) {
    writer
        .client()
        .put_definition(&mesh_proto::catalog::Definition {
            name: service.to_owned(),
            version: "1".to_owned(),
            protocol: mesh_proto::Protocol::Grpc,
            ..Default::default()
        })
        .await
        .expect("put the definition");
    for agent in [writer, caller] {
        common::wait_protocol(agent, service, mesh_proto::Protocol::Grpc).await;
    }
    wait_instances_measured(caller, service, instances).await;
}

#[tokio::test]
async fn grpc_calls_through_one_sidecar() {
    let instance = grpc_instance("inst", false).await;
    let a = AgentProc::start(Spec::new("grpc1-a")).await;
    register_port(&a, SERVICE, instance.port).await;
    define_grpc(&a, &a, SERVICE, 1).await;
    exercise(a.listeners.proxy, "grpc1-a").await;
    assert!(instance.served.load(Ordering::SeqCst) >= 5);
}

#[tokio::test]
async fn grpc_calls_through_two_sidecars() {
    let instance = grpc_instance("inst", false).await;
    let b = AgentProc::start(Spec::new("grpc2-b")).await;
    register_port(&b, SERVICE, instance.port).await;
    let a = AgentProc::start(Spec::new("grpc2-a").join(&b).with_metrics()).await;
    define_grpc(&b, &a, SERVICE, 1).await;
    exercise(a.listeners.proxy, "grpc2-b").await;
    assert!(instance.served.load(Ordering::SeqCst) >= 5);

    // Unary calls one after another go on one kept hop: an answer whose
    // trailers were read is whole, though its body was never polled past them.
    let before = a.metrics_text().await;
    let mut grpc = grpc_client(a.listeners.proxy, SERVICE).await;
    for i in 0..20 {
        unary(
            &mut grpc,
            "/t.Test/Unary",
            tonic::Request::new("again".into()),
        )
        .await
        .unwrap_or_else(|e| panic!("unary call {i}: {e}"));
    }
    let after = a.metrics_text().await;
    let (new, kept) = common::hops_between(&before, &after);
    assert_eq!(new + kept, 20.0, "new {new}, kept {kept}");
    assert!(
        new <= 2.0,
        "{new} streams opened for 20 sequential unary calls"
    );
}

/// A tonic transport that does not enforce `grpc-timeout` itself (tonic's
/// Channel does, and would cancel the call before the proxy could answer):
/// requests go as they are on one h2c connection to the proxy.
#[derive(Clone)]
struct PlainH2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for PlainH2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let mut sender = self.0.clone();
        Box::pin(async move { sender.send_request(request).await })
    }
}

#[tokio::test]
async fn grpc_deadline_and_proxy_errors_are_grpc_statuses() {
    let instance = grpc_instance("inst", false).await;
    let b = AgentProc::start(Spec::new("grpcdl-b")).await;
    register_port(&b, SERVICE, instance.port).await;
    let a = AgentProc::start(Spec::new("grpcdl-a").join(&b)).await;
    define_grpc(&b, &a, SERVICE, 1).await;
    let proxy = a.listeners.proxy;

    // The handler sleeps a minute; the caller's 300 ms deadline must come
    // back from the proxy as DEADLINE_EXCEEDED. The outer 40 s bound only
    // fails rather than hangs, far from both figures.
    let stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake with the proxy");
    tokio::spawn(connection);
    let origin = format!("http://{SERVICE}.localhost:{}", proxy.port())
        .parse()
        .expect("origin");
    let mut plain = tonic::client::Grpc::with_origin(PlainH2(sender), origin);
    let mut request = tonic::Request::new(Bytes::from("slow"));
    request.set_timeout(Duration::from_millis(300));
    let status = tokio::time::timeout(
        Duration::from_secs(40),
        unary(&mut plain, "/t.Test/Sleep", request),
    )
    .await
    .expect("the proxy answers long before the handler")
    .expect_err("a deadline exceeded");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("300 ms"),
        "the proxy says which deadline: {status:?}"
    );

    // The same connection still serves a normal call.
    let reply = unary(
        &mut plain,
        "/t.Test/Unary",
        tonic::Request::new("ok".into()),
    )
    .await
    .expect("a call after the deadline");
    assert_eq!(reply.get_ref().as_ref(), b"ok");

    // tonic's own Channel with a deadline: whoever answers first, the call
    // ends within the bound with a deadline status, never a hang.
    let mut grpc = grpc_client(proxy, SERVICE).await;
    let mut request = tonic::Request::new(Bytes::from("slow"));
    request.set_timeout(Duration::from_millis(300));
    let status = tokio::time::timeout(
        Duration::from_secs(40),
        unary(&mut grpc, "/t.Test/Sleep", request),
    )
    .await
    .expect("the deadline ends the call")
    .expect_err("a deadline exceeded");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );

    // No instance at all: a gRPC UNAVAILABLE naming the service, not JSON
    // (a JSON body would reach tonic as an `Unknown`/`Internal` error).
    let mut nobody = grpc_client(proxy, "nosuch").await;
    let status = unary(
        &mut nobody,
        "/t.Test/Unary",
        tonic::Request::new("x".into()),
    )
    .await
    .expect_err("no instance of nosuch");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("nosuch"), "{status:?}");
}

/// A unary call with the caller's hard RTT requirement in its metadata.
fn pinned(hard_ms: u32) -> tonic::Request<Bytes> {
    let mut request = tonic::Request::new(Bytes::from("hi"));
    request.metadata_mut().insert(
        "x-gossamer-hard-rtt-ms",
        hard_ms.to_string().parse().expect("metadata value"),
    );
    request
}

#[tokio::test]
async fn an_instance_answering_unavailable_is_ejected() {
    // The broken instance is on the caller's node, the healthy one on b
    // behind a 60 ms link: a caller's hard 20 ms pins calls to the broken
    // one, so its failures are consecutive and eject it.
    let healthy = grpc_instance("healthy", false).await;
    let broken = grpc_instance("broken", true).await;
    let b = AgentProc::start(Spec::new("grpcej-b")).await;
    register_port(&b, SERVICE, healthy.port).await;
    let a = AgentProc::start(
        Spec::new("grpcej-a")
            .join(&b)
            .with_metrics()
            .arg("--debug-link-delay")
            .arg(format!("{}=60", b.listeners.quic)),
    )
    .await;
    register_port(&a, SERVICE, broken.port).await;
    define_grpc(&a, &a, SERVICE, 2).await;
    let client = a.client();
    eventually("b to be over hard 20 ms", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            let view = client
                .instances(
                    SERVICE,
                    &client::select::Requirements {
                        hard_rtt_ms: Some(20),
                        soft_rtt_ms: None,
                    },
                )
                .await
                .ok()?;
            (view.eligible.len() == 1 && view.eligible[0].instance.node.as_str() == "grpcej-a")
                .then_some(())
        }
    })
    .await;

    let mut grpc = grpc_client(a.listeners.proxy, SERVICE).await;
    // Unpinned, the failure penalty already steers calls away from the
    // broken instance: most reach the healthy one.
    let mut ok = 0;
    for i in 0..20 {
        match unary(&mut grpc, "/t.Test/Unary", tonic::Request::new("hi".into())).await {
            Ok(reply) => {
                assert_eq!(metadata(reply.metadata(), "x-instance"), "healthy");
                ok += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "call {i}: {status:?}");
                assert!(
                    status.message().contains("broken is draining"),
                    "{status:?}"
                );
            }
        }
    }
    assert!(ok >= 15, "{ok} of 20 reached the healthy instance");

    // Pinned: UNAVAILABLE from the instance until five in a row eject it,
    // then the proxy's own refusal, as a gRPC UNAVAILABLE naming the ejection.
    let mut from_instance = 0;
    let mut ejected = false;
    for i in 0..10 {
        let status = unary(&mut grpc, "/t.Test/Unary", pinned(20))
            .await
            .expect_err("only the broken instance is within 20 ms");
        assert_eq!(status.code(), Code::Unavailable, "call {i}: {status:?}");
        if status.message().contains("broken is draining") {
            from_instance += 1;
        } else {
            assert!(status.message().contains("ejected"), "{status:?}");
            ejected = true;
            break;
        }
    }
    assert!(
        ejected,
        "never ejected after {from_instance} UNAVAILABLE answers"
    );
    assert!(from_instance <= 5, "{from_instance} calls reached it");
    let ejections = metric_value(
        &a.metrics_text().await,
        "gossamer_upstream_ejections_total",
        &[("service", SERVICE)],
    );
    assert!(ejections >= 1.0, "ejections {ejections}");

    // While it is out (30 s), every call goes to the healthy instance.
    let served_before = broken.served.load(Ordering::SeqCst);
    for i in 0..20 {
        let reply = unary(&mut grpc, "/t.Test/Unary", tonic::Request::new("hi".into()))
            .await
            .unwrap_or_else(|e| panic!("call {i} after the ejection: {e:?}"));
        assert_eq!(metadata(reply.metadata(), "x-instance"), "healthy");
    }
    assert_eq!(broken.served.load(Ordering::SeqCst), served_before);
    assert!(healthy.served.load(Ordering::SeqCst) >= 35);
}

/// Calls `List` ("2") once; true when the whole stream ended OK.
async fn list_two(grpc: &mut tonic::client::Grpc<Channel>) -> Result<String, Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let response = grpc
        .server_streaming(
            tonic::Request::new(Bytes::from("2")),
            PathAndQuery::from_static("/t.Test/List"),
            Raw,
        )
        .await?;
    let instance = metadata(response.metadata(), "x-gossamer-upstream");
    let mut stream = response.into_inner();
    while stream.message().await?.is_some() {}
    Ok(instance)
}

#[tokio::test]
async fn an_instance_failing_mid_stream_with_unavailable_is_ejected() {
    // Both instances answer the head and send messages; one then ends every
    // stream with UNAVAILABLE in its trailers. Judged by the head alone it
    // would look healthy forever.
    let healthy = grpc_instance("healthy", false).await;
    let broken = grpc_instance(&format!("broken{}", harness::FAILS_MIDSTREAM), false).await;
    let a = AgentProc::start(Spec::new("grpcmid-a").with_metrics()).await;
    register_port(&a, SERVICE, healthy.port).await;
    register_port(&a, SERVICE, broken.port).await;
    define_grpc(&a, &a, SERVICE, 2).await;

    let mut grpc = grpc_client(a.listeners.proxy, SERVICE).await;
    let mut failed = 0;
    for _ in 0..60 {
        match list_two(&mut grpc).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(status.message().contains("broke mid-stream"), "{status:?}");
                failed += 1;
            }
        }
        let ejections = metric_value(
            &a.metrics_text().await,
            "gossamer_upstream_ejections_total",
            &[("service", SERVICE)],
        );
        if ejections >= 1.0 {
            break;
        }
    }
    assert!(
        (1..=5).contains(&failed),
        "ejected after {failed} streams that broke (five in a row eject)"
    );
    // While it is out, every stream goes to the healthy instance.
    let served_before = broken.served.load(Ordering::SeqCst);
    for i in 0..10 {
        list_two(&mut grpc)
            .await
            .unwrap_or_else(|e| panic!("stream {i} after the ejection: {e:?}"));
    }
    assert_eq!(broken.served.load(Ordering::SeqCst), served_before);
}

/// An instance that accepts connections and drops them at once.
async fn dropping_instance() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    port
}

/// The remote sidecar's own error (its instance drops the connection) must
/// reach a gRPC caller as UNAVAILABLE with the reason, not as a JSON body
/// that tonic reads as a broken frame (`Internal`, "invalid compression
/// flag: 123", the `{`).
#[tokio::test]
async fn a_remote_sidecars_error_reaches_a_grpc_caller_as_a_status() {
    let port = dropping_instance().await;
    let b = AgentProc::start(Spec::new("grpcbr-b")).await;
    register_port(&b, SERVICE, port).await;
    let a = AgentProc::start(Spec::new("grpcbr-a").join(&b)).await;
    define_grpc(&b, &a, SERVICE, 1).await;
    let mut grpc = grpc_client(a.listeners.proxy, SERVICE).await;
    let status = unary(&mut grpc, "/t.Test/Unary", tonic::Request::new("x".into()))
        .await
        .expect_err("the instance drops every connection");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("grpcbr-b") && status.message().contains(SERVICE),
        "the status names the node and service: {status:?}"
    );
}

/// A caller that drops its streaming calls frees them at the instance too,
/// through two sidecars: the cancel (RST_STREAM) crosses every hop, so
/// abandoned streams do not pile up at the instance.
#[tokio::test]
async fn cancelled_streams_end_at_the_instance() {
    const STREAMS: usize = 20;
    let instance = grpc_instance("inst", false).await;
    let b = AgentProc::start(Spec::new("grpccx-b")).await;
    register_port(&b, SERVICE, instance.port).await;
    let a = AgentProc::start(Spec::new("grpccx-a").join(&b)).await;
    define_grpc(&b, &a, SERVICE, 1).await;
    let mut grpc = grpc_client(a.listeners.proxy, SERVICE).await;
    let mut open = Vec::new();
    for _ in 0..STREAMS {
        grpc.ready().await.expect("ready");
        let mut stream = grpc
            .server_streaming(
                tonic::Request::new(Bytes::new()),
                PathAndQuery::from_static("/t.Test/Hold"),
                Raw,
            )
            .await
            .expect("Hold call")
            .into_inner();
        let first = stream.message().await.expect("first message");
        assert_eq!(first.as_deref(), Some(&b"held"[..]));
        open.push(stream);
    }
    assert_eq!(instance.holding.load(Ordering::SeqCst), STREAMS);
    drop(open);
    let holding = instance.holding.clone();
    eventually(
        "the instance to see every dropped stream end",
        Duration::from_secs(20),
        || {
            let holding = holding.clone();
            async move { (holding.load(Ordering::SeqCst) == 0).then_some(()) }
        },
    )
    .await;
}
