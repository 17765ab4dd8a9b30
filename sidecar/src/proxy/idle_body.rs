//! A response body that ends with an error once it has been silent for
//! longer than the caller's timeout, so `x-gossamer-timeout-ms` bounds a
//! stalled body as well as the wait for the head. Without it, an instance
//! that sends its headers and then nothing holds the caller forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::forward::{BoxError, ProxyBody};

/// Wraps `inner`; every frame restarts the clock.
pub struct IdleTimeoutBody {
    inner: ProxyBody,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl IdleTimeoutBody {
    /// `inner`, cut after `idle` without a frame.
    pub fn new(inner: ProxyBody, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

/// The error a silent body ends with.
#[derive(Debug, thiserror::Error)]
#[error("the answer's body sent nothing for {0:?} (x-gossamer-timeout-ms); cut")]
pub struct BodyStalled(Duration);

impl Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = Instant::now() + this.idle;
                this.deadline.as_mut().reset(next);
                Poll::Ready(frame)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(this.idle))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn a_body_that_goes_silent_is_cut_and_a_steady_one_is_not() {
        // A frame every 50 ms under a 500 ms idle limit arrives whole.
        let steady = futures_util::stream::unfold(0u8, |n| async move {
            if n == 5 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))),
                n + 1,
            ))
        });
        let body =
            IdleTimeoutBody::new(StreamBody::new(steady).boxed(), Duration::from_millis(500));
        let whole = body.collect().await.expect("not cut").to_bytes();
        assert_eq!(&whole[..], b"xxxxx");

        // One frame, then silence: cut after the limit.
        let stalls = futures_util::stream::unfold(0u8, |n| async move {
            if n == 1 {
                std::future::pending::<()>().await;
            }
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))),
                n + 1,
            ))
        });
        let mut body =
            IdleTimeoutBody::new(StreamBody::new(stalls).boxed(), Duration::from_millis(100));
        let first = body.frame().await.expect("a frame").expect("data");
        assert!(first.is_data());
        let started = Instant::now();
        let error = body.frame().await.expect("an end").expect_err("cut");
        assert!(error.to_string().contains("sent nothing"), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
