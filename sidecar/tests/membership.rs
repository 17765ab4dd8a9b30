//! Membership: agents form a SWIM cluster over mutually authenticated QUIC.

mod common;

use std::time::Duration;

use mesh_proto::gossip::MemberSummary;
use mesh_proto::NodeIdentity;

use common::{cluster, eventually, metric_value, wait_alive, AgentProc, Spec};

const CONVERGE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn three_agents_join_through_one_seed_and_all_list_each_other_alive() {
    let agents = cluster("trio", 3).await;
    let refs: Vec<&AgentProc> = agents.iter().collect();
    wait_alive(&refs, &["trio-1", "trio-2", "trio-3"], CONVERGE).await;
    let nodes = agents[2].client().nodes().await.expect("nodes");
    let seed = nodes
        .iter()
        .find(|n| n.id == "trio-1")
        .expect("seed listed");
    assert_eq!(seed.address, agents[0].listeners.quic.to_string());
    assert!(seed.generation > 0);
    let health = agents[1].client().health().await.expect("health");
    assert!(health.ready);
    assert_eq!(health.members.alive, 3);
}

#[tokio::test]
async fn a_crashed_agent_is_marked_down_and_a_terminated_one_leaves_promptly() {
    let mut agents = cluster("fail", 4).await;
    let refs: Vec<&AgentProc> = agents.iter().collect();
    wait_alive(&refs, &["fail-1", "fail-2", "fail-3", "fail-4"], CONVERGE).await;

    // SIGTERM: the agent leaves the cluster and exits 0. A leave is
    // announced, so a peer goes from alive straight to down; a node that
    // just vanished would first be suspect for the suspicion timeout (1.5 s in
    // the local profile) before failure detection declared it down. The
    // watcher polls faster than that, so a missing leave shows as a
    // `suspect` state seen on the way.
    agents[3].send_term();
    let watcher = &agents[0];
    let mut seen: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        let state = watcher
            .client()
            .nodes()
            .await
            .ok()
            .and_then(|nodes| nodes.into_iter().find(|n| n.id == "fail-4"))
            .map(|n| n.state.as_str().to_owned())
            .unwrap_or_else(|| "absent".to_owned());
        if seen.last() != Some(&state) {
            seen.push(state.clone());
        }
        if state == "down" || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (The first poll may already find it down on a slow machine.)
    assert!(
        seen == ["alive", "down"] || seen == ["down"],
        "fail-1's view of the terminated fail-4, in order: {seen:?}; a leave goes from \
         alive to down without a suspicion"
    );
    let status = agents[3]
        .wait_exit(Duration::from_secs(30))
        .expect("exit status");
    assert!(status.success(), "agent exited with {status}");
    for agent in &agents[1..3] {
        eventually("the terminated agent to be down", CONVERGE, || async {
            agent
                .members_in("down")
                .await
                .contains(&"fail-4".to_string())
                .then_some(())
        })
        .await;
    }

    // SIGKILL: no leave; failure detection marks it down.
    agents[2].kill();
    let watchers: Vec<&AgentProc> = agents[..2].iter().collect();
    for agent in &watchers {
        eventually("the killed agent to be down", CONVERGE, || async {
            agent
                .members_in("down")
                .await
                .contains(&"fail-3".to_string())
                .then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn an_agent_with_another_passphrase_never_joins_and_the_handshake_failure_is_counted() {
    let seed = AgentProc::start(Spec::new("psk-seed")).await;
    let member = AgentProc::start(Spec::new("psk-member").join(&seed)).await;
    let intruder = AgentProc::start(
        Spec::new("psk-intruder")
            .psk("not-the-cluster-passphrase")
            .join(&seed),
    )
    .await;
    wait_alive(&[&seed, &member], &["psk-member", "psk-seed"], CONVERGE).await;

    eventually("the seed to count a failed handshake", CONVERGE, || async {
        let text = seed.metrics_text().await;
        (metric_value(&text, "gossamer_handshake_failures_total", &[]) >= 1.0).then_some(())
    })
    .await;
    // It keeps retrying the join; give it a few rounds, then check nobody lists it.
    eventually("the intruder to log its failed joins", CONVERGE, || async {
        intruder.log().contains("cannot join yet").then_some(())
    })
    .await;
    for agent in [&seed, &member] {
        let nodes = agent.client().nodes().await.expect("nodes");
        assert!(
            nodes.iter().all(|n| n.id != "psk-intruder"),
            "{} lists the intruder",
            agent.node_id()
        );
    }
    let nodes = intruder.client().nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 1, "the intruder sees only itself: {nodes:?}");
}

#[tokio::test]
async fn a_restarted_agent_keeps_its_id_and_rejoins_with_a_higher_generation() {
    let seed = AgentProc::start(Spec::new("re-seed")).await;
    let mut member = AgentProc::start(Spec::new("re-member").join(&seed)).await;
    wait_alive(&[&seed, &member], &["re-member", "re-seed"], CONVERGE).await;
    let before = seed
        .client()
        .nodes()
        .await
        .expect("nodes")
        .into_iter()
        .find(|n| n.id == "re-member")
        .expect("member listed")
        .generation;

    let old_address = member.listeners.quic;
    member.restart().await;
    // Port 0: the restarted agent has a new QUIC address, and the seed must
    // reach it there.
    let new_address = member.listeners.quic;
    assert_ne!(old_address, new_address, "the restart kept its port");
    let after = eventually(
        "the seed to see the new generation alive at the new address",
        CONVERGE,
        || async {
            let nodes = seed.client().nodes().await.ok()?;
            let node = nodes.into_iter().find(|n| n.id == "re-member")?;
            (node.generation > before
                && node.state.as_str() == "alive"
                && node.address == new_address.to_string())
            .then_some(node.generation)
        },
    )
    .await;
    assert!(after > before);
    let health = member.client().health().await.expect("health");
    assert_eq!(health.node_id, "re-member");
}

#[tokio::test]
async fn user_errors_exit_non_zero_with_a_one_line_explanation() {
    let run = |args: &[&str]| {
        let output = common::gossamer()
            .args(args)
            .output()
            .expect("run gossamer");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["agent", "--data-dir", "/tmp/gossamer-test-nopsk"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no cluster passphrase"), "{err}");
    let (code, err) = run(&["agent", "--dev", "--join", "not-an-address"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not HOST:PORT"), "{err}");
    let (code, err) = run(&["agent", "--dev", "--service", "echo"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("NAME=PORT"), "{err}");
    let (code, err) = run(&[
        "agent",
        "--psk",
        "abcdefghij",
        "--data-dir",
        "/proc/gossamer-cannot-write",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("data dir"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").to_string();
    let (code, err) = run(&[
        "agent",
        "--dev",
        "--bind",
        "127.0.0.1:0",
        "--admin-listen",
        &port,
        "--metrics-listen",
        "127.0.0.1:0",
        "--proxy-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot listen on") && err.contains("--admin-listen"),
        "{err}"
    );
}

#[tokio::test]
async fn an_agent_joins_through_any_of_several_targets_given_by_name_or_address() {
    let seed = AgentProc::start(Spec::new("multi-seed")).await;
    // The first target is a UDP port where no agent answers; the second
    // names the seed by host name (localhost may resolve to ::1 first, which
    // this IPv4 agent cannot reach: the next address must be tried).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let joiner = AgentProc::start(
        Spec::new("multi-joiner")
            .arg("--join")
            .arg(silent_addr.to_string())
            .arg("--join")
            .arg(format!("localhost:{}", seed.listeners.quic.port())),
    )
    .await;
    wait_alive(
        &[&seed, &joiner],
        &["multi-joiner", "multi-seed"],
        Duration::from_secs(60),
    )
    .await;
    drop(silent);
}

/// The slow-turn warning is for work that stalls the membership loop; a
/// lone agent on `lan` waits a whole second between probes, and that wait
/// used to be counted as a turn, so it warned every second.
#[tokio::test]
async fn a_lone_agent_on_lan_timings_does_not_warn_of_slow_membership_turns() {
    let lone = AgentProc::start(Spec::new("lone-lan").profile("lan")).await;
    // Three of its one-second probe periods: each used to log the warning.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(lone.members_in("alive").await, vec!["lone-lan".to_owned()]);
    let log = lone.log();
    assert!(
        !log.contains("took over a second"),
        "a lone agent warned of slow turns while idle:\n{log}"
    );
}

#[tokio::test]
async fn the_lan_and_wan_profiles_form_a_cluster_and_see_a_leave() {
    for profile in ["lan", "wan"] {
        let seed = AgentProc::start(Spec::new(&format!("{profile}-1")).profile(profile)).await;
        let mut member = AgentProc::start(
            Spec::new(&format!("{profile}-2"))
                .profile(profile)
                .join(&seed),
        )
        .await;
        let ids = [format!("{profile}-1"), format!("{profile}-2")];
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        wait_alive(&[&seed, &member], &ids, Duration::from_secs(60)).await;
        let status = member.terminate().expect("exit status");
        assert!(status.success(), "{profile}: agent exited with {status}");
        // A leave is announced: no failure detection needed, whatever the
        // profile's probe period.
        eventually(
            &format!("{profile}: the seed to see the member down"),
            Duration::from_secs(30),
            || async {
                seed.members_in("down")
                    .await
                    .contains(&ids[1].to_owned())
                    .then_some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn a_joiner_pulls_every_member_its_seed_knows_at_once() {
    // An announce's answer holds only as many members as fit one datagram
    // (about 35); the rest used to trickle in over gossip. The pull hands a
    // joiner the whole list: every other alive member, with its identity.
    let agents = cluster("pull", 4).await;
    let refs: Vec<&AgentProc> = agents.iter().collect();
    wait_alive(&refs, &["pull-1", "pull-2", "pull-3", "pull-4"], CONVERGE).await;
    let joiner = common::peer_transport(common::PSK, "pull-joiner");
    let seed = &agents[0];
    let pulled = sidecar::join::pull_members(&joiner, seed.listeners.quic, None)
        .await
        .expect("the seed answers the pull");
    let mut listed: Vec<(String, String, bool)> = pulled
        .iter()
        .map(|m| {
            (
                m.identity.node_id.to_string(),
                m.identity.addr.to_string(),
                m.suspect,
            )
        })
        .collect();
    listed.sort();
    let expected: Vec<(String, String, bool)> = agents[1..]
        .iter()
        .map(|a| (a.node_id().to_owned(), a.listeners.quic.to_string(), false))
        .collect();
    assert_eq!(listed, expected, "the seed's members, itself excluded");
    let nodes = seed.client().nodes().await.expect("nodes");
    for member in &pulled {
        let listed = nodes
            .iter()
            .find(|n| n.id == member.identity.node_id.as_str())
            .expect("a pulled member is one the seed lists");
        assert_eq!(listed.generation, member.identity.generation);
    }

    // A periodic pull sends what it knows first: the same members (the
    // seed's, and the seed) bring an empty answer; one missing, the list.
    let seed_identity = sidecar::join::hello(&joiner, seed.listeners.quic)
        .await
        .expect("the seed says who it is");
    let everyone: Vec<&NodeIdentity> = pulled
        .iter()
        .map(|m| &m.identity)
        .chain([&seed_identity])
        .collect();
    let same = MemberSummary::of(everyone.iter().copied());
    let again = sidecar::join::pull_members(&joiner, seed.listeners.quic, Some(same))
        .await
        .expect("the seed answers a pull with a summary");
    assert!(
        again.is_empty(),
        "equal summaries, yet {} members sent",
        again.len()
    );
    let lacking_one = MemberSummary::of(everyone.iter().skip(1).copied());
    let repaired = sidecar::join::pull_members(&joiner, seed.listeners.quic, Some(lacking_one))
        .await
        .expect("the seed answers a pull with a summary");
    assert_eq!(
        repaired.len(),
        pulled.len(),
        "a differing summary gets the whole list"
    );
}

#[tokio::test]
async fn nodes_that_joined_only_each_other_find_their_join_target_once_it_answers() {
    // A node whose seed was not answering joined through another node that
    // had no seed at all: the two form an island whose member pulls agree
    // with each other forever (seen with 500 agents starting at once). A
    // --join target that is not a member is tried again every third member
    // pull round, and joined through once it answers.
    // Held until the seed starts, so that no agent started before it (their
    // QUIC and DNS sockets take free UDP ports) is handed this port.
    let reserved = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let seed_addr = reserved.local_addr().expect("addr");
    let loner = AgentProc::start(Spec::new("island-loner")).await;
    let cut_off = AgentProc::start(
        Spec::new("island-cut-off")
            .arg("--join")
            .arg(seed_addr.to_string())
            .join(&loner),
    )
    .await;
    wait_alive(
        &[&loner, &cut_off],
        &["island-cut-off", "island-loner"],
        CONVERGE,
    )
    .await;
    // Its first join must have given up on the seed's address first: a
    // hello still in flight would reach the seed once it starts and join
    // the ordinary way.
    eventually(
        "the cut-off node to give up on its seed",
        Duration::from_secs(60),
        || async {
            let log = cut_off.log();
            (log.contains("cannot join yet") && log.contains(&seed_addr.to_string())).then_some(())
        },
    )
    .await;
    drop(reserved);
    let seed = AgentProc::start(Spec::new("island-seed").bind(seed_addr)).await;
    assert_eq!(seed.listeners.quic, seed_addr);
    wait_alive(
        &[&seed, &loner, &cut_off],
        &["island-cut-off", "island-loner", "island-seed"],
        Duration::from_secs(60),
    )
    .await;
    assert!(
        cut_off.log().contains("joined through it again"),
        "the cut-off node says why it joined again"
    );
}
