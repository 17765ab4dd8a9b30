//! Route: which service a proxied request is for, and what the caller asks
//! of it (RTT requirements, timeout, whether it may be retried).

use std::time::Duration;

use client::select::Requirements;
use http::{HeaderMap, Method, Uri};
use mesh_proto::names::validate_service_name;

/// Header naming the service when the Host header cannot.
pub const SERVICE_HEADER: &str = "x-gossamer-service";
/// Caller's hard RTT requirement (ms).
pub const HARD_RTT_HEADER: &str = "x-gossamer-hard-rtt-ms";
/// Caller's soft RTT requirement (ms).
pub const SOFT_RTT_HEADER: &str = "x-gossamer-soft-rtt-ms";
/// Caller's timeout (ms).
pub const TIMEOUT_HEADER: &str = "x-gossamer-timeout-ms";
/// Response header naming the upstream (node/instance).
pub const UPSTREAM_HEADER: &str = "x-gossamer-upstream";
/// Response header with the RTT to the upstream's node (ms).
pub const RTT_HEADER: &str = "x-gossamer-rtt-ms";
/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest timeout a caller may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// What the proxy needs to know about a request before picking an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Target service.
    pub service: String,
    /// Caller's requirements (the definition's may be stricter).
    pub requirements: Requirements,
    /// Give up (504) after this long without response headers.
    pub timeout: Duration,
    /// With a timeout the caller set (`x-gossamer-timeout-ms`), the answer's
    /// body is cut once it is silent for that long; the default timeout
    /// leaves long-lived streams alone.
    pub body_idle: Option<Duration>,
    /// Safe to send again on another instance if the connection fails.
    pub retryable: bool,
}

/// A request the proxy cannot route, with the reason and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// What is wrong.
    pub error: String,
    /// What to do.
    pub hint: String,
}

fn route_error(error: impl Into<String>, hint: impl Into<String>) -> RouteError {
    RouteError {
        error: error.into(),
        hint: hint.into(),
    }
}

/// Reads the route from the request's method, URI (an HTTP/2 request names
/// its service in `:authority`, not Host) and headers.
pub fn route(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Route, RouteError> {
    // Two Host headers could route by one and reach the instance with both
    // (request smuggling): refuse the request instead of choosing.
    if headers.get_all(http::header::HOST).iter().count() > 1 {
        return Err(route_error(
            "the request has several Host headers",
            "send exactly one Host header",
        ));
    }
    let service = service_name(uri, headers)?;
    let requirements = Requirements {
        hard_rtt_ms: millis_header(headers, HARD_RTT_HEADER)?,
        soft_rtt_ms: millis_header(headers, SOFT_RTT_HEADER)?,
    };
    let caller_timeout = millis_header(headers, TIMEOUT_HEADER)?;
    let timeout = match caller_timeout.or_else(|| grpc_timeout_ms(headers)) {
        Some(0) => {
            return Err(route_error(
                format!("{TIMEOUT_HEADER} is 0"),
                "pass a timeout of at least 1 ms",
            ))
        }
        Some(ms) => Duration::from_millis(u64::from(ms)).min(MAX_TIMEOUT),
        None => DEFAULT_TIMEOUT,
    };
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let retryable = safe || headers.contains_key("idempotency-key");
    Ok(Route {
        service,
        requirements,
        timeout,
        body_idle: caller_timeout.map(|ms| Duration::from_millis(u64::from(ms)).min(MAX_TIMEOUT)),
        retryable,
    })
}

/// A gRPC deadline (`grpc-timeout: 250m`), in whole milliseconds, at least 1.
fn grpc_timeout_ms(headers: &HeaderMap) -> Option<u32> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    let ms = match unit {
        "H" => amount.saturating_mul(3_600_000),
        "M" => amount.saturating_mul(60_000),
        "S" => amount.saturating_mul(1_000),
        "m" => amount,
        "u" => amount / 1_000,
        "n" => amount / 1_000_000,
        _ => return None,
    };
    Some(u32::try_from(ms.max(1)).unwrap_or(u32::MAX))
}

fn service_name(uri: &Uri, headers: &HeaderMap) -> Result<String, RouteError> {
    let name = if let Some(value) = headers.get(SERVICE_HEADER) {
        value
            .to_str()
            .map_err(|_| {
                route_error(
                    format!("{SERVICE_HEADER} is not text"),
                    "send the service name as plain ASCII",
                )
            })?
            .trim()
            .to_owned()
    } else {
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .ok_or_else(|| {
                route_error(
                    "the request has no Host header naming a service",
                    "call http://<service>.localhost:<proxy-port>/..., or set x-gossamer-service",
                )
            })?;
        return service_from_host(host);
    };
    checked_name(name)
}

/// The service a Host header names (`<service>.localhost`, with or
/// without a port), checked as a service name.
pub fn service_from_host(host: &str) -> Result<String, RouteError> {
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let host = host.trim_end_matches('.');
    let name = match strip_suffix_ignoring_case(host, ".localhost") {
        Some(prefix) => prefix
            .rsplit('.')
            .next()
            .unwrap_or(prefix)
            .to_ascii_lowercase(),
        None => {
            return Err(route_error(
                format!("Host {host:?} does not name a service"),
                "call http://<service>.localhost:<proxy-port>/..., or set x-gossamer-service",
            ))
        }
    };
    checked_name(name)
}

