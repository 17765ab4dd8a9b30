//! Bad input to the admin API: malformed JSON, wrong types, huge bodies,
//! invalid names, unknown paths and wrong methods always get a 4xx with a
//! JSON `error` and `hint`, never a 500, and leave the agent serving.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{eventually, http_get, http_request, wait_alive, AgentProc, Spec};
use mesh_proto::api::{ErrorBody, INDEX_HEADER};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

/// Sends one request and checks the answer is `status` with a JSON error
/// body that has a non-empty `error` and `hint`; returns the error text.
async fn expect_error(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: impl Into<Vec<u8>>,
    status: u16,
) -> String {
    let what = format!("{method} {path}");
    let (got, headers, text) = http_request(
        addr,
        method,
        path,
        &[("content-type", "application/json")],
        body.into(),
    )
    .await
    .unwrap_or_else(|| panic!("{what}: no answer"));
    assert_eq!(got, status, "{what}: {text}");
    assert_eq!(
        headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{what}"
    );
    assert!(
        headers.contains_key(INDEX_HEADER),
        "{what}: no {INDEX_HEADER}"
    );
    let error: ErrorBody = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: the body is not {{error, hint}} ({e}): {text}"));
    assert!(!error.error.is_empty(), "{what}: empty error");
    assert!(!error.hint.is_empty(), "{what}: empty hint");
    error.error
}

async fn expect_ok(addr: SocketAddr, method: &str, path: &str, body: impl Into<Vec<u8>>) -> String {
    let (status, _, text) = http_request(
        addr,
        method,
        path,
        &[("content-type", "application/json")],
        body.into(),
    )
    .await
    .unwrap_or_else(|| panic!("{method} {path}: no answer"));
    assert_eq!(status, 200, "{method} {path}: {text}");
    text
}

/// Writes raw bytes on a fresh connection and returns what came back (up
/// to the first 64 KiB, or until the agent closes or goes quiet).
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The agent may answer and close before it has read everything: a
    // failed write is part of what is being tested, not an error here.
    let _ = stream.write_all(bytes).await;
    let mut answer = vec![0u8; 64 * 1024];
    let mut filled = 0;
    while filled < answer.len() {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer[filled..])).await
        {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => filled += n,
        }
    }
    String::from_utf8_lossy(&answer[..filled]).into_owned()
}

/// The status code of a raw HTTP/1.1 answer.
fn raw_status(answer: &str) -> Option<u16> {
    answer.split_whitespace().nth(1)?.parse().ok()
}

async fn assert_healthy(agent: &AgentProc) {
    let health = agent.client().health().await.expect("agent still answers");
    assert!(health.ready);
}

