//! HTTP/1.1 on a QUIC stream between sidecars, with its connection driven
//! by the task that waits for the answer and then reads its body, instead
//! of a task of its own per request: one spawn and every wake-up between
//! that task and the caller's go away. Upgrades still get a connection
//! task (their bytes flow after the body has ended).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::debug;

use super::forward::{prepare_http1, BoxError, ProxyBody, SendError};

/// Sends `request` on `io` and answers with a body that keeps driving the
/// connection until it ends. Fails as `Connect` until the request is sent.
pub async fn send_http1<I>(
    io: I,
    mut request: Request<ProxyBody>,
    target: &str,
) -> Result<Response<ProxyBody>, SendError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let connect = |reason: String| SendError::Connect {
        target: target.to_owned(),
        reason,
    };
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake(io)
        .await
        .map_err(|e| connect(e.to_string()))?;
    prepare_http1(&mut request).map_err(connect)?;
    let mut connection = Some(Box::pin(connection));
    let answer = {
        let sending = sender.send_request(request);
        tokio::pin!(sending);
        loop {
            let Some(driving) = connection.as_mut() else {
                break sending.await;
            };
            tokio::select! {
                biased;
                answer = &mut sending => break answer,
                ended = driving => {
                    // The connection ended first; the pending send says why.
                    if let Err(e) = ended {
                        debug!(%target, error = %e, "hop connection ended before the answer");
                    }
                    connection = None;
                }
            }
        }
    };
    // No second request on this stream: the connection ends with the body.
    drop(sender);
    let response = answer.map_err(|e| SendError::Broken {
        target: target.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(response.map(|body| {
        DrivenBody {
            body,
            connection: Mutex::new(connection),
        }
        .boxed()
    }))
}

/// A response body that polls its connection before each read.
struct DrivenBody<C> {
    body: Incoming,
    // Behind a mutex only to be `Sync` (a boxed body must be); reached with
    // `get_mut`, never locked.
    connection: Mutex<Option<Pin<Box<C>>>>,
}

impl<C> Body for DrivenBody<C>
where
    C: Future<Output = hyper::Result<()>> + Send,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let slot = this
            .connection
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(connection) = slot.as_mut() {
            if let Poll::Ready(ended) = connection.as_mut().poll(cx) {
                if let Err(e) = ended {
                    // The body's own channel reports the cut to the reader.
                    debug!(error = %e, "hop connection ended");
                }
                *slot = None;
            }
        }
        Pin::new(&mut this.body).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
