//! Prometheus's own linter accepts a live scrape: HELP on every metric,
//! `process_*` metrics present.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{echo_service, register_port, AgentProc, Spec};

#[tokio::test]
async fn promtool_accepts_a_live_scrape() {
    let agent = AgentProc::start(Spec::new("lint").with_metrics()).await;
    let (port, _echo) = echo_service("echo@lint").await;
    register_port(&agent, "echo", port).await;
    for service in ["echo", "nobody-registered-this"] {
        common::http_get(
            agent.listeners.proxy,
            "/",
            &[("x-gossamer-service", service)],
        )
        .await
        .expect("call through the proxy");
    }
    let text = agent.metrics_text().await;
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
    ] {
        assert!(
            text.contains(&format!("\n{name} ")),
            "{name} missing from the scrape"
        );
    }
    let file = agent.data_dir.join("scrape.prom");
    std::fs::write(&file, &text).expect("write scrape");
    let promtool = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("promtool is not installed: apt-get install -y prometheus (.ci/run does)")
        });
    let output = common::run_bounded(
        // promtool reads the scrape on stdin; run_bounded gives it none.
        Command::new("sh").arg("-c").arg(format!(
            "'{}' check metrics < '{}'",
            promtool.display(),
            file.display()
        )),
        Duration::from_secs(30),
        "promtool check metrics",
    );
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && findings.trim().is_empty(),
        "promtool check metrics found:\n{findings}"
    );
}