#[tokio::test]
async fn malformed_and_mistyped_definitions_get_400_with_a_hint() {
    let agent = AgentProc::start(Spec::new("bad-def")).await;
    let addr = agent.listeners.admin;
    let put = "/v1/services/billing";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", b"".to_vec()),
        ("truncated JSON", br#"{"name": "billing", "version": "#.to_vec()),
        ("not JSON", b"name=billing".to_vec()),
        ("invalid UTF-8", vec![b'{', b'"', 0xff, 0xfe, b'"', b'}']),
        ("an array", br#"["billing"]"#.to_vec()),
        ("a string", br#""billing""#.to_vec()),
        ("null", b"null".to_vec()),
        ("port as text", json!({"port": "eighty"}).to_string().into()),
        ("port too large", json!({"port": 70000}).to_string().into()),
        ("negative port", json!({"port": -1}).to_string().into()),
        ("version as number", json!({"version": 2}).to_string().into()),
        ("endpoints as list", json!({"endpoints": ["x"]}).to_string().into()),
        (
            "negative hard RTT",
            json!({"requirements": {"hard_rtt_ms": -5}})
                .to_string()
                .into(),
        ),
        (
            "RTT as float",
            json!({"requirements": {"soft_rtt_ms": 1.5}})
                .to_string()
                .into(),
        ),
        (
            "unknown requirement",
            json!({"requirements": {"latency": 5}}).to_string().into(),
        ),
        ("unknown field", json!({"colour": "red"}).to_string().into()),
        (
            "name differs from the path",
            json!({"name": "ledger"}).to_string().into(),
        ),
        (
            "soft above hard",
            json!({"requirements": {"soft_rtt_ms": 50, "hard_rtt_ms": 10}})
                .to_string()
                .into(),
        ),
        (
            "a field longer than 2048",
            json!({"version": "v".repeat(5000)}).to_string().into(),
        ),
        (
            "too many endpoints",
            json!({"endpoints": (0..100).map(|i| (format!("e{i}"), "http://x")).collect::<std::collections::BTreeMap<_, _>>()})
                .to_string()
                .into(),
        ),
        (
            "a reserved endpoint name",
            json!({"endpoints": {"gossamer.ext.host_port": "1"}})
                .to_string()
                .into(),
        ),
        (
            "a repository without a URL",
            json!({"repository": {"url": " "}}).to_string().into(),
        ),
        (
            "an unknown repository field",
            json!({"repository": {"url": "https://x", "branch": "main"}})
                .to_string()
                .into(),
        ),
        (
            "host port too large",
            json!({"host_port": 70000}).to_string().into(),
        ),
        ("deeply nested", {
            let mut deep = r#"{"endpoints": "#.to_owned();
            deep.push_str(&"[".repeat(100_000));
            deep.push_str(&"]".repeat(100_000));
            deep.push('}');
            deep.into_bytes()
        }),
    ];
    for (what, body) in cases {
        let error = expect_error(addr, "PUT", put, body, 400).await;
        eprintln!("{what}: {error}");
    }
    // Nothing of that was stored.
    expect_error(addr, "GET", put, "", 404).await;
    // The body may omit the name: the path gives it.
    let stored = expect_ok(addr, "PUT", put, json!({"version": "1"}).to_string()).await;
    assert!(stored.contains("\"name\": \"billing\""), "{stored}");
    assert_healthy(&agent).await;
}

#[tokio::test]
async fn bad_registrations_get_400_and_a_taken_id_409() {
    let agent = AgentProc::start(Spec::new("bad-reg")).await;
    let other = AgentProc::start(Spec::new("bad-reg-other").join(&agent)).await;
    wait_alive(
        &[&agent, &other],
        &["bad-reg", "bad-reg-other"],
        Duration::from_secs(20),
    )
    .await;
    let addr = agent.listeners.admin;
    let cases: Vec<(&str, serde_json::Value)> = vec![
        ("no service", json!({"port": 8080})),
        ("no port or address", json!({"service": "orders"})),
        ("port 0", json!({"service": "orders", "port": 0})),
        (
            "port too large",
            json!({"service": "orders", "port": 65536}),
        ),
        ("port as text", json!({"service": "orders", "port": "8080"})),
        ("service as number", json!({"service": 7, "port": 8080})),
        (
            "invalid service name",
            json!({"service": "Orders!", "port": 8080}),
        ),
        (
            "address without port",
            json!({"service": "orders", "address": "127.0.0.1"}),
        ),
        (
            "address port 0",
            json!({"service": "orders", "address": "127.0.0.1:0"}),
        ),
        (
            "address as hostname",
            json!({"service": "orders", "address": "db.internal:5432"}),
        ),
        (
            "id with a space",
            json!({"service": "orders", "port": 8080, "id": "a b"}),
        ),
        (
            "id with a slash",
            json!({"service": "orders", "port": 8080, "id": "../x"}),
        ),
        (
            "empty id",
            json!({"service": "orders", "port": 8080, "id": ""}),
        ),
        (
            "dots as id",
            json!({"service": "orders", "port": 8080, "id": ".."}),
        ),
        (
            "unknown health",
            json!({"service": "orders", "port": 8080, "health": "sick"}),
        ),
        (
            "tags as string",
            json!({"service": "orders", "port": 8080, "tags": "a,b"}),
        ),
        (
            "too many tags",
            json!({"service": "orders", "port": 8080, "tags": vec!["t"; 65]}),
        ),
        (
            "a tag too long",
            json!({"service": "orders", "port": 8080, "tags": ["t".repeat(300)]}),
        ),
        (
            "a deployment id too long",
            json!({"service": "orders", "port": 8080, "deployment_id": "d".repeat(300)}),
        ),
        (
            "unknown field",
            json!({"service": "orders", "port": 8080, "weight": 3}),
        ),
    ];
    for (what, body) in cases {
        let error = expect_error(addr, "PUT", "/v1/instances", body.to_string(), 400).await;
        eprintln!("{what}: {error}");
    }
    expect_error(addr, "PUT", "/v1/instances", "{", 400).await;
    expect_error(addr, "PUT", "/v1/instances", "", 400).await;

    // An instance id another node owns cannot be taken over.
    let taken = json!({"service": "orders", "port": 8081, "id": "orders-shared"}).to_string();
    expect_ok(other.listeners.admin, "PUT", "/v1/instances", taken.clone()).await;
    eventually(
        "the other node's instance to arrive",
        Duration::from_secs(20),
        || async {
            let view = agent
                .client()
                .instances("orders", &Default::default())
                .await
                .ok()?;
            (view.eligible.len() + view.ineligible.len() == 1).then_some(())
        },
    )
    .await;
    let error = expect_error(addr, "PUT", "/v1/instances", taken, 409).await;
    assert!(error.contains("bad-reg-other"), "{error}");

    // Deregistration: bad ids 400, unknown or foreign ids 404.
    expect_error(addr, "DELETE", "/v1/instances/a%20b", "", 400).await;
    expect_error(
        addr,
        "DELETE",
        &format!("/v1/instances/{}", "i".repeat(200)),
        "",
        400,
    )
    .await;
    expect_error(addr, "DELETE", "/v1/instances/no-such-instance", "", 404).await;
    expect_error(addr, "DELETE", "/v1/instances/orders-shared", "", 404).await;

    // Nothing was registered on this node by any of it.
    let view = agent
        .client()
        .instances("orders", &Default::default())
        .await
        .expect("instances");
    assert!(view
        .eligible
        .iter()
        .chain(view.ineligible.iter())
        .all(|i| i.instance.node.as_str() == "bad-reg-other"));
    assert_healthy(&agent).await;
}

#[tokio::test]
async fn bodies_over_a_mebibyte_get_413() {
    let agent = AgentProc::start(Spec::new("big-body")).await;
    let addr = agent.listeners.admin;
    // Valid JSON, just too large: with a Content-Length.
    let big = json!({"version": "v".repeat(2 * MIB)}).to_string();
    expect_error(addr, "PUT", "/v1/services/big", big.clone(), 413).await;
    let big_instance =
        json!({"service": "big", "port": 1, "tags": ["t".repeat(2 * MIB)]}).to_string();
    expect_error(addr, "PUT", "/v1/instances", big_instance, 413).await;

    // The same, chunked (no Content-Length), on a raw connection.
    let mut request = b"PUT /v1/services/big HTTP/1.1\r\nhost: admin\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for chunk in big.as_bytes().chunks(64 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(addr, &request).await;
    assert_eq!(raw_status(&answer), Some(413), "{answer}");
    assert!(answer.contains("\"hint\""), "{answer}");

    // Just under the limit is read (and refused for its content, not its size).
    let under = json!({"version": "v".repeat(MIB - 100)}).to_string();
    assert!(under.len() < MIB);
    expect_error(addr, "PUT", "/v1/services/big", under, 400).await;
    expect_error(addr, "GET", "/v1/services/big", "", 404).await;
    assert_healthy(&agent).await;
}

#[tokio::test]
async fn invalid_names_unknown_paths_and_wrong_methods_get_4xx() {
    let agent = AgentProc::start(Spec::new("bad-path")).await;
    let addr = agent.listeners.admin;
    let long = "a".repeat(64);
    let bad_names = [
        "Billing", "-billing", "billing-", "bil.ling", "bil_ling", "%20x", &long,
    ];
    for name in bad_names {
        for (method, suffix) in [
            ("GET", ""),
            ("PUT", ""),
            ("DELETE", ""),
            ("GET", "/instances"),
        ] {
            let path = format!("/v1/services/{name}{suffix}");
            let error = expect_error(addr, method, &path, "{}", 400).await;
            assert!(error.contains("service name"), "{method} {path}: {error}");
        }
    }

    // Unknown names.
    expect_error(addr, "GET", "/v1/services/unknown", "", 404).await;
    expect_error(addr, "DELETE", "/v1/services/unknown", "", 404).await;

    // Unknown paths.
    for path in [
        "/",
        "/v2/services",
        "/v1",
        "/v1/",
        "/v1/nope",
        "/v1/services/x/y",
        "/v1/services/x/instances/y",
        "/v1/instances/x/y",
        "/metrics",
        "/v1/health/../nodes",
    ] {
        expect_error(addr, "GET", path, "", 404).await;
    }

    // Wrong methods on known paths: 405 with Allow.
    for (method, path, allow) in [
        ("POST", "/v1/health", "GET"),
        ("DELETE", "/v1/nodes", "GET"),
        ("PUT", "/v1/services", "GET"),
        ("POST", "/v1/services/billing", "GET, PUT, DELETE"),
        ("PATCH", "/v1/services/billing", "GET, PUT, DELETE"),
        ("DELETE", "/v1/services/billing/instances", "GET"),
        ("GET", "/v1/instances", "PUT"),
        ("POST", "/v1/instances", "PUT"),
        ("GET", "/v1/instances/x", "DELETE"),
        ("PUT", "/v1/instances/x", "DELETE"),
    ] {
        let (status, headers, text) = http_request(addr, method, path, &[], Vec::new())
            .await
            .expect("answer");
        assert_eq!(status, 405, "{method} {path}: {text}");
        assert_eq!(
            headers
                .get(http::header::ALLOW)
                .and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
        expect_error(addr, method, path, "", 405).await;
    }

    // Bad query parameters.
    for query in [
        "index=abc",
        "index=-1",
        "index=99999999999999999999999",
        "wait=abc",
        "wait=5h",
        "wait=-5s",
        "wait=99999999999999999999999s",
    ] {
        expect_error(addr, "GET", &format!("/v1/services?{query}"), "", 400).await;
    }
    for query in ["hard_rtt_ms=-1", "soft_rtt_ms=x", "hard_rtt_ms=4294967296"] {
        let path = format!("/v1/services/billing/instances?{query}");
        expect_error(addr, "GET", &path, "", 400).await;
    }
    // A huge wait is capped, not refused: with the current index the query
    // is held (not answered at once, not a 400), and a change wakes it.
    let (status, headers, _) = http_get(addr, "/v1/services", &[]).await.expect("answer");
    assert_eq!(status, 200);
    let index: u64 = headers
        .get(INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("index header");
    let path = format!("/v1/services?index={index}&wait=100000m");
    let held = tokio::spawn(async move { http_get(addr, &path, &[]).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !held.is_finished(),
        "a blocking query with the current index and a huge wait answered at once: {:?}",
        held.await
    );
    expect_ok(
        addr,
        "PUT",
        "/v1/services/wake-up",
        json!({"version": "1"}).to_string(),
    )
    .await;
    let (status, headers, body) = tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the change wakes the held query")
        .expect("task")
        .expect("answer");
    assert_eq!(status, 200, "{body}");
    let woke_at: u64 = headers
        .get(INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("index header");
    assert!(woke_at > index, "woke at {woke_at}, asked past {index}");
    assert!(body.contains("wake-up"), "{body}");

    // Garbage that is not HTTP at all: refused, and the agent keeps serving.
    let answer = raw_exchange(addr, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n").await;
    assert!(
        answer.is_empty() || raw_status(&answer).is_some_and(|s| (400..500).contains(&s)),
        "{answer}"
    );
    let answer = raw_exchange(
        addr,
        format!(
            "GET /v1/health HTTP/1.1\r\nx-long: {}\r\n\r\n",
            "h".repeat(MIB)
        )
        .as_bytes(),
    )
    .await;
    assert!(
        answer.is_empty() || raw_status(&answer).is_some_and(|s| (400..500).contains(&s)),
        "{answer}"
    );
    assert_healthy(&agent).await;
}
