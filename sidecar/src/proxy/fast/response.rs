//! Answers' heads on the HTTP/1.1 fast path: parsed in place, their
//! framing read (where the body ends), and rewritten for the caller:
//! hop-by-hop headers dropped, `x-gossamer-upstream` added, header names
//! in the case the instance wrote them.

use std::io::Write;

use super::super::forward::CONNECT_FAILURE_HEADER;
use super::super::route;
use super::head::{is, put_header, tokens, MAX_HEAD, MAX_HEADERS};

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked: relayed as it is, chunk by chunk, trailers included.
    Chunked,
    /// Until the instance closes the connection.
    UntilClose,
}

/// A response head read so far.
pub(super) enum ResponseParsed {
    /// More bytes are needed.
    Partial,
    /// Not a response the proxy can pass on; why.
    Invalid(String),
    /// A 1xx other than 101, `len` bytes, passed on as it is.
    Informational { len: usize },
    /// The final response head.
    Final(ResponseHead),
}

/// A final response head, rewritten for the caller.
pub(super) struct ResponseHead {
    /// Bytes of the head in the upstream connection's buffer.
    pub(super) len: usize,
    /// Its status code.
    pub(super) status: u16,
    /// How its body ends.
    pub(super) framing: Framing,
    /// The instance may get another request on this connection.
    pub(super) reusable: bool,
    /// The far sidecar could not reach its instance (nothing was sent to
    /// it): the caller's sidecar may try another.
    pub(super) connect_failure: bool,
    /// The head as the caller gets it.
    pub(super) out: Vec<u8>,
}

/// What the proxy adds to each answer: `x-gossamer-upstream` and, when
/// known, `x-gossamer-rtt-ms`.
pub(super) struct Annotation<'a> {
    pub(super) upstream: &'a str,
    pub(super) rtt_ms: Option<f64>,
}

/// Hop-by-hop headers of a response (RFC 9110 §7.6.1), never passed on.
const RESPONSE_HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
];

