//! `gossamer echo`: a small HTTP echo service for demos, examples and tests.
//! It answers every request with JSON describing it, streams request bodies
//! back when asked to (`POST /echo`), can stream N bytes (`GET /bytes/N`),
//! and can be slow on demand (`?delay_ms=`), so the proxy can be exercised
//! without any other software.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::net::TcpListener;

/// Largest body `/bytes/N` will produce (10 GiB).
const MAX_GENERATED: u64 = 10 * 1024 * 1024 * 1024;

type EchoBody = BoxBody<Bytes, hyper::Error>;

/// Serves the echo service on `listener` until the process ends; `name`
/// appears in every answer so callers can tell instances apart.
pub async fn serve(listener: TcpListener, name: String) {
    let (_keep, shutdown) = tokio::sync::watch::channel(false);
    let name = std::sync::Arc::new(name);
    let limits = crate::server::Limits::new("echo");
    crate::server::serve(listener, limits, shutdown, move |request| {
        let name = name.clone();
        async move { handle(&name, request).await }
    })
    .await;
}

/// Binds `addr` and serves; for the CLI.
pub async fn run(addr: SocketAddr, name: String) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr}: {e}; choose a free --listen address")
    })?;
    eprintln!(
        "echo service {name:?} listening on http://{}",
        listener.local_addr()?
    );
    serve(listener, name).await;
    Ok(())
}

fn full(status: StatusCode, body: String) -> Response<EchoBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

async fn handle(name: &str, request: Request<Incoming>) -> Response<EchoBody> {
    let delay_ms = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("delay_ms=")))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .min(120_000);
    if delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
    }
    let path = request.uri().path().to_owned();
    if request.method() == Method::POST && path == "/echo" {
        // Stream the request body straight back, chunk by chunk.
        return Response::new(request.into_body().boxed());
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return match n.parse::<u64>() {
            Ok(n) if n <= MAX_GENERATED => generated(n),
            _ => full(StatusCode::BAD_REQUEST, format!("{{\"error\":\"bad length {n:?}\",\"hint\":\"use /bytes/N with N ≤ {MAX_GENERATED}\"}}")),
        };
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        return full(
            status,
            format!("{{\"instance\":{name:?},\"status\":{}}}", status.as_u16()),
        );
    }
    let method = request.method().to_string();
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let uri = request.uri().to_string();
    let body_len = match request.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => 0,
    };
    let answer = serde_json::json!({
        "instance": name,
        "method": method,
        "uri": uri,
        "host": host,
        "body_bytes": body_len,
    });
    full(StatusCode::OK, answer.to_string())
}

/// A body of `n` bytes produced in 64 KiB chunks, never held whole.
fn generated(n: u64) -> Response<EchoBody> {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
    let stream = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(CHUNK);
            Some((
                Ok::<_, hyper::Error>(Frame::data(chunk.slice(0..take as usize))),
                left - take,
            ))
        }
    });
    let mut response = Response::new(StreamBody::new(stream).boxed());
    if let Ok(len) = http::HeaderValue::from_str(&n.to_string()) {
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, len);
    }
    response
}
