//! RTT measurement and upstream eligibility, with links of about 0, 5 and
//! 40 ms made by the agent's test-only link-delay shim.

mod common;

use std::time::Duration;

use client::select::Requirements;
use common::{delayed_trio, eventually, wait_instances_measured};
use mesh_proto::api::{Ineligible, RttSource};

#[tokio::test]
async fn measured_rtt_follows_the_configured_link_delay() {
    let trio = delayed_trio("rtt", "echo", false, (5, 40), &[]).await;
    let client = trio.a.client();
    // Several samples so the smoothed value settles.
    let (b_ms, c_ms) = eventually(
        "RTT to b and c to settle near 5 and 40 ms",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let nodes = client.nodes().await.ok()?;
                let rtt = |id: &str| {
                    nodes
                        .iter()
                        .find(|n| n.id == id && n.rtt_source == RttSource::Measured)
                        .and_then(|n| n.rtt_ms)
                };
                let (b, c) = (rtt("rtt-b")?, rtt("rtt-c")?);
                ((4.0..15.0).contains(&b) && (38.0..60.0).contains(&c)).then_some((b, c))
            }
        },
    )
    .await;
    eprintln!("measured RTT: link 5 ms -> {b_ms:.2} ms, link 40 ms -> {c_ms:.2} ms");
    let nodes = client.nodes().await.expect("nodes");
    let me = nodes.iter().find(|n| n.is_self).expect("self listed");
    assert_eq!((me.rtt_ms, me.rtt_source), (Some(0.0), RttSource::Measured));
    // Distinct loopback addresses in an all-loopback mesh: nothing to warn of.
    assert!(nodes.iter().all(|n| n.warnings.is_empty()), "{nodes:?}");

    // The CLI shows the same table.
    let output = common::gossamer()
        .args([
            "--agent",
            &format!("http://{}", trio.a.listeners.admin),
            "members",
        ])
        .output()
        .expect("run members");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("RTT_SOURCE") && text.contains("rtt-c") && text.contains("measured"),
        "{text}"
    );
    // Each peer's last heartbeat, and the warning column (empty here).
    let peer = text
        .lines()
        .find(|l| l.starts_with("rtt-c"))
        .unwrap_or_default();
    assert!(
        text.lines()
            .next()
            .is_some_and(|h| h.ends_with("LAST_HEARD  WARNING")),
        "{text}"
    );
    assert!(peer.contains("ms ago") && peer.ends_with('-'), "{text}");
}

#[tokio::test]
async fn hard_and_soft_requirements_decide_eligibility() {
    let trio = delayed_trio("elig", "echo", false, (5, 40), &[]).await;
    wait_instances_measured(&trio.a, "echo", 2).await;
    let client = trio.a.client();
    let view = eventually("c to be over hard 30 ms", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            let view = client
                .instances(
                    "echo",
                    &Requirements {
                        hard_rtt_ms: Some(30),
                        soft_rtt_ms: Some(25),
                    },
                )
                .await
                .ok()?;
            (view.eligible.len() == 1 && view.ineligible.len() == 1).then_some(view)
        }
    })
    .await;
    // 30 and 25, not 20 and 10: the 40 ms link never measures under 30,
    // the 5 ms one has measured over 10 on a loaded 2-core machine.
    assert_eq!(view.hard_rtt_ms, Some(30));
    assert_eq!(view.eligible[0].instance.node.as_str(), "elig-b");
    assert!(view.eligible[0].within_soft);
    let far = &view.ineligible[0];
    assert_eq!(far.instance.node.as_str(), "elig-c");
    match far.ineligible {
        Some(Ineligible::OverHardRtt {
            rtt_ms,
            hard_rtt_ms: 30,
        }) => assert!(rtt_ms > 30.0),
        ref other => panic!("expected over-hard-RTT, got {other:?}"),
    }

    // With hard 1 ms and no local instance, nothing qualifies, and the listing says why.
    let strict = client
        .instances(
            "echo",
            &Requirements {
                hard_rtt_ms: Some(1),
                soft_rtt_ms: None,
            },
        )
        .await
        .expect("instances");
    assert!(strict.eligible.is_empty());
    assert_eq!(strict.ineligible.len(), 2);

    // The CLI prints the same, with the reasons.
    let output = common::gossamer()
        .args([
            "--agent",
            &format!("http://{}", trio.a.listeners.admin),
            "instances",
            "echo",
            "--hard-rtt",
            "30",
            "--soft-rtt",
            "25",
        ])
        .output()
        .expect("run instances");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("over_hard_rtt") && text.contains("eligible (within soft)"),
        "{text}"
    );
}
