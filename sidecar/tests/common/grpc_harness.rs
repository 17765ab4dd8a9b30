//! The gRPC side of tests/grpc.rs: a raw-bytes tonic codec (real gRPC
//! framing, trailers and statuses without protoc) and gRPC instances on
//! loopback that speak h2c only.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use futures_util::StreamExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::BoxStream;
use tonic::Status;

/// A status with text gRPC must percent-encode (`%`, non-ASCII).
pub const CUSTOM_MESSAGE: &str = "quota 100% used by ünïcode tenant";

// ---------------------------------------------------------------- codec

/// Messages are raw bytes: the test needs real gRPC framing, trailers and
/// statuses, not protobuf.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

// --------------------------------------------------------------- server

struct Unary<F>(F);

impl<F, Fut> tonic::server::UnaryService<Bytes> for Unary<F>
where
    F: FnMut(tonic::Request<Bytes>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Bytes>, Status>>,
{
    type Response = Bytes;
    type Future = Fut;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Fut {
        (self.0)(request)
    }
}

struct ServerStream<F>(F);

impl<F, Fut> tonic::server::ServerStreamingService<Bytes> for ServerStream<F>
where
    F: FnMut(tonic::Request<Bytes>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<BoxStream<Bytes>>, Status>>,
{
    type Response = Bytes;
    type ResponseStream = BoxStream<Bytes>;
    type Future = Fut;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Fut {
        (self.0)(request)
    }
}

/// Bidirectional echo: every message comes straight back.
struct Echo;

impl tonic::server::StreamingService<Bytes> for Echo {
    type Response = Bytes;
    type ResponseStream = BoxStream<Bytes>;
    type Future = std::future::Ready<Result<tonic::Response<BoxStream<Bytes>>, Status>>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<Bytes>>) -> Self::Future {
        let stream: BoxStream<Bytes> = Box::pin(request.into_inner());
        std::future::ready(Ok(tonic::Response::new(stream)))
    }
}

/// A gRPC instance on a free loopback port speaking h2c only.
pub struct GrpcInstance {
    pub port: u16,
    /// Calls it received.
    pub served: Arc<AtomicUsize>,
    /// `Hold` calls whose response stream is still open here.
    pub holding: Arc<AtomicUsize>,
}

/// Starts an instance named `name`; with `unavailable` every call is
/// refused with UNAVAILABLE (a draining or broken server).
pub async fn grpc_instance(name: &str, unavailable: bool) -> GrpcInstance {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the gRPC instance");
    let port = listener.local_addr().expect("addr").port();
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let holding = Arc::new(AtomicUsize::new(0));
    let held = holding.clone();
    let name: Arc<str> = Arc::from(name);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (counter, name, held) = (counter.clone(), name.clone(), held.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (name, held) = (name.clone(), held.clone());
                    async move {
                        Ok::<_, Infallible>(dispatch(&name, unavailable, &held, request).await)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    GrpcInstance {
        port,
        served,
        holding,
    }
}

/// Routes one call by its path (`/t.Test/METHOD`).
async fn dispatch(
    name: &Arc<str>,
    unavailable: bool,
    holding: &Arc<AtomicUsize>,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<tonic::body::Body> {
    let mut grpc = tonic::server::Grpc::new(Raw);
    if unavailable {
        return Status::unavailable(format!("{name} is draining")).into_http();
    }
    let tagged = |bytes: Bytes| {
        let mut response = tonic::Response::new(bytes);
        if let Ok(value) = name.parse() {
            response.metadata_mut().insert("x-instance", value);
        }
        response
    };
    match request.uri().path() {
        "/t.Test/Unary" => {
            let service = Unary(|r: tonic::Request<Bytes>| {
                let reply = tagged(r.into_inner());
                async move { Ok(reply) }
            });
            grpc.unary(service, request).await
        }
        "/t.Test/Fail" => {
            let service = Unary(|_| async { Err(Status::failed_precondition(CUSTOM_MESSAGE)) });
            grpc.unary(service, request).await
        }
        "/t.Test/Sleep" => {
            let service = Unary(|r: tonic::Request<Bytes>| async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(tonic::Response::new(r.into_inner()))
            });
            grpc.unary(service, request).await
        }
        // An instance whose name says so fails its streams after the data,
        // with UNAVAILABLE in the trailers (a server that breaks mid-call).
        "/t.Test/List" if name.ends_with(FAILS_MIDSTREAM) => {
            grpc.server_streaming(ServerStream(list_then_unavailable), request)
                .await
        }
        "/t.Test/List" => grpc.server_streaming(ServerStream(list), request).await,
        "/t.Test/Echo" => grpc.streaming(Echo, request).await,
        // One message, then the stream stays open until the caller goes:
        // `holding` counts it while it lives.
        "/t.Test/Hold" => {
            let service = Hold(Holding::new(holding.clone()));
            grpc.server_streaming(service, request).await
        }
        other => Status::unimplemented(format!("no method {other}")).into_http(),
    }
}

/// One message, then a stream that ends only when the caller drops it.
struct Hold(Arc<Holding>);

impl tonic::server::ServerStreamingService<Bytes> for Hold {
    type Response = Bytes;
    type ResponseStream = BoxStream<Bytes>;
    type Future = std::future::Ready<Result<tonic::Response<BoxStream<Bytes>>, Status>>;

    fn call(&mut self, _: tonic::Request<Bytes>) -> Self::Future {
        let guard = self.0.clone();
        let stream = futures_util::stream::iter([Ok(Bytes::from("held"))])
            .chain(futures_util::stream::pending())
            .map(move |item| {
                let _alive = &guard;
                item
            });
        std::future::ready(Ok(tonic::Response::new(Box::pin(stream))))
    }
}

/// Counts one open `Hold` stream from creation until it drops (shared by
/// the stream through an `Arc`).
struct Holding(Arc<AtomicUsize>);

impl Holding {
    fn new(count: Arc<AtomicUsize>) -> Arc<Self> {
        count.fetch_add(1, Ordering::SeqCst);
        Arc::new(Holding(count))
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Name suffix of an instance whose `List` streams end in UNAVAILABLE.
pub const FAILS_MIDSTREAM: &str = "-fails-midstream";

/// `N` messages, then UNAVAILABLE in the trailers.
fn list_then_unavailable(
    request: tonic::Request<Bytes>,
) -> std::future::Ready<Result<tonic::Response<BoxStream<Bytes>>, Status>> {
    let count: usize = String::from_utf8_lossy(request.get_ref())
        .parse()
        .unwrap_or(0);
    let items = (0..count)
        .map(|i| Ok(Bytes::from(format!("item {i}"))))
        .chain(std::iter::once(Err(Status::unavailable(
            "broke mid-stream",
        ))));
    let stream: BoxStream<Bytes> = Box::pin(futures_util::stream::iter(items));
    std::future::ready(Ok(tonic::Response::new(stream)))
}

/// `N`: N messages, then OK; `N!`: N messages, then RESOURCE_EXHAUSTED (a
/// status that can only travel in trailers, after the data).
fn list(
    request: tonic::Request<Bytes>,
) -> std::future::Ready<Result<tonic::Response<BoxStream<Bytes>>, Status>> {
    let text = String::from_utf8_lossy(request.get_ref()).into_owned();
    let fail = text.ends_with('!');
    let count: usize = text.trim_end_matches('!').parse().unwrap_or(0);
    let mut items: Vec<Result<Bytes, Status>> = (0..count)
        .map(|i| Ok(Bytes::from(format!("item {i}"))))
        .collect();
    if fail {
        items.push(Err(Status::resource_exhausted(format!(
            "stopped after {count}"
        ))));
    }
    let stream: BoxStream<Bytes> = Box::pin(futures_util::stream::iter(items));
    std::future::ready(Ok(tonic::Response::new(stream)))
}
