//! `--admin-token`: when set, every admin write (any method but GET, HEAD
//! and OPTIONS) must carry `Authorization: Bearer TOKEN`; reads (health,
//! members, the catalog, the UI) stay open so probes and dashboards need no
//! secret. Without a token the API is open, as before, and the agent warns
//! when it listens beyond loopback.

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use sha2::{Digest, Sha256};

use crate::config::AdminToken;
use crate::reply::{self, JsonResponse};

/// Whether `method` changes something (and so needs the token).
fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// None when the request may go on; else the 401 to answer.
pub fn check(
    token: Option<&AdminToken>,
    method: &Method,
    headers: &HeaderMap,
) -> Option<JsonResponse> {
    let token = token?;
    if !is_write(method) {
        return None;
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let (error, hint) = match presented {
        Some(presented) if same(presented, &token.0) => return None,
        Some(_) => (
            "the admin token is wrong",
            "send the agent's --admin-token as Authorization: Bearer TOKEN (the CLI reads GOSSAMER_ADMIN_TOKEN)",
        ),
        None => (
            "this agent requires a token for changes",
            "send Authorization: Bearer TOKEN with the agent's --admin-token (the CLI reads GOSSAMER_ADMIN_TOKEN); reads need none",
        ),
    };
    let mut response = reply::error(StatusCode::UNAUTHORIZED, error, hint);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"gossamer admin\""),
    );
    Some(response)
}

/// Compares digests, so the time taken says nothing about the token.
fn same(presented: &str, token: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(token.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header"),
        );
        headers
    }

    #[test]
    fn writes_need_the_token_and_reads_do_not() {
        let token = AdminToken("s3cret".to_owned());
        let none = HeaderMap::new();
        assert!(check(None, &Method::PUT, &none).is_none());
        assert!(check(Some(&token), &Method::GET, &none).is_none());
        let refused = check(Some(&token), &Method::PUT, &none).expect("refused");
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert!(check(Some(&token), &Method::DELETE, &with_auth("Bearer nope")).is_some());
        assert!(check(Some(&token), &Method::POST, &with_auth("Bearer s3cret")).is_none());
        assert!(check(Some(&token), &Method::POST, &with_auth("s3cret")).is_some());
    }
}
