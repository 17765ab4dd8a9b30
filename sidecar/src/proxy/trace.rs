//! W3C trace context (<https://www.w3.org/TR/trace-context/>) and
//! `x-request-id`, continued by every sidecar a request passes.
//!
//! Each sidecar hop is a span: the request leaves it with the trace id it
//! came with and a new parent id (span id), so a tracing backend sees the
//! mesh between the caller and the instance instead of a break. A request
//! without a valid `traceparent` starts a new trace, and its `tracestate`
//! is dropped (the spec forbids reading it without a valid parent). A
//! request without `x-request-id` gets one; one that has it keeps it.

use http::{HeaderMap, HeaderName, HeaderValue};

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The request id header, set when absent.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The ids a proxied request travels with after [`continue_trace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    /// The trace id, 32 lowercase hex digits.
    pub trace_id: [u8; 32],
}

impl TraceIds {
    /// The trace id as text.
    pub fn trace_id(&self) -> &str {
        // Always hex digits: written by `hex` or checked by `parse`.
        std::str::from_utf8(&self.trace_id).unwrap_or_default()
    }
}

/// Continues (or starts) the trace of a request about to leave this
/// sidecar, and gives it an `x-request-id` when it has none.
pub fn continue_trace(headers: &mut HeaderMap) -> TraceIds {
    let next = next_hop(headers.get(&TRACEPARENT).map(HeaderValue::as_bytes));
    if !next.keep_tracestate {
        headers.remove(&TRACESTATE);
    }
    if let Ok(value) = HeaderValue::from_bytes(&next.traceparent) {
        headers.insert(TRACEPARENT, value);
    }
    if !headers.contains_key(&REQUEST_ID) {
        if let Ok(value) = HeaderValue::from_bytes(&new_request_id()) {
            headers.insert(REQUEST_ID, value);
        }
    }
    next.ids
}

/// What a request leaves this sidecar with, from the `traceparent` it came with.
pub struct NextHop {
    /// The ids it travels with.
    pub ids: TraceIds,
    /// Its new `traceparent`: "00-" trace "-" span "-" flags.
    pub traceparent: [u8; 55],
    /// False when a new trace starts: its `tracestate` must go.
    pub keep_tracestate: bool,
}

/// The next hop of the trace whose `traceparent` is `incoming` (a new trace
/// when it is absent or invalid), with a new span id.
pub fn next_hop(incoming: Option<&[u8]>) -> NextHop {
    let span: [u8; 8] = rand::random();
    let (trace_id, flags, keep_tracestate) = match incoming.and_then(parse) {
        Some(parent) => (parent.trace_id, parent.flags, true),
        None => {
            // Never all zeros (invalid): the odds are nil, but cheap to rule out.
            let mut id = [0u8; 16];
            while id == [0; 16] {
                id = rand::random();
            }
            (hex::<16, 32>(&id), *b"01", false)
        }
    };
    let mut traceparent = [0u8; 55];
    traceparent[..3].copy_from_slice(b"00-");
    traceparent[3..35].copy_from_slice(&trace_id);
    traceparent[35] = b'-';
    traceparent[36..52].copy_from_slice(&hex::<8, 16>(&span));
    traceparent[52] = b'-';
    traceparent[53..].copy_from_slice(&flags);
    NextHop {
        ids: TraceIds { trace_id },
        traceparent,
        keep_tracestate,
    }
}

/// A new `x-request-id`: 32 lowercase hex digits.
pub fn new_request_id() -> [u8; 32] {
    hex::<16, 32>(&rand::random())
}

struct Parent {
    trace_id: [u8; 32],
    flags: [u8; 2],
}

/// A valid `traceparent`: version, trace id, parent id and flags, all
/// lowercase hex, ids not all zeros, version not `ff`. A version above 00
/// may carry more fields after the flags (the spec's forward compatibility);
/// version 00 may not.
fn parse(value: &[u8]) -> Option<Parent> {
    let lower_hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zeros = |b: &[u8]| b.iter().all(|c| *c == b'0');
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let (version, trace, parent, flags) =
        (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    let valid = lower_hex(version)
        && version != b"ff"
        && (value.len() == 55 || (version != b"00" && value[55] == b'-'))
        && lower_hex(trace)
        && !zeros(trace)
        && lower_hex(parent)
        && !zeros(parent)
        && lower_hex(flags);
    valid.then(|| Parent {
        trace_id: trace.try_into().unwrap_or([b'0'; 32]),
        flags: [flags[0], flags[1]],
    })
}

fn hex<const N: usize, const M: usize>(bytes: &[u8; N]) -> [u8; M] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; M];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn with(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        headers
    }

    fn traceparent(headers: &HeaderMap) -> String {
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn a_valid_parent_keeps_its_trace_and_flags_and_gets_a_new_span() {
        let mut headers = with(&[("traceparent", GIVEN), ("tracestate", "congo=t61rcWkgMzE")]);
        let ids = continue_trace(&mut headers);
        let out = traceparent(&headers);
        assert_eq!(ids.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(&out[..36], &GIVEN[..36]);
        assert_ne!(&out[36..52], &GIVEN[36..52], "a new span id");
        assert_eq!(&out[52..], "-01");
        assert!(parse(out.as_bytes()).is_some(), "{out}");
        assert_eq!(headers["tracestate"], "congo=t61rcWkgMzE");
        assert_eq!(headers[REQUEST_ID].len(), 32);
    }

    #[test]
    fn a_missing_or_malformed_parent_starts_a_trace_and_drops_tracestate() {
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "zz",
        ] {
            let mut headers = with(&[("traceparent", bad), ("tracestate", "a=b")]);
            let ids = continue_trace(&mut headers);
            let out = traceparent(&headers);
            assert!(parse(out.as_bytes()).is_some(), "{bad:?} -> {out}");
            assert_ne!(
                ids.trace_id(),
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "{bad:?}"
            );
            assert!(headers.get("tracestate").is_none(), "{bad:?}");
        }
        let mut none = HeaderMap::new();
        let ids = continue_trace(&mut none);
        assert_eq!(&traceparent(&none)[3..35], ids.trace_id());
    }

    #[test]
    fn a_later_version_with_more_fields_is_continued_and_a_request_id_kept() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let mut headers = with(&[("traceparent", later), ("x-request-id", "mine")]);
        let ids = continue_trace(&mut headers);
        assert_eq!(ids.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(traceparent(&headers).starts_with("00-4bf92f"));
        assert_eq!(headers[REQUEST_ID], "mine");
    }
}