/// Reads the response head at the start of `buf`, for a request that was
/// a HEAD request when `head_method`.
pub(super) fn parse_response(
    buf: &[u8],
    head_method: bool,
    annotation: Option<&Annotation<'_>>,
) -> ResponseParsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return ResponseParsed::Partial,
        Ok(httparse::Status::Partial) => {
            return ResponseParsed::Invalid(format!("a response head over {MAX_HEAD} bytes"))
        }
        Err(e) => return ResponseParsed::Invalid(format!("an invalid response head ({e})")),
    };
    let (Some(version), Some(status)) = (response.version, response.code) else {
        return ResponseParsed::Invalid("an incomplete status line".to_owned());
    };
    match status {
        101 => return ResponseParsed::Invalid("101 to a request that asked no upgrade".to_owned()),
        100..=199 => return ResponseParsed::Informational { len },
        _ => {}
    }
    let mut length: Option<u64> = None;
    let mut transfer_encoding: Option<bool> = None;
    let mut reusable = version == 1;
    let mut named: Vec<&[u8]> = Vec::new();
    let mut connect_failure = false;
    for header in response.headers.iter() {
        let (name, value) = (header.name, header.value);
        if is(name, CONNECT_FAILURE_HEADER) {
            connect_failure = true;
        } else if is(name, "content-length") {
            let Some(n) = std::str::from_utf8(value.trim_ascii())
                .ok()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                return ResponseParsed::Invalid("an invalid Content-Length".to_owned());
            };
            if length.is_some_and(|seen| seen != n) {
                return ResponseParsed::Invalid("two different Content-Lengths".to_owned());
            }
            length = Some(n);
        } else if is(name, "transfer-encoding") {
            let last = tokens(value).filter(|t| !t.is_empty()).last();
            transfer_encoding = Some(last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
        } else if is(name, "connection") {
            for token in tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    named.push(token);
                }
            }
        }
    }
    let framing = if head_method || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (transfer_encoding, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    if framing == Framing::UntilClose {
        reusable = false;
    }

    let mut out = Vec::with_capacity(len + 96);
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse took three digits.
    let _ = write!(out, "{status}");
    out.push(b' ');
    out.extend_from_slice(response.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in response.headers.iter() {
        let name = header.name;
        let hop_by_hop = RESPONSE_HOP_BY_HOP.iter().any(|hop| is(name, hop))
            || named
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name.as_bytes()));
        // With Transfer-Encoding, a Content-Length is wrong (RFC 9112 §6.3).
        let stale_length = transfer_encoding.is_some() && is(name, "content-length");
        // The caller's sidecar says where the answer came from, never the
        // instance (a far sidecar leaves it to the caller's).
        let ours = annotation.is_some()
            && (is(name, route::UPSTREAM_HEADER) || is(name, route::RTT_HEADER));
        if !(hop_by_hop || stale_length || ours) {
            put_header(&mut out, name.as_bytes(), header.value);
        }
    }
    if let Some(annotation) = annotation {
        put_header(
            &mut out,
            route::UPSTREAM_HEADER.as_bytes(),
            annotation.upstream.as_bytes(),
        );
        if let Some(rtt) = annotation.rtt_ms {
            out.extend_from_slice(route::RTT_HEADER.as_bytes());
            // Writing into a Vec cannot fail.
            let _ = write!(out, ": {rtt:.2}\r\n");
        }
    }
    if framing == Framing::UntilClose {
        // The caller learns where the body ends the same way.
        put_header(&mut out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    ResponseParsed::Final(ResponseHead {
        len,
        status,
        framing,
        reusable,
        connect_failure,
        out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(raw: &str, head_method: bool) -> ResponseParsed {
        let annotation = Annotation {
            upstream: "node-a/echo-1",
            rtt_ms: Some(0.0),
        };
        parse_response(raw.as_bytes(), head_method, Some(&annotation))
    }

    fn final_head(raw: &str, head_method: bool) -> ResponseHead {
        match response(raw, head_method) {
            ResponseParsed::Final(head) => head,
            ResponseParsed::Invalid(why) => panic!("invalid ({why}): {raw:?}"),
            _ => panic!("not final: {raw:?}"),
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
                false,
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                false,
                Framing::UntilClose,
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Framing::UntilClose, false),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                true,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                false,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
                false,
                Framing::Length(5),
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Framing::Length(5),
                false,
            ),
        ];
        for (raw, head_method, framing, reusable) in cases {
            let head = final_head(raw, head_method);
            assert_eq!(
                (head.framing, head.reusable),
                (framing, reusable),
                "{raw:?}"
            );
            assert_eq!(head.len, raw.len());
        }
    }

    #[test]
    fn the_caller_gets_the_head_without_hop_by_hop_headers_and_with_the_upstream() {
        let head = final_head("HTTP/1.1 200 OK\r\nX-Mixed-Case: 1\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nx-gossamer-upstream: forged\r\n\r\n", false);
        let out = String::from_utf8(head.out).expect("text");
        assert_eq!(out, "HTTP/1.1 200 OK\r\nX-Mixed-Case: 1\r\nTransfer-Encoding: chunked\r\nx-gossamer-upstream: node-a/echo-1\r\nx-gossamer-rtt-ms: 0.00\r\n\r\n");
        let until_close = final_head("HTTP/1.1 200 OK\r\n\r\n", false);
        assert!(String::from_utf8(until_close.out)
            .expect("text")
            .ends_with("connection: close\r\n\r\n"));
    }

    #[test]
    fn bad_responses_are_refused_with_a_reason() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(
                matches!(response(raw, false), ResponseParsed::Invalid(_)),
                "{raw:?}"
            );
        }
        assert!(matches!(
            response("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false),
            ResponseParsed::Informational { len: 40 }
        ));
        assert!(matches!(
            response("HTTP/1.1 200 OK\r\nContent-", false),
            ResponseParsed::Partial
        ));
    }

    proptest::proptest! {
        /// Whatever an instance or a far sidecar sends, the parser answers
        /// without panicking, and a head it accepts is never longer than
        /// what it was given.
        #[test]
        fn answers_of_any_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let annotation = Annotation { upstream: "n/i", rtt_ms: None };
            for head_method in [false, true] {
                if let ResponseParsed::Final(head) = parse_response(&bytes, head_method, Some(&annotation)) {
                    proptest::prop_assert!(head.len <= bytes.len());
                }
            }
        }
    }
}
