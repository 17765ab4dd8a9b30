//! The proxy's own answers when no instance answered: the last failure
//! explained (502, naming the upstream), or why nothing could be picked
//! (503 with the selection's reason and what to do).

use client::select::SelectError;
use http::{HeaderValue, Response, StatusCode};
use mesh_proto::Instance;

use super::forward::{ProxyBody, SendError};
use super::{json_error, route};
use crate::metrics;

/// The last attempt's failure, kept to explain the final answer.
pub(super) struct Failure {
    pub(super) error: SendError,
    pub(super) node: String,
    /// `node/instance`, as in `x-gossamer-upstream`.
    pub(super) upstream: String,
}

pub(super) fn failed_response(
    service: &str,
    failure: Option<Failure>,
) -> (Response<ProxyBody>, Option<String>) {
    let Some(failure) = failure else {
        return (
            json_error(
                StatusCode::BAD_GATEWAY,
                format!("upstream of {service} failed"),
                "retry",
            ),
            None,
        );
    };
    let mut response = json_error(
        StatusCode::BAD_GATEWAY,
        format!("upstream of {service} failed: {}", failure.error),
        "the instance is failing; safe requests were retried elsewhere when the budget allowed",
    );
    if let Ok(value) = HeaderValue::from_str(&failure.upstream) {
        response.headers_mut().insert(route::UPSTREAM_HEADER, value);
    }
    (response, Some(failure.node))
}

pub(super) fn no_upstream(
    service: &str,
    live: &[&Instance],
    error: SelectError,
    last_failure: Option<Failure>,
) -> Response<ProxyBody> {
    if last_failure.is_some() {
        return failed_response(service, last_failure).0;
    }
    if matches!(error, SelectError::NoneWithinHardRtt { .. }) {
        ::metrics::counter!(metrics::RTT_REJECTIONS, "service" => service.to_owned()).increment(1);
    }
    let error_text = if live.is_empty() {
        format!("no instance of {service:?} is registered on any live node")
    } else {
        format!("{service}: {}", error.message())
    };
    let hint = if live.is_empty() {
        "register one with `gossamer register NAME --port P` or PUT /v1/instances, then retry"
            .to_owned()
    } else {
        error.hint().to_owned()
    };
    json_error(StatusCode::SERVICE_UNAVAILABLE, error_text, hint)
}
