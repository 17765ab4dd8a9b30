//! Rejoin after a restart (issue 21, row 3): a node started without
//! `--join` (the README tour's node 1) that is stopped gracefully and
//! started again finds the members it knew, saved in its data dir; before,
//! its peer kept it down after its leave and it stayed alone: a permanent
//! split.

mod common;

use std::time::Duration;

use common::{eventually, wait_alive, AgentProc, Spec};

const CONVERGE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_seed_stopped_gracefully_and_restarted_without_join_rejoins_its_peer() {
    let mut seed = AgentProc::start(Spec::new("rejoin-seed")).await;
    let member = AgentProc::start(Spec::new("rejoin-member").join(&seed)).await;
    wait_alive(
        &[&seed, &member],
        &["rejoin-member", "rejoin-seed"],
        CONVERGE,
    )
    .await;
    // The seed keeps its peer's address in its data dir.
    let saved = seed.data_dir.join("members.json");
    let member_addr = member.listeners.quic.to_string();
    eventually("the seed to save its members", CONVERGE, || async {
        let text = std::fs::read_to_string(&saved).ok()?;
        text.contains(&member_addr).then_some(())
    })
    .await;

    // SIGTERM: the seed leaves, and its peer marks it down for good.
    let status = seed.terminate().expect("exit status");
    assert!(status.success(), "the seed did not stop cleanly: {status}");
    eventually("the member to see the seed leave", CONVERGE, || async {
        member
            .members_in("alive")
            .await
            .iter()
            .all(|id| id != "rejoin-seed")
            .then_some(())
    })
    .await;

    // Started again, with no --join (and, from port 0, another address).
    seed.restart().await;
    wait_alive(
        &[&seed, &member],
        &["rejoin-member", "rejoin-seed"],
        CONVERGE,
    )
    .await;
}

#[tokio::test]
async fn an_agent_that_cannot_join_says_so_in_its_health() {
    let seed = AgentProc::start(Spec::new("health-seed")).await;
    let member = AgentProc::start(Spec::new("health-member").join(&seed)).await;
    let outsider = AgentProc::start(
        Spec::new("health-outsider")
            .psk("another-cluster-passphrase")
            .join(&seed),
    )
    .await;
    // The outsider serves its listeners, but it is not in a cluster.
    let health = eventually("the outsider to report its problem", CONVERGE, || async {
        let health = outsider.client().health().await.ok()?;
        (health.status == "degraded").then_some(health)
    })
    .await;
    assert!(health.ready, "{health:?}");
    assert!(
        health
            .problems
            .iter()
            .any(|p| p.contains("not in a cluster") && p.contains("passphrase")),
        "{health:?}"
    );
    // A member that joined, and the seed that joined nobody, are fine.
    for agent in [&member, &seed] {
        eventually("a joined agent to be ok", CONVERGE, || async {
            let health = agent.client().health().await.ok()?;
            (health.status == "ok" && health.problems.is_empty()).then_some(())
        })
        .await;
    }
}
