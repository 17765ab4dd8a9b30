//! Request heads on the HTTP/1.1 fast path: parsed in place with
//! httparse, judged (is the request one the fast path serves?), and
//! written for the next hop with every header name in the case it came in.
//! Answers' heads are [`super::response`]'s.

use super::super::forward::HOP_DEADLINE_HEADER;
use super::super::route::service_from_host;
use super::super::trace::{self, TraceIds};

/// Longest head the fast path reads. A longer request goes to hyper
/// (which answers 431 past its own limit); a longer response is refused.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Longest request body the fast path takes (with a Content-Length): it
/// is read whole before the request is sent, so it can be sent again on
/// another instance, as the general path keeps replayable bodies. A
/// longer or chunked body streams through hyper.
pub(super) const MAX_BODY: u64 = 64 * 1024;
/// Headers per head, as hyper's default.
pub(super) const MAX_HEADERS: usize = 100;

/// A request head read so far.
pub(super) enum Parsed {
    /// More bytes are needed.
    Partial,
    /// Not the fast path's: hyper serves it, and answers what is wrong
    /// with it (bad framing, no Host, CONNECT…).
    Hyper,
    /// A request the fast path serves.
    Request(RequestHead),
}

/// Which sidecar reads the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// The caller's, on the proxy port.
    Caller,
    /// The instance's, on a QUIC stream from the caller's sidecar: the
    /// hop's deadline header is read and taken off.
    Far,
}

/// A request the fast path serves: a head without a body, no upgrade, no
/// `x-gossamer-*` options, HTTP/1.1 in origin form.
pub(super) struct RequestHead {
    /// Bytes of the head in the connection's buffer.
    pub(super) len: usize,
    /// The service its Host names.
    pub(super) service: String,
    /// Safe (GET, HEAD, OPTIONS) or marked with `idempotency-key`.
    pub(super) retryable: bool,
    /// A HEAD request: its answer has no body whatever its framing says.
    pub(super) head_method: bool,
    /// The caller asked to close the connection after this request.
    pub(super) close: bool,
    /// The trace it continues.
    pub(super) trace: TraceIds,
    /// The caller's sidecar's deadline for the answer (only on [`Side::Far`]).
    pub(super) hop_deadline_ms: Option<u32>,
    /// The head as the instance gets it, then the body once read.
    pub(super) out: Vec<u8>,
    /// Where the head ends in `out`.
    pub(super) head_end: usize,
    /// Bytes of body after the head (a Content-Length of at most
    /// [`MAX_BODY`]).
    pub(super) body_len: usize,
    /// Where the method, the request target and `x-request-id`'s value
    /// are in `out` (for the access log).
    method_end: usize,
    target: std::ops::Range<usize>,
    request_id: std::ops::Range<usize>,
}

impl RequestHead {
    /// Appends the body (read after the head) to what the instance gets.
    pub(super) fn take_body(&mut self, body: &[u8]) {
        self.out.truncate(self.head_end);
        self.out.extend_from_slice(body);
    }

    /// The method, as sent.
    pub(super) fn method(&self) -> &str {
        text(&self.out[..self.method_end])
    }

    /// The request target (path and query), as sent.
    pub(super) fn target(&self) -> &str {
        text(&self.out[self.target.clone()])
    }

    /// The request id it travels with.
    pub(super) fn request_id(&self) -> &str {
        text(&self.out[self.request_id.clone()])
    }
}

fn text(bytes: &[u8]) -> &str {
    // Only ever called on bytes httparse accepted as tokens or values.
    std::str::from_utf8(bytes).unwrap_or_default()
}

pub(super) fn is(name: &str, expected: &str) -> bool {
    name.eq_ignore_ascii_case(expected)
}

/// Comma-separated tokens of a header value, trimmed.
pub(super) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(<[u8]>::trim_ascii)
}

