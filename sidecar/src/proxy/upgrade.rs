//! HTTP/1.1 `Upgrade` (WebSocket and the like): the upgrade headers travel
//! to the instance instead of being stripped as hop-by-hop, and once the
//! instance answers `101 Switching Protocols` the two upgraded connections
//! are spliced as plain byte streams until either side closes.
//!
//! The same splice runs on the calling sidecar (client ↔ QUIC stream, or
//! client ↔ local instance) and on the receiving sidecar (QUIC stream ↔
//! instance). An upgraded connection is never retried: by the time it
//! fails, bytes of the new protocol may have flowed.

use std::net::SocketAddr;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::forward::{send_http1, ProxyBody, SendError};
pub use super::headers::is_upgrade;

/// How long connecting to a local instance for an upgrade may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends an upgrade request to an instance on this node over a connection
/// of its own (an upgraded connection never goes back to a pool).
pub async fn to_local(
    address: SocketAddr,
    request: Request<ProxyBody>,
) -> Result<Response<Incoming>, SendError> {
    let target = address.to_string();
    let connect = |reason: String| SendError::Connect {
        target: target.clone(),
        reason,
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| connect(format!("no connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    send_http1(TokioIo::new(stream), request, &target).await
}

/// When `response` switches protocols, splices `downstream` (the side that
/// asked) with the upstream's upgraded connection on a task of its own.
/// Any other answer leaves both untouched.
pub fn splice_if_switched<B>(
    downstream: Option<OnUpgrade>,
    response: &mut Response<B>,
    what: String,
) {
    let Some(downstream) = downstream else {
        return;
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let upstream = hyper::upgrade::on(response);
    tokio::spawn(splice(downstream, upstream, what));
}

/// Copies bytes both ways until both directions are done; each direction's
/// EOF is passed on as a write shutdown (half-close). The buffers are
/// `copy_bidirectional`'s fixed 8 KiB per direction, so a peer that never
/// reads stalls its sender rather than growing memory.
async fn splice(downstream: OnUpgrade, upstream: OnUpgrade, what: String) {
    let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(%what, error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut downstream = TokioIo::new(downstream);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        Ok((sent, received)) => {
            debug!(%what, sent, received, "upgraded connection closed");
        }
        Err(e) => debug!(%what, error = %e, "upgraded connection failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::strip_for_next_hop;
    use http::header::{CONNECTION, UPGRADE};
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn upgrade_headers_survive_only_on_upgrade_requests() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        assert!(is_upgrade(&headers));
        strip_for_next_hop(&mut headers);
        assert_eq!(
            headers.get(UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            headers.get(CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
        assert!(!headers.contains_key("keep-alive"));

        let mut plain = HeaderMap::new();
        plain.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(&plain), "Upgrade without Connection: upgrade");
        strip_for_next_hop(&mut plain);
        assert!(!plain.contains_key(UPGRADE));
    }
}
