//! Writes are acknowledged only once they are durable on this node: a full
//! disk refuses them (507, `/v1/health` degraded, nothing applied), and an
//! acknowledged definition write or delete survives a crash right after.

mod common;

use std::time::Duration;

use common::{eventually, http_get, http_request};
use sidecar::agent::RunningAgent;
use sidecar::config::AgentConfig;

fn config(name: &str) -> AgentConfig {
    let mut config = sidecar::demo::local_config(name, Vec::new(), Vec::new());
    // The test restarts the agent on the same data dir.
    config.ephemeral_data_dir = false;
    config
}

async fn start(config: &AgentConfig) -> RunningAgent {
    sidecar::agent::start(config.clone())
        .await
        .expect("agent starts")
}

async fn admin(
    running: &RunningAgent,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let addr = running.agent.listeners.admin;
    let (status, _, text) = http_request(
        addr,
        method,
        path,
        &[("host", "localhost"), ("content-type", "application/json")],
        body.as_bytes().to_vec(),
    )
    .await
    .expect("the admin API answers");
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_says_so() {
    let config = config("full-disk");
    let agent = start(&config).await;
    agent.agent.data.fail_writes_for_test(true);

    let (status, body) = admin(
        &agent,
        "PUT",
        "/v1/instances",
        r#"{"service": "web", "port": 8080}"#,
    )
    .await;
    assert_eq!(status, 507, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("not saved")),
        "{body}"
    );
    assert!(
        body["hint"]
            .as_str()
            .is_some_and(|h| h.contains("--data-dir")),
        "{body}"
    );
    let (status, body) = admin(&agent, "PUT", "/v1/services/web", r#"{"version": "1"}"#).await;
    assert_eq!(status, 507, "{body}");

    let (_, health) = admin(&agent, "GET", "/v1/health", "").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("data dir")),
        "{health}"
    );
    // The refused registration is nowhere.
    let (_, instances) = admin(&agent, "GET", "/v1/services/web/instances", "").await;
    assert_eq!(
        instances["eligible"].as_array().map(Vec::len),
        Some(0),
        "{instances}"
    );

    // The disk has room again: writes are acknowledged and health recovers.
    agent.agent.data.fail_writes_for_test(false);
    let (status, body) = admin(
        &agent,
        "PUT",
        "/v1/instances",
        r#"{"service": "web", "port": 8080}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, health) = admin(&agent, "GET", "/v1/health", "").await;
    assert_eq!(health["status"], "ok", "{health}");
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&config.data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_definition_write_and_delete_survive_a_crash() {
    let config = config("crash-after-put");
    let agent = start(&config).await;
    let (status, body) = admin(&agent, "PUT", "/v1/services/kept", r#"{"version": "7"}"#).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin(&agent, "PUT", "/v1/services/gone", r#"{"version": "1"}"#).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin(&agent, "DELETE", "/v1/services/gone", "").await;
    assert_eq!(status, 200, "{body}");
    // A crash at once: no stop, no periodic snapshot in between.
    agent.abort().await;

    let agent = start(&config).await;
    let addr = agent.agent.listeners.admin;
    let kept = eventually(
        "the agent answers after the restart",
        Duration::from_secs(10),
        || async move { http_get(addr, "/v1/services/kept", &[("host", "localhost")]).await },
    )
    .await;
    assert_eq!(
        kept.0, 200,
        "the acknowledged definition survived: {}",
        kept.2
    );
    assert!(kept.2.contains("\"7\""), "{}", kept.2);
    let (status, _) = admin(&agent, "GET", "/v1/services/gone", "").await;
    assert_eq!(status, 404, "the acknowledged delete survived the crash");
    agent.stop().await;
    let _ = std::fs::remove_dir_all(&config.data_dir);
}
