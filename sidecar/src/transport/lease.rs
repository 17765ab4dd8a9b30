//! Streams in use hold their connection open: the idle close reads quinn's
//! frame counters, and a quiet stream (a WebSocket or a database connection
//! waiting for its next query, a gRPC stream between messages) sends no
//! frames, yet closing its connection would cut it. Each stream the agent
//! opens or accepts takes a lease on its connection for as long as it
//! lives; a connection with a lease is never idle.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Open streams by connection (`Connection::stable_id`).
#[derive(Debug, Default)]
pub(super) struct Leases(Mutex<HashMap<usize, usize>>);

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, usize>> {
        // A poisoned map only means a panic elsewhere; its counts are whole.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lease on connection `id`, released when dropped.
    pub(super) fn take(self: &Arc<Self>, id: usize) -> StreamLease {
        *self.lock().entry(id).or_default() += 1;
        StreamLease {
            leases: self.clone(),
            id,
        }
    }

    /// True while a stream of connection `id` is open.
    pub(super) fn held(&self, id: usize) -> bool {
        self.lock().contains_key(&id)
    }
}

/// One open stream's hold on its connection.
#[derive(Debug)]
pub struct StreamLease {
    leases: Arc<Leases>,
    id: usize,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        let mut leases = self.leases.lock();
        if let Some(count) = leases.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                leases.remove(&self.id);
            }
        }
    }
}

/// A stream's I/O (its two halves joined) that keeps the lease as long as
/// it lives: through hyper's connection, an upgrade or a TCP splice.
#[derive(Debug)]
pub struct Leased<T> {
    inner: T,
    _lease: StreamLease,
}

impl<T> Leased<T> {
    /// Ties `lease` to `inner`'s life.
    pub fn new(inner: T, lease: StreamLease) -> Self {
        Self {
            inner,
            _lease: lease,
        }
    }
}

impl<T> std::ops::Deref for Leased<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> std::ops::DerefMut for Leased<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Leased<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Leased<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_held_until_its_last_lease_is_dropped() {
        let leases = Arc::new(Leases::default());
        assert!(!leases.held(7));
        let first = leases.take(7);
        let second = leases.take(7);
        assert!(leases.held(7));
        assert!(!leases.held(8), "another connection");
        drop(first);
        assert!(leases.held(7), "one stream still open");
        drop(second);
        assert!(!leases.held(7));
    }
}
