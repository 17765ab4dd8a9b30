//! Header hygiene between hops: what is stripped (RFC 9110 §7.6.1) and
//! what an upgrade request keeps.

use http::header::{
    HeaderName, CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, UPGRADE,
};
use http::{HeaderMap, HeaderValue};

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), as
/// parsed names so removing them hashes no strings on the hot path.
static HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    UPGRADE,
];

/// Removes hop-by-hop headers, including those named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection are rare: parse them only when present.
    if let Some(named) = connection_named(headers) {
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn connection_named(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut values = headers.get_all(CONNECTION).iter().peekable();
    values.peek()?;
    Some(
        values
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect(),
    )
}

/// True when the request asks to switch protocols: `Connection` names
/// `upgrade` and an `Upgrade` header is present.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE)
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Strips hop-by-hop headers, except that an upgrade request keeps
/// `Connection: upgrade` and its `Upgrade` header (the next hop must see
/// them to switch protocols), and `TE: trailers` stays: gRPC servers
/// require it, and every hop of the mesh passes trailers on.
pub fn strip_for_next_hop(headers: &mut HeaderMap) {
    let upgrade = is_upgrade(headers)
        .then(|| headers.get(UPGRADE).cloned())
        .flatten();
    let trailers = headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol);
    }
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}