/// Reads the request head at the start of `buf`.
pub(super) fn parse_request(buf: &[u8], side: Side) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Parsed::Partial,
        _ => return Parsed::Hyper,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parsed::Hyper;
    };
    if method == "CONNECT" || !target.starts_with('/') {
        return Parsed::Hyper;
    }
    let mut host = None;
    let mut hosts = 0;
    let mut lengths = 0;
    let mut body_len = 0;
    let mut close = false;
    let mut idempotency_key = false;
    let mut traceparent = None;
    let mut request_id = None;
    let mut hop_deadline_ms = None;
    for header in request.headers.iter() {
        let (name, value) = (header.name, header.value);
        if side == Side::Far && is(name, HOP_DEADLINE_HEADER) {
            let Some(ms) = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            else {
                return Parsed::Hyper;
            };
            hop_deadline_ms = Some(ms);
        } else if is(name, "host") {
            hosts += 1;
            host = Some(value);
        } else if is(name, "content-length") {
            lengths += 1;
            match std::str::from_utf8(value.trim_ascii())
                .ok()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(n) if n <= MAX_BODY => body_len = n as usize,
                _ => return Parsed::Hyper,
            }
        } else if is(name, "connection") {
            for token in tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    // It names headers to strip, or asks to upgrade.
                    return Parsed::Hyper;
                }
            }
        } else if is(name, "traceparent") {
            traceparent.get_or_insert(value);
        } else if is(name, "x-request-id") {
            request_id.get_or_insert(value);
        } else if is(name, "idempotency-key") {
            idempotency_key = true;
        } else if name.len() > 11 && name.as_bytes()[..11].eq_ignore_ascii_case(b"x-gossamer-")
            || [
                "transfer-encoding",
                "upgrade",
                "expect",
                "te",
                "trailer",
                "grpc-timeout",
            ]
            .iter()
            .any(|hyper_only| is(name, hyper_only))
            || is(name, "content-type") && value.starts_with(b"application/grpc")
        {
            return Parsed::Hyper;
        }
    }
    let Some(service) = host
        .filter(|_| hosts == 1 && lengths <= 1)
        .and_then(|host| std::str::from_utf8(host).ok())
        .and_then(|host| service_from_host(host).ok())
    else {
        return Parsed::Hyper;
    };

    let next = trace::next_hop(traceparent);
    let mut out = Vec::with_capacity(len + 160);
    out.extend_from_slice(method.as_bytes());
    let method_end = out.len();
    out.push(b' ');
    let target_start = out.len();
    out.extend_from_slice(target.as_bytes());
    let target = target_start..out.len();
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut request_id_at = None;
    for header in request.headers.iter() {
        let name = header.name;
        let hop_by_hop = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
        ]
        .iter()
        .any(|hop| is(name, hop));
        let replaced = is(name, "traceparent")
            || (!next.keep_tracestate && is(name, "tracestate"))
            || (side == Side::Far && is(name, HOP_DEADLINE_HEADER));
        if hop_by_hop || replaced {
            continue;
        }
        if is(name, "x-request-id") && request_id_at.is_none() {
            let at = out.len() + name.len() + 2;
            request_id_at = Some(at..at + header.value.len());
        }
        put_header(&mut out, name.as_bytes(), header.value);
    }
    put_header(&mut out, b"traceparent", &next.traceparent);
    let request_id = match (request_id, request_id_at) {
        (Some(_), Some(at)) => at,
        _ => {
            put_header(&mut out, b"x-request-id", &trace::new_request_id());
            out.len() - 34..out.len() - 2
        }
    };
    out.extend_from_slice(b"\r\n");
    Parsed::Request(RequestHead {
        len,
        service,
        retryable: matches!(method, "GET" | "HEAD" | "OPTIONS") || idempotency_key,
        head_method: method == "HEAD",
        close,
        trace: next.ids,
        hop_deadline_ms,
        head_end: out.len(),
        body_len,
        out,
        method_end,
        target,
        request_id,
    })
}

