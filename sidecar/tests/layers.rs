//! The layered agent's promises that users feel: a stalled disk delays only
//! the writes that must wait for it, never proxied calls, admin reads or
//! gossip received from peers; and a watcher of one service sleeps through
//! writes to another.

mod common;

use std::time::Duration;

use common::{echo_service, eventually, http_get};
use mesh_proto::catalog::Definition;
use sidecar::agent::RunningAgent;

fn definition(name: &str, version: &str) -> Definition {
    Definition {
        name: name.to_owned(),
        version: version.to_owned(),
        ..Default::default()
    }
}

async fn start(name: &str, join: Option<&RunningAgent>) -> RunningAgent {
    let join = join
        .map(|seed| vec![seed.agent.listeners.quic.to_string()])
        .unwrap_or_default();
    let config = sidecar::demo::local_config(name, join, Vec::new());
    sidecar::agent::start(config).await.expect("agent starts")
}

fn admin(running: &RunningAgent) -> client::Client {
    client::Client::new(&format!("http://{}", running.agent.listeners.admin)).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_holds_no_call_read_or_gossip() {
    let a = start("stall-a", None).await;
    let b = start("stall-b", Some(&a)).await;
    let (port, _echo) = echo_service("on-b").await;
    common::register_port_at(b.agent.listeners.admin, "echo", port).await;
    let proxy = a.agent.listeners.proxy;
    let call = || async move {
        http_get(proxy, "/", &[("host", "echo.localhost")])
            .await
            .filter(|(status, _, _)| *status == 200)
    };
    eventually("a routes to b's instance", Duration::from_secs(20), call).await;

    // A's disk stalls; a change gossiped from b makes A's persistence loop
    // start a snapshot that cannot finish. (b's disk is fine: its API writes
    // wait for their own fsync by design.)
    let held_a = a.agent.data.hold_writes_for_test();
    admin(&b)
        .put_definition(&definition("echo", "1"))
        .await
        .expect("definition written on b");
    // The persistence loop runs every 2 s: let it reach the stalled disk.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let within = Duration::from_secs(10);
    let (status, _, _) = tokio::time::timeout(within, call())
        .await
        .expect("a proxied call completes while the disk is stalled")
        .expect("the call succeeds");
    assert_eq!(status, 200);
    let services = tokio::time::timeout(within, admin(&a).services())
        .await
        .expect("an admin read completes while the disk is stalled")
        .expect("services listed");
    assert!(services.iter().any(|s| s.name == "echo"));
    admin(&b)
        .put_definition(&definition("during-stall", "2"))
        .await
        .expect("a definition (gossip, no disk) is written on b");
    let a_client = admin(&a);
    eventually(
        "b's definition reaches a by gossip during the stall",
        within,
        || {
            let a_client = a_client.clone();
            async move { a_client.definition("during-stall").await.ok() }
        },
    )
    .await;

    // The disk comes back: the snapshot holds what was written meanwhile.
    drop(held_a);
    let data = a.agent.data.clone();
    eventually(
        "a's snapshot is saved once the disk is back",
        within,
        || {
            let data = data.clone();
            async move {
                let snapshot = tokio::task::spawn_blocking(move || data.snapshot())
                    .await
                    .ok()?;
                snapshot.definition("during-stall").map(|_| ())
            }
        },
    )
    .await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_of_one_service_sleeps_through_writes_to_another() {
    let a = start("watch-a", None).await;
    let client = admin(&a);
    client
        .put_definition(&definition("alpha", "1"))
        .await
        .expect("alpha written");
    let base = format!("http://{}", a.agent.listeners.admin);
    let first = reqwest_like_get(&base, "/v1/services/alpha/instances").await;
    let index = first.0;

    let started = std::time::Instant::now();
    let watcher = tokio::spawn({
        let base = base.clone();
        async move {
            reqwest_like_get(
                &base,
                &format!("/v1/services/alpha/instances?index={index}&wait=3s"),
            )
            .await
        }
    });
    for n in 0..100 {
        client
            .put_definition(&definition("beta", &n.to_string()))
            .await
            .expect("beta written");
    }
    // The watcher of alpha slept through the 100 writes to beta: it answers
    // only when its 3 s wait ends, with alpha's unchanged index. (A lower
    // bound: a busy machine can only make the wait longer.)
    let (answered_index, _) = watcher.await.expect("watcher task");
    assert_eq!(answered_index, index, "alpha did not change");
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "the watcher of alpha answered after {:?}: woken by writes to beta",
        started.elapsed()
    );

    // A write to alpha wakes it.
    let watcher = tokio::spawn({
        let base = base.clone();
        async move {
            reqwest_like_get(
                &base,
                &format!("/v1/services/alpha/instances?index={index}&wait=30s"),
            )
            .await
        }
    });
    client
        .put_definition(&definition("alpha", "2"))
        .await
        .expect("alpha rewritten");
    let (woken_index, _) = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("a write to alpha wakes its watcher")
        .expect("watcher task");
    assert!(woken_index > index);
    a.stop().await;
}

/// GET on the admin API: (x-gossamer-index, body).
async fn reqwest_like_get(base: &str, path: &str) -> (u64, String) {
    let addr: std::net::SocketAddr = base
        .trim_start_matches("http://")
        .parse()
        .expect("admin address");
    let (status, headers, body) = http_get(addr, path, &[("host", "localhost")])
        .await
        .expect("admin answers");
    assert_eq!(status, 200, "{path}: {body}");
    let index = headers
        .get(mesh_proto::api::INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("every answer carries an index");
    (index, body)
}
