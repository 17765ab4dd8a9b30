//! gRPC over the proxy: recognising a gRPC call, reading an instance's
//! refusal from `grpc-status`, and answering the proxy's own errors as gRPC
//! statuses so gRPC clients see a status instead of a JSON body.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// `grpc-status` UNAVAILABLE: the instance cannot serve (counts as a failure).
const UNAVAILABLE: &str = "14";

/// True when the request is a gRPC call (`content-type: application/grpc…`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// True when an instance answered with UNAVAILABLE in its headers (a
/// trailers-only response, which is how servers refuse before any message).
pub fn is_unavailable(headers: &HeaderMap) -> bool {
    headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == UNAVAILABLE.as_bytes())
}

/// Names gRPC's trailers in a `Trailer` header, so an HTTP/1.1 hop sends
/// them after the chunked body (hyper's HTTP/1.1 sends only announced
/// trailer fields). A trailers-only answer has its status in the headers
/// and needs none.
pub fn announce_trailers(headers: &mut HeaderMap) {
    if !headers.contains_key("grpc-status") {
        headers.insert(
            http::header::TRAILER,
            HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin"),
        );
    }
}

/// The gRPC status code that stands for one of the proxy's HTTP errors.
fn status_for(http: StatusCode) -> &'static str {
    match http {
        StatusCode::GATEWAY_TIMEOUT => "4", // DEADLINE_EXCEEDED
        StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => "3", // INVALID_ARGUMENT
        StatusCode::FORBIDDEN => "7",       // PERMISSION_DENIED
        StatusCode::INSUFFICIENT_STORAGE => "8", // RESOURCE_EXHAUSTED
        _ => UNAVAILABLE,
    }
}

/// Rewrites one of the proxy's own error answers as a trailers-only gRPC
/// response: HTTP 200, `grpc-status`, and the error and hint (percent
/// encoded, as the gRPC spec asks) in `grpc-message`. Other headers, such as
/// `x-gossamer-upstream`, are kept.
pub fn as_grpc_status<B>(response: Response<B>, message: &str, empty: B) -> Response<B> {
    let (mut parts, _) = response.into_parts();
    let code = status_for(parts.status);
    parts.status = StatusCode::OK;
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    parts
        .headers
        .insert("grpc-status", HeaderValue::from_static(code));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        parts.headers.insert("grpc-message", value);
    }
    Response::from_parts(parts, empty)
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII except `%`
/// passes, everything else is `%XX` per UTF-8 byte.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_errors_become_grpc_statuses_with_an_encoded_message() {
        let response = Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH_NAME, "12")
            .header("x-gossamer-upstream", "n1/a")
            .body("json")
            .expect("response");
        let grpc = as_grpc_status(response, "no instance: 100% gone é", "");
        assert_eq!(grpc.status(), StatusCode::OK);
        assert_eq!(grpc.headers()["grpc-status"], "14");
        assert_eq!(grpc.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(grpc.headers()["x-gossamer-upstream"], "n1/a");
        assert!(grpc.headers().get(CONTENT_LENGTH_NAME).is_none());
        assert_eq!(
            grpc.headers()["grpc-message"],
            "no instance: 100%25 gone %C3%A9"
        );
        assert!(grpc.body().is_empty());
    }

    const CONTENT_LENGTH_NAME: http::header::HeaderName = http::header::CONTENT_LENGTH;

    #[test]
    fn a_deadline_is_deadline_exceeded_and_unavailable_is_read_from_headers() {
        let response = Response::builder()
            .status(StatusCode::GATEWAY_TIMEOUT)
            .body(())
            .expect("response");
        let grpc = as_grpc_status(response, "late", ());
        assert_eq!(grpc.headers()["grpc-status"], "4");
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("14"));
        assert!(is_unavailable(&headers));
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert!(!is_unavailable(&headers));
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&headers));
    }
}
