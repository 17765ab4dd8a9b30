//! A node that stays down is reaped: after `--reap-after-s`, its instances
//! and node metadata leave every catalog (listings, DNS, metrics), and they
//! come back when it returns.

mod common;

use std::time::Duration;

use common::{echo_service, eventually, metric_value, wait_alive, AgentProc, Spec};

const CONVERGE: Duration = Duration::from_secs(30);

/// `(instance records, node records)` in `agent`'s catalog, from its metrics.
async fn record_counts(agent: &AgentProc) -> (f64, f64) {
    let text = agent.metrics_text().await;
    (
        metric_value(&text, "gossamer_catalog_records", &[("kind", "instance")]),
        metric_value(&text, "gossamer_catalog_records", &[("kind", "node")]),
    )
}

async fn wait_counts(agent: &AgentProc, want: (f64, f64), what: &str) {
    eventually(what, CONVERGE, || async move {
        (record_counts(agent).await == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_node_down_longer_than_the_reap_time_leaves_the_catalog_and_returns_with_its_instances() {
    let (port, _echo) = echo_service("echo@reap-b").await;
    let a = AgentProc::start(
        Spec::new("reap-a")
            .with_metrics()
            .arg("--reap-after-s")
            .arg("2"),
    )
    .await;
    let mut b = AgentProc::start(
        Spec::new("reap-b")
            .join(&a)
            .arg("--reap-after-s")
            .arg("2")
            .arg("--service")
            .arg(format!("echo={port}")),
    )
    .await;
    wait_alive(&[&a, &b], &["reap-a", "reap-b"], CONVERGE).await;
    wait_counts(
        &a,
        (1.0, 2.0),
        "a to hold b's instance and both node records",
    )
    .await;

    b.kill();
    // While b is only down its records stay (a listing hides them); after
    // the reap time they go.
    wait_counts(&a, (0.0, 1.0), "a to reap b's instance and node record").await;
    let services = a.client().services().await.expect("services");
    assert!(
        services.iter().all(|s| s.name != "echo"),
        "a reaped service with no definition is not listed: {services:?}"
    );

    b.restart().await;
    wait_counts(&a, (1.0, 2.0), "b's records back on a after it returned").await;
    let view = eventually("a to route to b's echo again", CONVERGE, || {
        let client = a.client();
        async move {
            let view = client.instances("echo", &Default::default()).await.ok()?;
            (!view.eligible.is_empty()).then_some(view)
        }
    })
    .await;
    assert_eq!(view.eligible[0].instance.node.as_str(), "reap-b");
}
