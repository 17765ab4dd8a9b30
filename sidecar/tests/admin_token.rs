//! `--admin-token`: writes need the bearer token, reads do not, and the CLI
//! sends it from GOSSAMER_ADMIN_TOKEN.

mod common;

use std::time::Duration;

use common::{http_request, run_bounded, AgentProc, Spec};

#[tokio::test]
async fn writes_need_the_token_reads_do_not_and_the_cli_sends_it() {
    let agent = AgentProc::start(Spec::new("token").arg("--admin-token").arg("s3cret")).await;
    let admin = agent.listeners.admin;

    // Reads stay open: probes and dashboards hold no secret.
    let (status, _, _) = http_request(admin, "GET", "/v1/health", &[], Vec::new())
        .await
        .expect("health");
    assert_eq!(status, 200);

    // A write without the token, or with another, is refused with JSON.
    let body = r#"{"service":"web","port":8080}"#;
    for auth in [None, Some("Bearer wrong")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let (status, _, answer) =
            http_request(admin, "PUT", "/v1/instances", &headers, body.into())
                .await
                .expect("answer");
        assert_eq!(status, 401, "{answer}");
        let json: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
        assert!(
            json["hint"]
                .as_str()
                .is_some_and(|h| h.contains("GOSSAMER_ADMIN_TOKEN")),
            "{json}"
        );
    }
    let (status, _, answer) = http_request(
        admin,
        "PUT",
        "/v1/instances",
        &[("authorization", "Bearer s3cret")],
        body.into(),
    )
    .await
    .expect("answer");
    assert_eq!(status, 200, "{answer}");

    // The CLI: refused without GOSSAMER_ADMIN_TOKEN, accepted with it.
    let url = format!("http://{admin}");
    let register = ["--agent", url.as_str(), "register", "api", "--port", "9090"];
    let refused = run_bounded(
        common::gossamer().args(register),
        Duration::from_secs(30),
        "gossamer register without the token",
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("token"), "{stderr}");
    let accepted = run_bounded(
        common::gossamer()
            .args(register)
            .env("GOSSAMER_ADMIN_TOKEN", "s3cret"),
        Duration::from_secs(30),
        "gossamer register with the token",
    );
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
}
