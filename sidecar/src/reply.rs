//! JSON answers and errors shared by the admin API and the proxy: every error
//! a user can cause says what was wrong (`error`) and what to do (`hint`).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use mesh_proto::api::{ErrorBody, INDEX_HEADER};
use serde::Serialize;

/// A fully buffered response body.
pub type JsonResponse = Response<Full<Bytes>>;

/// A JSON answer with `status`, carrying the catalog index when given.
pub fn json<T: Serialize>(status: StatusCode, body: &T, index: Option<u64>) -> JsonResponse {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_else(|e| {
        format!("{{\"error\":\"cannot encode the answer: {e}\",\"hint\":\"report this as a bug\"}}")
            .into_bytes()
    });
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(index) = index {
        if let Ok(value) = HeaderValue::from_str(&index.to_string()) {
            response.headers_mut().insert(INDEX_HEADER, value);
        }
    }
    response
}

/// An error answer.
pub fn error(
    status: StatusCode,
    error: impl Into<String>,
    hint: impl Into<String>,
) -> JsonResponse {
    json(
        status,
        &ErrorBody {
            error: error.into(),
            hint: hint.into(),
        },
        None,
    )
}