/// `text` without `suffix`, compared ignoring ASCII case (no lowercased
/// copy of a Host per request).
fn strip_suffix_ignoring_case<'t>(text: &'t str, suffix: &str) -> Option<&'t str> {
    let at = text.len().checked_sub(suffix.len())?;
    let (prefix, tail) = (text.get(..at)?, text.get(at..)?);
    tail.eq_ignore_ascii_case(suffix).then_some(prefix)
}

fn checked_name(name: String) -> Result<String, RouteError> {
    validate_service_name(&name).map_err(|e| {
        route_error(
            e.to_string(),
            "service names are DNS labels, for example billing-api",
        )
    })?;
    Ok(name)
}

fn millis_header(headers: &HeaderMap, name: &str) -> Result<Option<u32>, RouteError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| {
            route_error(
                format!("{name} is not a whole number of milliseconds"),
                format!("send {name}: 20 for 20 ms"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn several_host_headers_are_refused() {
        let mut map = headers(&[("host", "echo.localhost")]);
        map.append("host", HeaderValue::from_static("admin.localhost"));
        let error = route(&Method::GET, &Uri::default(), &map).expect_err("two Host headers");
        assert!(error.error.contains("several Host"), "{error:?}");
    }

    #[test]
    fn service_comes_from_the_host_label_or_the_header() {
        let r = route(
            &Method::GET,
            &Uri::default(),
            &headers(&[("host", "echo.localhost:4201")]),
        )
        .expect("routes");
        assert_eq!(r.service, "echo");
        assert!(r.retryable);
        let r = route(
            &Method::POST,
            &Uri::default(),
            &headers(&[
                ("host", "127.0.0.1:4201"),
                ("x-gossamer-service", "billing"),
            ]),
        )
        .expect("routes");
        assert_eq!(r.service, "billing");
        assert!(!r.retryable);
        assert!(route(
            &Method::GET,
            &Uri::default(),
            &headers(&[("host", "127.0.0.1:4201")])
        )
        .is_err());
        assert!(route(&Method::GET, &Uri::default(), &HeaderMap::new()).is_err());
        assert!(route(
            &Method::GET,
            &Uri::default(),
            &headers(&[("host", "Bad_Name.localhost")])
        )
        .is_err());
    }

    #[test]
    fn the_host_is_read_without_regard_to_case_or_a_trailing_dot() {
        for host in [
            "Echo.LocalHost:4201",
            "v2.ECHO.localhost.",
            "echo.LOCALHOST",
        ] {
            assert_eq!(service_from_host(host).expect(host), "echo", "{host}");
        }
        // Not under .localhost, no label, not a DNS label, and multi-byte
        // characters where the suffix would start: refused, never a panic.
        for host in [
            "echo.example",
            "localhost",
            ".localhost",
            "éécho.localhost",
            "éééééééééé",
        ] {
            assert!(service_from_host(host).is_err(), "{host}");
        }
    }

    #[test]
    fn an_http2_request_names_its_service_in_the_authority() {
        let uri: Uri = "http://billing.localhost:4201/pay".parse().expect("uri");
        let r = route(&Method::POST, &uri, &HeaderMap::new()).expect("routes");
        assert_eq!(r.service, "billing");
    }

    #[test]
    fn a_grpc_deadline_bounds_the_wait_unless_the_caller_set_one() {
        let r = route(
            &Method::POST,
            &Uri::default(),
            &headers(&[("host", "echo.localhost"), ("grpc-timeout", "250m")]),
        )
        .expect("routes");
        assert_eq!(r.timeout, Duration::from_millis(250));
        let r = route(
            &Method::POST,
            &Uri::default(),
            &headers(&[("host", "echo.localhost"), ("grpc-timeout", "2S")]),
        )
        .expect("routes");
        assert_eq!(r.timeout, Duration::from_secs(2));
        let r = route(
            &Method::POST,
            &Uri::default(),
            &headers(&[("host", "echo.localhost"), ("grpc-timeout", "5n")]),
        )
        .expect("routes");
        assert_eq!(r.timeout, Duration::from_millis(1));
        let r = route(
            &Method::POST,
            &Uri::default(),
            &headers(&[
                ("host", "echo.localhost"),
                ("grpc-timeout", "2S"),
                ("x-gossamer-timeout-ms", "50"),
            ]),
        )
        .expect("routes");
        assert_eq!(r.timeout, Duration::from_millis(50));
        let r = route(
            &Method::POST,
            &Uri::default(),
            &headers(&[("host", "echo.localhost"), ("grpc-timeout", "soon")]),
        )
        .expect("routes");
        assert_eq!(r.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn caller_requirements_and_timeout_are_parsed_or_refused() {
        let r = route(
            &Method::POST,
            &Uri::default(),
            &headers(&[
                ("host", "echo.localhost"),
                ("x-gossamer-hard-rtt-ms", "20"),
                ("x-gossamer-soft-rtt-ms", "5"),
                ("x-gossamer-timeout-ms", "250"),
                ("idempotency-key", "abc"),
            ]),
        )
        .expect("routes");
        assert_eq!(r.requirements.hard_rtt_ms, Some(20));
        assert_eq!(r.requirements.soft_rtt_ms, Some(5));
        assert_eq!(r.timeout, Duration::from_millis(250));
        assert!(r.retryable);
        assert!(route(
            &Method::GET,
            &Uri::default(),
            &headers(&[("host", "echo.localhost"), ("x-gossamer-hard-rtt-ms", "-1")])
        )
        .is_err());
        assert!(route(
            &Method::GET,
            &Uri::default(),
            &headers(&[("host", "echo.localhost"), ("x-gossamer-timeout-ms", "0")])
        )
        .is_err());
    }
}
