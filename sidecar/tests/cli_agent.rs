//! `gossamer call` goes through the proxy of the agent `--agent` names, and
//! logs written to a file carry no colour codes (text) or are JSON lines.

mod common;

use std::time::Duration;

use common::{echo_service, register_port, run_bounded, AgentProc, Spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_uses_the_proxy_of_the_agent_named_by_agent() {
    let agent = AgentProc::start(Spec::new("callagent")).await;
    let (port, _echo) = echo_service("echo@callagent").await;
    register_port(&agent, "echo", port).await;
    let admin = format!("http://{}", agent.listeners.admin);
    let output = tokio::task::spawn_blocking(move || {
        run_bounded(
            common::gossamer().args(["--agent", &admin, "call", "echo", "/hello"]),
            Duration::from_secs(30),
            "gossamer call",
        )
    })
    .await
    .expect("call task");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains("callagent/"),
        "answered through callagent's proxy: {stdout}"
    );
    // Its log went to a file: no ANSI colour codes.
    assert!(
        !agent.log().contains('\u{1b}'),
        "colour codes in a log file"
    );
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    let agent = AgentProc::start(Spec::new("jsonlog").env("GOSSAMER_LOG_FORMAT", "json")).await;
    let log = agent.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the agent logged nothing");
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(value.get("level").is_some(), "{line}");
    }
}
