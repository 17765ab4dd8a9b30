//! Trace context through the mesh: W3C `traceparent`/`tracestate` continued
//! through one and two sidecars (same trace, a new span per hop, a new trace
//! when none or a malformed one came), `x-request-id` set when absent, and
//! the `--access-log` line of each proxied request. Loopback only.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{eventually, http_get, register_port, AgentProc, Spec};

const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const GIVEN_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A service that answers with the trace headers it received, as JSON.
async fn header_mirror() -> u16 {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind mirror");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(
                |request: http::Request<hyper::body::Incoming>| async move {
                    let get = |name: &str| {
                        request
                            .headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let body = serde_json::json!({
                        "traceparent": get("traceparent"),
                        "tracestate": get("tracestate"),
                        "x-request-id": get("x-request-id"),
                    });
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        bytes::Bytes::from(body.to_string()),
                    )))
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    port
}

/// What the instance received for one call through `proxy`.
async fn seen(proxy: SocketAddr, service: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let host = format!("{service}.localhost");
    let mut all = vec![("host", host.as_str())];
    all.extend_from_slice(headers);
    let (status, _, body) = http_get(proxy, "/traced/path?secret=1", &all)
        .await
        .expect("the proxy answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("the mirror answers JSON")
}

fn field<'a>(seen: &'a serde_json::Value, name: &str) -> &'a str {
    seen[name].as_str().unwrap_or_default()
}

/// (trace id, span id) of a well-formed version-00 traceparent.
fn split(traceparent: &str) -> (&str, &str) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!((parts[0], parts[3].len()), ("00", 2), "{traceparent}");
    assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{traceparent}");
    let hex = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    };
    assert!(hex(parts[1]) && hex(parts[2]), "{traceparent}");
    (parts[1], parts[2])
}

#[tokio::test]
async fn trace_context_continues_through_one_and_two_sidecars_and_each_call_is_logged() {
    let log: PathBuf = std::env::temp_dir().join(format!(
        "gossamer-access-{}-{}.log",
        std::process::id(),
        rand::random::<u32>()
    ));
    let log_arg = log.to_string_lossy().into_owned();
    let a = AgentProc::start(Spec::new("trace-a").arg("--access-log").arg(log_arg)).await;
    let b = AgentProc::start(Spec::new("trace-b").join(&a)).await;
    // `near` runs behind a (one sidecar), `far` behind b (two sidecars).
    register_port(&a, "near", header_mirror().await).await;
    register_port(&b, "far", header_mirror().await).await;
    let client = a.client();
    eventually(
        "a to see far's instance on b",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let view = client.instances("far", &Default::default()).await.ok()?;
                (!view.eligible.is_empty()).then_some(())
            }
        },
    )
    .await;
    let proxy = a.listeners.proxy;

    for service in ["near", "far"] {
        // A valid parent: same trace, a new span, tracestate kept.
        let got = seen(
            proxy,
            service,
            &[("traceparent", GIVEN), ("tracestate", "congo=t61rcWkgMzE")],
        )
        .await;
        let (trace, span) = split(field(&got, "traceparent"));
        assert_eq!(trace, GIVEN_TRACE, "{service}: {got}");
        assert_ne!(span, "00f067aa0ba902b7", "{service}: a new span id");
        assert_eq!(field(&got, "tracestate"), "congo=t61rcWkgMzE", "{service}");
        let request_id = field(&got, "x-request-id");
        assert!(
            request_id.len() == 32 && request_id.bytes().all(|c| c.is_ascii_hexdigit()),
            "{service}: x-request-id set: {got}"
        );

        // None: a new trace; a caller's x-request-id is kept.
        let got = seen(proxy, service, &[("x-request-id", "caller-42")]).await;
        let (trace, _) = split(field(&got, "traceparent"));
        assert_ne!(trace, GIVEN_TRACE);
        assert_eq!(field(&got, "x-request-id"), "caller-42", "{service}");

        // Malformed: a new trace, and its tracestate is not passed on.
        let got = seen(
            proxy,
            service,
            &[
                ("traceparent", "00-NOT-A-TRACE-01"),
                ("tracestate", "vendor=x"),
            ],
        )
        .await;
        split(field(&got, "traceparent"));
        assert!(got["tracestate"].is_null(), "{service}: {got}");
    }

    // Two calls on the same trace get different spans (each hop is new).
    let one = seen(proxy, "far", &[("traceparent", GIVEN)]).await;
    let two = seen(proxy, "far", &[("traceparent", GIVEN)]).await;
    assert_ne!(
        split(field(&one, "traceparent")).1,
        split(field(&two, "traceparent")).1
    );

    // The access log: one JSON line per proxied request, with the fields.
    let lines: Vec<serde_json::Value> =
        eventually("8 access log lines", Duration::from_secs(20), || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).ok()?;
                let lines: Vec<serde_json::Value> = text
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("each line is JSON"))
                    .collect();
                (lines.len() >= 8).then_some(lines)
            }
        })
        .await;
    assert_eq!(lines.len(), 8, "{lines:?}");
    let far = lines
        .iter()
        .find(|l| l["service"] == "far" && l["trace_id"] == GIVEN_TRACE)
        .expect("the far call with the given trace is logged");
    assert_eq!(far["node"], "trace-b", "{far}");
    assert!(
        far["instance"].as_str().is_some_and(|i| !i.is_empty()),
        "{far}"
    );
    assert_eq!(far["method"], "GET");
    assert_eq!(far["path"], "/traced/path", "the query stays out: {far}");
    assert_eq!(far["status"], 200);
    assert_eq!(far["retries"], 0);
    assert!(
        far["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{far}"
    );
    assert!(
        far["request_id"].as_str().is_some_and(|r| r.len() == 32),
        "{far}"
    );
    let time = far["time"].as_str().unwrap_or_default();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.contains('T'),
        "{time}"
    );
    let kept = lines
        .iter()
        .find(|l| l["request_id"] == "caller-42" && l["service"] == "near")
        .expect("the caller's request id is logged");
    assert_eq!(kept["node"], "trace-a");
    let _ = std::fs::remove_file(&log);
}
