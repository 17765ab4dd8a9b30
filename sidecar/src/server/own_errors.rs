//! hyper answers a request it cannot parse itself (400 for bad framing such
//! as a duplicate Content-Length or obsolete line folding, 431 past 100
//! headers or 256 KiB of head, 414 for a URI too long) with an empty body,
//! before any handler runs. Every other error of the API and the proxy is
//! JSON `{error, hint}` (issue 21, row 14), so the connection's writes are
//! watched: a response head that no handler produced (more heads than
//! handler calls), bare and bodiless, is replaced by the same status with
//! a JSON body. hyper closes the connection after it, so nothing follows.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose hyper-made error answers become JSON.
pub(super) struct OwnErrorsAsJson<S> {
    inner: S,
    /// Requests handed to the handler on this connection.
    calls: Arc<AtomicU64>,
    /// Final response heads written so far.
    heads: u64,
    /// After a 101 the bytes are the upgraded protocol's: never touched.
    upgraded: bool,
    /// A replacement being written: bytes, how many are out, and the length
    /// to report to hyper once they all are.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> OwnErrorsAsJson<S> {
    pub(super) fn new(inner: S, calls: Arc<AtomicU64>) -> Self {
        Self {
            inner,
            calls,
            heads: 0,
            upgraded: false,
            pending: None,
        }
    }

    /// Looks at the start of a write; Some(replacement) for hyper's own answer.
    fn inspect(&mut self, start: &[u8]) -> Option<Vec<u8>> {
        if self.upgraded {
            return None;
        }
        let status = start
            .strip_prefix(b"HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| std::str::from_utf8(code).ok())
            .and_then(|code| code.parse::<u16>().ok())?;
        if status == 101 {
            self.upgraded = true;
        }
        if status < 200 {
            return None;
        }
        self.heads += 1;
        let from_handler = self.heads <= self.calls.load(Ordering::Relaxed);
        let bare_head = start.ends_with(b"\r\n\r\n")
            && start.windows(4).filter(|w| w == b"\r\n\r\n").count() == 1;
        if from_handler || !bare_head {
            return None;
        }
        Some(json_answer(status))
    }

    /// Writes the pending replacement; Ready(len to report) once it is out.
    fn flush_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>>
    where
        S: AsyncWrite + Unpin,
    {
        while let Some((bytes, written, _)) = self.pending.as_mut() {
            if *written == bytes.len() {
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        let reported = self.pending.take().map_or(0, |(_, _, len)| len);
        Poll::Ready(Ok(reported))
    }
}

/// The JSON answer for a status hyper chose.
fn json_answer(status: u16) -> Vec<u8> {
    let (reason, error, hint) = match status {
        431 => (
            "Request Header Fields Too Large",
            "the request head is too large: at most 100 headers and 256 KiB",
            "send fewer or smaller headers",
        ),
        414 => (
            "URI Too Long",
            "the request URI is too long",
            "send a shorter path and query",
        ),
        _ => (
            "Bad Request",
            "the request is not valid HTTP/1.1 (bad framing such as a duplicate Content-Length, obsolete line folding, or an invalid method, URI, header or version)",
            "send a well-formed HTTP/1.1 request",
        ),
    };
    let body = serde_json::json!({ "error": error, "hint": hint }).to_string();
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl<S: AsyncRead + Unpin> AsyncRead for OwnErrorsAsJson<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for OwnErrorsAsJson<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            if let Some(answer) = self.inspect(buf) {
                self.pending = Some((answer, 0, buf.len()));
            }
        }
        if self.pending.is_some() {
            return self.flush_pending(cx);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.pending.is_none() {
            let first = bufs.iter().find(|b| !b.is_empty());
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            // hyper's own answer has no body: its head is the whole write.
            if let Some(first) = first.filter(|f| f.len() == total) {
                if let Some(answer) = self.inspect(first) {
                    self.pending = Some((answer, 0, total));
                }
            } else if let Some(first) = first {
                let _ = self.inspect(first);
            }
        }
        if self.pending.is_some() {
            return self.flush_pending(cx);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_some() {
            ready!(self.flush_pending(cx))?;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_head_no_handler_wrote_is_replaced() {
        let calls = Arc::new(AtomicU64::new(0));
        let mut conn = OwnErrorsAsJson::new((), calls.clone());
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let answer = conn.inspect(bare).expect("replaced");
        let text = String::from_utf8(answer).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        assert!(text.ends_with('}') && text.contains("\"hint\""), "{text}");
        // A handler's answer, even an empty 400, is left alone.
        calls.store(2, Ordering::Relaxed);
        let empty_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        assert!(conn.inspect(empty_400).is_none());
        // Nothing after a 101 is looked at.
        let mut upgraded = OwnErrorsAsJson::new((), Arc::new(AtomicU64::new(1)));
        assert!(upgraded
            .inspect(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .is_none());
        assert!(upgraded.inspect(bare).is_none());
    }
}
