//! A gRPC call's outcome comes at its end: a server that fails after it
//! sent messages (or after a bare 200 head) puts `grpc-status` in the
//! trailers. This body reports the call to the balancer once its trailers
//! (or its end, or an error) pass, so an instance that answers UNAVAILABLE
//! mid-stream counts as failing and gets ejected like one that refuses at
//! once.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::forward::{BoxError, ProxyBody};
use super::grpc::is_unavailable;

/// Reports the call: `true` for success.
pub type Settle = Box<dyn FnOnce(bool) + Send + Sync>;

/// Wraps a gRPC response body; calls `settle` once.
pub struct SettleAtTrailers {
    inner: ProxyBody,
    settle: Option<Settle>,
}

impl SettleAtTrailers {
    /// `inner`, reported through `settle` when it ends.
    pub fn new(inner: ProxyBody, settle: Settle) -> Self {
        Self {
            inner,
            settle: Some(settle),
        }
    }

    fn settle(&mut self, success: bool) {
        if let Some(settle) = self.settle.take() {
            settle(success);
        }
    }
}

impl Body for SettleAtTrailers {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let success = !is_unavailable(trailers);
                    self.settle(success);
                }
            }
            Poll::Ready(Some(Err(_))) => self.settle(false),
            Poll::Ready(None) => self.settle(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for SettleAtTrailers {
    fn drop(&mut self) {
        // The caller went away before the end: nothing the instance did.
        self.settle(true);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http::HeaderMap;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    fn body(trailer_status: Option<&'static str>) -> ProxyBody {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(Bytes::from_static(b"message")))];
        if let Some(status) = trailer_status {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static(status));
            frames.push(Ok(Frame::trailers(trailers)));
        }
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    async fn outcome(inner: ProxyBody) -> Vec<bool> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let settle: Settle = Box::new(move |ok| record.lock().expect("lock").push(ok));
        let collected = SettleAtTrailers::new(inner, settle).collect().await;
        assert!(collected.is_ok());
        let seen = seen.lock().expect("lock").clone();
        seen
    }

    #[tokio::test]
    async fn unavailable_in_the_trailers_is_a_failure_and_other_ends_are_not() {
        assert_eq!(outcome(body(Some("14"))).await, [false]);
        assert_eq!(outcome(body(Some("0"))).await, [true]);
        // Another error is the application's answer, not an unhealthy instance.
        assert_eq!(outcome(body(Some("9"))).await, [true]);
        assert_eq!(outcome(body(None)).await, [true], "an end without trailers");
    }

    #[tokio::test]
    async fn a_body_dropped_early_is_settled_once_as_a_success() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let settle: Settle = Box::new(move |ok| record.lock().expect("lock").push(ok));
        drop(SettleAtTrailers::new(body(Some("14")), settle));
        assert_eq!(*seen.lock().expect("lock"), [true]);
    }
}
