//! `--access-log PATH|-`: one JSON line per request the proxy answered.
//!
//! The proxy hands a finished request's fields to a bounded queue and moves
//! on; one writer task turns them into lines and writes them (appending to
//! the file, or to stdout for `-`). A full queue (a disk slower than the
//! traffic) drops lines and says how many in the next one it writes, rather
//! than slowing calls. With no `--access-log`, nothing is built per request.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use http::{HeaderMap, Method, Uri};
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::warn;

use super::trace::{TraceIds, REQUEST_ID};

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 4096;

/// Retries the proxy sent for a request, set on the response it returns
/// (absent: none).
#[derive(Debug, Clone, Copy)]
pub struct Retries(pub u32);

/// The open access log: where the proxy sends finished requests.
#[derive(Debug)]
pub struct AccessLog {
    lines: mpsc::Sender<Line>,
    dropped: AtomicU64,
}

/// One line of the log, as written.
#[derive(Debug, Serialize)]
pub struct Line {
    /// When the request arrived, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The service asked for.
    pub service: String,
    /// The instance that answered, if one was picked.
    pub instance: Option<String>,
    /// Its node.
    pub node: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Path (without the query, which may hold secrets).
    pub path: String,
    /// Status sent to the caller.
    pub status: u16,
    /// Milliseconds until the response head was ready.
    pub duration_ms: f64,
    /// W3C trace id the request travels with.
    pub trace_id: String,
    /// `x-request-id` the request travels with.
    pub request_id: Option<String>,
    /// Retries sent on other instances.
    pub retries: u32,
    /// Lines dropped before this one because the writer fell behind.
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped_before: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What the proxy knows of a request when it arrives (built only when the
/// log is on).
pub struct Arrival {
    at: SystemTime,
    method: String,
    /// Without the query, which may hold secrets.
    path: String,
    trace: TraceIds,
    request_id: Option<String>,
}

impl Arrival {
    /// A request arriving now with `method` and request target `target`.
    pub fn new(method: &str, target: &str, request_id: Option<&str>, trace: TraceIds) -> Self {
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        Arrival {
            at: SystemTime::now(),
            method: method.to_owned(),
            path: path.to_owned(),
            trace,
            request_id: request_id.map(str::to_owned),
        }
    }
}

impl AccessLog {
    /// Opens `target` (`-` for stdout, else a file appended to) and returns
    /// the log and the writer task to run.
    pub fn open(
        target: &Path,
    ) -> anyhow::Result<(Self, impl std::future::Future<Output = ()> + Send + 'static)> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let out: Box<dyn AsyncWrite + Send + Unpin> = if target.as_os_str() == "-" {
            Box::new(tokio::io::stdout())
        } else {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(target)
                .with_context(|| {
                    format!(
                        "cannot open the access log {} for appending; choose a writable \
                         --access-log PATH, or `-` for stdout",
                        target.display()
                    )
                })?;
            Box::new(tokio::fs::File::from_std(file))
        };
        let log = Self {
            lines: tx,
            dropped: AtomicU64::new(0),
        };
        Ok((log, write_lines(rx, out, target.to_owned())))
    }

    /// Notes an arriving request (after its trace was continued).
    pub fn arrival(method: &Method, uri: &Uri, headers: &HeaderMap, trace: TraceIds) -> Arrival {
        let request_id = headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok());
        Arrival::new(method.as_str(), uri.path(), request_id, trace)
    }

    /// Logs a request answered with `response`.
    pub fn finished(
        &self,
        arrival: Arrival,
        service: &str,
        response: &http::Response<super::forward::ProxyBody>,
        took: Duration,
    ) {
        let upstream = response
            .headers()
            .get(super::route::UPSTREAM_HEADER)
            .and_then(|v| v.to_str().ok());
        let retries = response.extensions().get::<Retries>().map_or(0, |r| r.0);
        self.answered(
            arrival,
            service,
            response.status().as_u16(),
            upstream,
            retries,
            took,
        );
    }

    /// Logs a request answered with `status` by `upstream` (`node/instance`,
    /// as in `x-gossamer-upstream`) after `retries` retries.
    pub fn answered(
        &self,
        arrival: Arrival,
        service: &str,
        status: u16,
        upstream: Option<&str>,
        retries: u32,
        took: Duration,
    ) {
        let upstream = upstream.and_then(|v| v.split_once('/'));
        let line = Line {
            time: rfc3339(arrival.at),
            service: service.to_owned(),
            instance: upstream.map(|(_, i)| i.to_owned()),
            node: upstream.map(|(n, _)| n.to_owned()),
            method: arrival.method,
            path: arrival.path,
            status,
            duration_ms: (took.as_secs_f64() * 1e6).round() / 1e3,
            trace_id: arrival.trace.trace_id().to_owned(),
            request_id: arrival.request_id,
            retries,
            dropped_before: self.dropped.swap(0, Ordering::Relaxed),
        };
        if let Err(mpsc::error::TrySendError::Full(line)) = self.lines.try_send(line) {
            self.dropped
                .fetch_add(1 + line.dropped_before, Ordering::Relaxed);
        }
    }
}

async fn write_lines(
    mut rx: mpsc::Receiver<Line>,
    mut out: Box<dyn AsyncWrite + Send + Unpin>,
    target: PathBuf,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(line) = rx.recv().await {
        buf.clear();
        // Take whatever else is queued: one write and one flush for a burst.
        let mut next = Some(line);
        while let Some(line) = next {
            if serde_json::to_writer(&mut buf, &line).is_ok() {
                buf.push(b'\n');
            }
            next = if buf.len() < 60 * 1024 {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let written = async {
            out.write_all(&buf).await?;
            out.flush().await
        };
        if let Err(error) = written.await {
            warn!(%error, target = %target.display(), "cannot write the access log; lines are lost until it can");
        }
    }
}

/// `SystemTime` as RFC 3339 UTC with milliseconds, for example
/// `2026-11-30T05:10:28.123Z` (days to a civil date: Howard Hinnant's algorithm).
fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        let at = UNIX_EPOCH + Duration::from_millis(1_796_016_628_123);
        assert_eq!(rfc3339(at), "2026-11-30T05:30:28.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