pub(super) fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &str) -> Parsed {
        parse_request(raw.as_bytes(), Side::Caller)
    }

    fn served(raw: &str) -> RequestHead {
        match request(raw) {
            Parsed::Request(head) => head,
            Parsed::Partial => panic!("partial: {raw:?}"),
            Parsed::Hyper => panic!("left to hyper: {raw:?}"),
        }
    }

    fn out_text(head: &RequestHead) -> String {
        String::from_utf8(head.out.clone()).expect("text")
    }

    #[test]
    fn a_plain_get_is_served_with_its_header_case_a_trace_and_a_request_id() {
        let head = served("GET /a?b=1 HTTP/1.1\r\nHost: echo.localhost:4201\r\nX-Custom-Case: v\r\nConnection: keep-alive\r\n\r\nGET /next");
        assert_eq!(head.service, "echo");
        assert_eq!(head.len, "GET /a?b=1 HTTP/1.1\r\nHost: echo.localhost:4201\r\nX-Custom-Case: v\r\nConnection: keep-alive\r\n\r\n".len());
        assert!(head.retryable && !head.close && !head.head_method);
        let out = out_text(&head);
        assert!(
            out.starts_with(
                "GET /a?b=1 HTTP/1.1\r\nHost: echo.localhost:4201\r\nX-Custom-Case: v\r\n"
            ),
            "{out}"
        );
        assert!(!out.to_ascii_lowercase().contains("connection"), "{out}");
        assert!(
            out.contains(&format!("traceparent: 00-{}-", head.trace.trace_id())),
            "{out}"
        );
        assert_eq!(head.request_id().len(), 32, "{out}");
        assert!(out.ends_with("\r\n\r\n"));
        assert_eq!((head.method(), head.target()), ("GET", "/a?b=1"));
    }

    #[test]
    fn a_given_trace_and_request_id_are_continued() {
        let head = served("DELETE /x HTTP/1.1\r\nhost: a.localhost\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\ntracestate: k=v\r\nx-request-id: mine\r\nconnection: close\r\n\r\n");
        assert_eq!(head.trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!head.retryable && head.close);
        assert_eq!(head.request_id(), "mine");
        let out = out_text(&head);
        assert!(out.contains("tracestate: k=v\r\n"), "{out}");
        assert_eq!(out.matches("traceparent").count(), 1, "{out}");
    }

    #[test]
    fn a_small_body_is_taken_and_goes_after_the_head() {
        let raw = "POST /orders HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\nx-request-id: /orders\r\n\r\nhello";
        let mut head = served(raw);
        assert_eq!((head.len, head.body_len), (raw.len() - 5, 5));
        assert!(!head.retryable);
        assert_eq!(
            head.request_id(),
            "/orders",
            "found in its header, not in the path"
        );
        head.take_body(b"hello");
        let out = out_text(&head);
        assert!(
            out.contains("Content-Length: 5\r\n") && out.ends_with("\r\n\r\nhello"),
            "{out}"
        );
        head.take_body(b"again");
        assert!(out_text(&head).ends_with("\r\n\r\nagain"));
    }

    #[test]
    fn what_the_fast_path_does_not_serve_goes_to_hyper() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 65537\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: +5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nHost: a.localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.localhost\r\nx-gossamer-hard-rtt-ms: 5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.localhost\r\nHost: b.localhost\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a.localhost\r\n\r\n",
            "GET http://a.localhost/ HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
            "CONNECT a.localhost:80 HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.localhost\r\nContent-Type: application/grpc\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.localhost\r\nConnection: x-secret\r\nx-secret: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a.localhost\r\n\r\n",
        ] {
            assert!(matches!(request(raw), Parsed::Hyper), "{raw:?}");
        }
    }

    #[test]
    fn a_head_in_pieces_is_partial_until_whole_and_an_endless_one_goes_to_hyper() {
        assert!(matches!(
            request("GET / HTTP/1.1\r\nHost: a.loc"),
            Parsed::Partial
        ));
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert!(matches!(request(&endless), Parsed::Hyper));
    }

    proptest::proptest! {
        /// Whatever a caller, a peer sidecar or an instance sends, the
        /// parsers answer without panicking, and a head they accept is
        /// never longer than what they were given.
        #[test]
        fn heads_of_any_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            for side in [Side::Caller, Side::Far] {
                if let Parsed::Request(head) = parse_request(&bytes, side) {
                    proptest::prop_assert!(head.len <= bytes.len());
                    proptest::prop_assert!(head.out.ends_with(b"\r\n\r\n"));
                }
            }
        }

        /// Printable heads with any header names and values: an accepted
        /// request keeps every header it does not own, in its case.
        #[test]
        fn accepted_requests_keep_their_headers(
            headers in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,12}", "[ -~]{0,20}"), 0..6),
        ) {
            let mut raw = String::from("GET /p HTTP/1.1\r\nHost: svc.localhost\r\n");
            for (name, value) in &headers {
                raw.push_str(&format!("{name}: {value}\r\n"));
            }
            raw.push_str("\r\n");
            if let Parsed::Request(head) = parse_request(raw.as_bytes(), Side::Caller) {
                let out = String::from_utf8(head.out.clone()).expect("text");
                for (name, value) in &headers {
                    let owned = ["connection", "keep-alive", "proxy-connection", "proxy-authorization", "traceparent", "tracestate"]
                        .iter()
                        .any(|n| name.eq_ignore_ascii_case(n));
                    if !owned {
                        let line = format!("{name}: {}\r\n", value.trim());
                        proptest::prop_assert!(out.contains(&line), "{} missing from {}", line, out);
                    }
                }
            }
        }
    }
}
