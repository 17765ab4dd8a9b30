//! Faults: nodes die, networks split, agents restart, and the mesh keeps
//! routing and converges, losing no write that was not superseded.
//!
//! Every load loop is bounded in calls and in time. Each test prints its
//! figures (calls sent, failed, convergence times); run with `--nocapture`
//! to see them.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{echo_service, eventually, wait_alive, wait_instances_measured, AgentProc, Spec};
use mesh_proto::api::RegisterInstance;
use mesh_proto::catalog::{Definition, RecordKey};
use mesh_proto::Version;

const CONVERGE: Duration = Duration::from_secs(20);
/// Generous bound on SWIM failure detection with the `local` profile
/// (probe every 400 ms, suspicion 1.5 s for small clusters) on a busy 2-core
/// machine. The figure each test prints is the one to watch.
const FAILURE_DETECTION: Duration = Duration::from_secs(15);
/// The contract is "no call waits past 2 s for a node its sidecar knows is
/// dead"; 1 s more for a busy machine. A connection left to its idle
/// timeout would hold such calls 5-7 s past that point.
const KNOWN_DEAD_WAIT: Duration = Duration::from_secs(3);

// === Load ===

/// One call of a load loop.
#[derive(Debug, Clone)]
struct Call {
    service: &'static str,
    /// When it was sent, since the load started.
    sent: Duration,
    /// When its answer (or failure) came.
    answered: Duration,
    /// The upstream node on success, or what went wrong.
    outcome: Result<String, String>,
}

/// What a bounded load loop saw.
#[derive(Debug, Default)]
struct LoadReport {
    calls: Vec<Call>,
}

impl LoadReport {
    fn failures(&self) -> Vec<&Call> {
        self.calls.iter().filter(|c| c.outcome.is_err()).collect()
    }

    fn failures_of(&self, service: &str) -> Vec<&Call> {
        self.calls
            .iter()
            .filter(|c| c.service == service && c.outcome.is_err())
            .collect()
    }

    /// Successful calls by upstream node (from `x-gossamer-upstream`).
    fn by_node(&self) -> BTreeMap<&str, u64> {
        let mut counts = BTreeMap::new();
        for call in &self.calls {
            if let Ok(node) = &call.outcome {
                *counts.entry(node.as_str()).or_default() += 1;
            }
        }
        counts
    }

    /// Panics, showing the first few, if any call failed.
    fn assert_no_failures(&self, service: &str) {
        let failed = self.failures_of(service);
        assert!(
            failed.is_empty(),
            "{} of {} calls to {service} failed: {:#?}",
            failed.len(),
            self.calls.len(),
            &failed[..failed.len().min(10)]
        );
    }
}

/// A bounded GET loop through one proxy: `workers` callers, each pausing a
/// few ms between calls so the agents keep their share of the 2 cores.
struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(
        proxy: SocketAddr,
        services: &[&'static str],
        workers: usize,
        max_calls: usize,
        max_time: Duration,
    ) -> Self {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let mut tasks = Vec::new();
        for worker in 0..workers {
            let service = services[worker % services.len()];
            let (stop, report) = (stop.clone(), report.clone());
            tasks.push(tokio::spawn(async move {
                let host = format!("{service}.localhost");
                loop {
                    let done = report.lock().expect("report").calls.len();
                    if stop.load(Ordering::Relaxed)
                        || done >= max_calls
                        || started.elapsed() >= max_time
                    {
                        return;
                    }
                    let sent = started.elapsed();
                    let answer = tokio::time::timeout(
                        Duration::from_secs(35),
                        common::http_get(proxy, "/echo", &[("host", &host)]),
                    )
                    .await;
                    let outcome = match answer {
                        Ok(Some((200, headers, _))) => Ok(headers
                            .get("x-gossamer-upstream")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.split('/').next())
                            .unwrap_or("?")
                            .to_owned()),
                        Ok(Some((status, _, body))) => Err(format!("{status}: {body}")),
                        Ok(None) => Err("no HTTP answer from the proxy".to_owned()),
                        Err(_) => Err("no answer within 35 s".to_owned()),
                    };
                    let call = Call {
                        service,
                        sent,
                        answered: started.elapsed(),
                        outcome,
                    };
                    report.lock().expect("report").calls.push(call);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Self {
            started,
            stop,
            report,
            tasks,
        }
    }

    /// Time since the load started.
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn answered(&self) -> usize {
        self.report.lock().expect("report").calls.len()
    }

    /// Waits until `n` more calls have been answered (or the loop ended).
    async fn wait_for_calls(&self, n: usize) {
        let target = self.answered() + n;
        eventually(&format!("{n} more calls"), CONVERGE, || async {
            let done = self.tasks.iter().all(|t| t.is_finished());
            (self.answered() >= target || done).then_some(())
        })
        .await;
    }

    async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load worker panicked");
        }
        let mut report = self.report.lock().expect("report");
        std::mem::take(&mut *report)
    }
}

/// Node ids hosting an instance of `service`, as `agent` lists them.
async fn hosts(agent: &AgentProc, service: &str) -> Option<Vec<String>> {
    let view = agent
        .client()
        .instances(service, &Default::default())
        .await
        .ok()?;
    let mut nodes: Vec<String> = view
        .eligible
        .iter()
        .chain(view.ineligible.iter())
        .map(|i| i.instance.node.to_string())
        .collect();
    nodes.sort();
    Some(nodes)
}

/// Waits until every agent lists exactly `want` as hosts of `service`;
/// returns how long that took from `since`.
async fn wait_hosts(
    agents: &[&AgentProc],
    service: &str,
    want: &[&str],
    since: Instant,
    timeout: Duration,
) -> Duration {
    for agent in agents {
        eventually(
            &format!("{} to list {service} on {want:?}", agent.node_id()),
            timeout,
            || async move { (hosts(agent, service).await? == want).then_some(()) },
        )
        .await;
    }
    since.elapsed()
}

/// An agent spec with an echo instance of `service` behind it.
async fn with_echo(
    spec: Spec,
    service: &str,
    echoes: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Spec {
    let (port, handle) = echo_service(&format!("{service}@{}", spec.node_id)).await;
    echoes.push(handle);
    spec.arg("--service").arg(format!("{service}={port}"))
}

// === Kill a node under load ===

#[tokio::test]
async fn killing_a_node_under_load_fails_no_call_and_its_instances_leave_every_catalog() {
    let mut echoes = Vec::new();
    let a =
        AgentProc::start(with_echo(Spec::new("kill-a").with_metrics(), "echo", &mut echoes).await)
            .await;
    let b =
        AgentProc::start(with_echo(Spec::new("kill-b").join(&a), "echo", &mut echoes).await).await;
    let mut c =
        AgentProc::start(with_echo(Spec::new("kill-c").join(&a), "echo", &mut echoes).await).await;
    wait_alive(&[&a, &b, &c], &["kill-a", "kill-b", "kill-c"], CONVERGE).await;
    wait_instances_measured(&a, "echo", 3).await;

    let load = Load::start(
        a.listeners.proxy,
        &["echo"],
        4,
        20_000,
        Duration::from_secs(40),
    );
    load.wait_for_calls(300).await;
    let before_kill = load.answered();
    let killed_at = Instant::now();
    c.kill();
    // a, the caller's node, first: from then on no call may wait on c.
    wait_hosts(
        &[&a],
        "echo",
        &["kill-a", "kill-b"],
        killed_at,
        FAILURE_DETECTION,
    )
    .await;
    let a_knew = load.now();
    let gone = wait_hosts(
        &[&a, &b],
        "echo",
        &["kill-a", "kill-b"],
        killed_at,
        FAILURE_DETECTION,
    )
    .await;
    // Keep calling a while after the catalogs converged.
    load.wait_for_calls(300).await;
    let report = load.finish().await;

    // Calls in flight on c when a declared it down are retried at once
    // (a closes its connection to c), not when the connection's idle
    // timeout (10 s with the local profile) finally notices.
    let waited_after_known = report
        .calls
        .iter()
        .filter(|call| call.sent < a_knew)
        .map(|call| call.answered.saturating_sub(a_knew))
        .max()
        .unwrap_or_default();
    println!(
        "kill under load: {} calls sent ({before_kill} before the kill), {} failed; \
         instances of the killed node gone from every catalog {:.2} s after the kill; \
         longest wait past the caller's node knowing: {:.2} s; calls by node {:?}",
        report.calls.len(),
        report.failures().len(),
        gone.as_secs_f64(),
        waited_after_known.as_secs_f64(),
        report.by_node()
    );
    report.assert_no_failures("echo");
    assert!(
        waited_after_known < KNOWN_DEAD_WAIT,
        "a call waited {waited_after_known:?} on a node its sidecar already knew was dead"
    );
    assert!(
        report.by_node().get("kill-c").copied().unwrap_or(0) > 0,
        "the killed node served calls before it died: {:?}",
        report.by_node()
    );
}

// === Restart an agent under load ===

#[tokio::test]
async fn a_restarted_agent_is_unavailable_only_while_down_and_restores_its_registrations_from_disk()
{
    let mut echoes = Vec::new();
    let a =
        AgentProc::start(with_echo(Spec::new("re-a").with_metrics(), "echo", &mut echoes).await)
            .await;
    let b =
        AgentProc::start(with_echo(Spec::new("re-b").join(&a), "echo", &mut echoes).await).await;
    let mut c =
        AgentProc::start(with_echo(Spec::new("re-c").join(&a), "echo", &mut echoes).await).await;
    wait_alive(&[&a, &b, &c], &["re-a", "re-b", "re-c"], CONVERGE).await;

    // "solo" lives only on c, registered through the API (so it is on disk,
    // not in c's flags).
    let (solo_port, solo) = echo_service("solo@re-c").await;
    echoes.push(solo);
    let registered = c
        .client()
        .register(&RegisterInstance {
            service: "solo".to_owned(),
            port: Some(solo_port),
            address: None,
            id: None,
            deployment_id: Some("deploy-7".to_owned()),
            tags: vec!["from-api".to_owned()],
            health: None,
        })
        .await
        .expect("register solo on c");
    wait_instances_measured(&a, "echo", 3).await;
    wait_instances_measured(&a, "solo", 1).await;

    let load = Load::start(
        a.listeners.proxy,
        &["echo", "solo"],
        4,
        20_000,
        Duration::from_secs(50),
    );
    load.wait_for_calls(300).await;
    let generation_before = a
        .client()
        .nodes()
        .await
        .expect("nodes")
        .iter()
        .find(|n| n.id == "re-c")
        .expect("c listed")
        .generation;
    // Down long enough for every agent to notice, then back on the same data dir.
    let killed = load.now();
    let killed_at = Instant::now();
    c.kill();
    let detected = wait_hosts(&[&a, &b], "solo", &[], killed_at, FAILURE_DETECTION).await;
    let restart_started = Instant::now();
    c.restart().await;
    let up = load.now();
    let down_for = killed_at.elapsed();
    // The restarted agent restored the instance from disk, same id and all.
    let listed = c
        .client()
        .instances("solo", &Default::default())
        .await
        .expect("c lists solo");
    let restored: Vec<_> = listed
        .eligible
        .iter()
        .chain(listed.ineligible.iter())
        .map(|v| v.instance.clone())
        .collect();
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(restored[0].id, registered.id);
    assert_eq!(restored[0].deployment_id.as_deref(), Some("deploy-7"));
    assert_eq!(restored[0].tags, vec!["from-api".to_owned()]);
    // The others learn of c's new incarnation, and list solo on it.
    for agent in [&a, &b] {
        eventually(
            &format!("{} to see c's new generation", agent.node_id()),
            CONVERGE,
            || async move {
                let nodes = agent.client().nodes().await.ok()?;
                let c = nodes.iter().find(|n| n.id == "re-c")?;
                (c.generation > generation_before && c.state.as_str() == "alive").then_some(())
            },
        )
        .await;
    }
    wait_hosts(&[&a, &b], "solo", &["re-c"], restart_started, CONVERGE).await;
    wait_hosts(
        &[&a, &b],
        "echo",
        &["re-a", "re-b", "re-c"],
        restart_started,
        CONVERGE,
    )
    .await;
    let back = load.now();
    load.wait_for_calls(300).await;
    let report = load.finish().await;

    let solo_failures = report.failures_of("solo");
    let solo_after = report
        .calls
        .iter()
        .filter(|c| c.service == "solo" && c.sent >= back && c.outcome.is_ok())
        .count();
    println!(
        "restart under load: {} calls sent, {} failed ({} to solo, all while c was down or \
         rejoining); c killed at {:.2} s, noticed by every agent {:.2} s later, ready again at \
         {:.2} s (down {:.2} s); its new incarnation and solo listed by every agent at {:.2} s; \
         {solo_after} solo calls succeeded after; calls by node {:?}",
        report.calls.len(),
        report.failures().len(),
        solo_failures.len(),
        killed.as_secs_f64(),
        detected.as_secs_f64(),
        up.as_secs_f64(),
        down_for.as_secs_f64(),
        back.as_secs_f64(),
        report.by_node()
    );
    // The service with instances elsewhere never failed.
    report.assert_no_failures("echo");
    // The one that lives only on c failed only for calls in flight while
    // c was down or not yet known again: none answered before the kill,
    // none sent after every agent knew c's new incarnation.
    for call in &solo_failures {
        assert!(
            call.answered >= killed && call.sent < back,
            "a call to solo failed outside c's restart ({:.2}..{:.2} s): {call:#?}",
            killed.as_secs_f64(),
            back.as_secs_f64()
        );
    }
    assert!(
        !solo_failures.is_empty(),
        "solo lives only on c, so calls sent while every agent knew c was down cannot succeed"
    );
    assert!(solo_after > 0, "solo served calls after c came back");
}

// === Partition 2 + 3, write on both sides, heal ===

/// An agent in this process, so the test can cut and heal its links at run
/// time through the link shim.
struct Node {
    running: sidecar::agent::RunningAgent,
    client: client::Client,
}

impl Node {
    async fn start(name: &str, join: Option<&Node>) -> Self {
        let join = join
            .map(|seed| vec![seed.quic().to_string()])
            .unwrap_or_default();
        let mut config = sidecar::demo::local_config(name, join, Vec::new());
        // An inert rule makes the shim wrap the socket from the start, so
        // the rules this test sets later apply. (192.0.2.1 is TEST-NET-1:
        // no agent ever sends there, whatever listens on this machine.)
        config.link_drops = vec!["192.0.2.1:9".parse().expect("addr")];
        let running = sidecar::agent::start(config).await.expect("agent starts");
        let client = client::Client::new(&format!("http://{}", running.agent.listeners.admin))
            .expect("client");
        Self { running, client }
    }

    fn name(&self) -> &str {
        self.running.agent.node_id().as_str()
    }

    fn quic(&self) -> SocketAddr {
        self.running.agent.listeners.quic
    }

    /// Drops (or, with `cut == false`, restores) every datagram to `peers`.
    fn cut(&self, peers: &[&Node], cut: bool) {
        for peer in peers {
            if cut {
                self.running
                    .agent
                    .link_rules
                    .set(peer.quic(), sidecar::link_shim::LinkRule::Drop);
            } else {
                self.running.agent.link_rules.clear(peer.quic());
            }
        }
    }

    /// The version field of definition `name`, or None when absent or deleted.
    async fn definition_version(&self, name: &str) -> Option<String> {
        self.client.definition(name).await.ok().map(|d| d.version)
    }

    fn digest(&self) -> mesh_proto::catalog::Digest {
        self.running.agent.catalog.read(|c| c.digest())
    }

    /// The version of the record (definition or tombstone) under `name`.
    fn record_version(&self, name: &str) -> Option<Version> {
        let key = RecordKey::Definition(name.to_owned());
        self.running
            .agent
            .catalog
            .read(|c| c.get(&key).map(|r| r.version.clone()))
    }

    /// What this node just wrote under `name`, as it stamped it.
    fn written(&self, name: &str, value: Option<&str>) -> Written {
        Written {
            name: name.to_owned(),
            value: value.map(str::to_owned),
            version: self
                .record_version(name)
                .expect("the write is held locally"),
        }
    }

    async fn delete(&self, name: &str) -> Written {
        self.client
            .delete_definition(name)
            .await
            .unwrap_or_else(|e| panic!("delete {name} on {}: {e}", self.name()));
        self.written(name, None)
    }

    async fn put(&self, name: &str, version: &str) -> Written {
        let definition = Definition {
            name: name.to_owned(),
            version: version.to_owned(),
            port: Some(8080),
            ..Definition::default()
        };
        self.client
            .put_definition(&definition)
            .await
            .unwrap_or_else(|e| panic!("put {name} on {}: {e}", self.name()));
        self.written(name, Some(version))
    }
}

/// One write of the partition test: the definition's `version` field
/// (None for a delete) and the catalog version it was stamped with.
#[derive(Debug)]
struct Written {
    name: String,
    value: Option<String>,
    version: Version,
}

/// Each node's member table: (id, state) sorted by id.
async fn states(node: &Node) -> Vec<(String, String)> {
    let mut states: Vec<(String, String)> = node
        .client
        .nodes()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|n| (n.id, n.state.as_str().to_owned()))
        .collect();
    states.sort();
    states
}

/// Waits until each of `nodes` lists the nodes of `nodes` alive and those
/// of `gone` down; on timeout, the panic shows every node's member table.
async fn wait_side(nodes: &[&Node], gone: &[&Node], timeout: Duration) {
    let mut want: Vec<(String, String)> = nodes
        .iter()
        .map(|n| (n.name().to_owned(), "alive".to_owned()))
        .chain(
            gone.iter()
                .map(|n| (n.name().to_owned(), "down".to_owned())),
        )
        .collect();
    want.sort();
    let deadline = Instant::now() + timeout;
    for node in nodes {
        while states(node).await != want {
            if Instant::now() > deadline {
                let mut tables = String::new();
                for node in nodes.iter().chain(gone) {
                    let table = node.client.nodes().await.map(|list| {
                        list.into_iter()
                            .map(|n| format!("{}@{}={}", n.id, n.generation, n.state.as_str()))
                            .collect::<Vec<_>>()
                    });
                    tables.push_str(&format!("\n  {}: {table:?}", node.name()));
                }
                panic!(
                    "timed out after {timeout:?} waiting for {} to list {want:?}; members:{tables}",
                    node.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Waits until every node of `nodes` has definition `name` at `version`
/// (None: absent or deleted).
async fn wait_definition(nodes: &[&Node], name: &str, version: Option<&str>, timeout: Duration) {
    for node in nodes {
        eventually(
            &format!("{} to have {name} at {version:?}", node.name()),
            timeout,
            || async move {
                (node.definition_version(name).await.as_deref() == version).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_partition_converges_to_one_catalog_with_no_unsuperseded_write_lost() {
    // The agents log into the test's output, shown when it fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "sidecar=info".into()),
        )
        .with_ansi(false)
        .with_test_writer()
        .try_init();
    let p1 = Node::start("part-1", None).await;
    let mut others = Vec::new();
    for i in 2..=5 {
        others.push(Node::start(&format!("part-{i}"), Some(&p1)).await);
    }
    let [p2, p3, p4, p5]: [Node; 4] = others.try_into().ok().expect("four nodes");
    let all = [&p1, &p2, &p3, &p4, &p5];
    wait_side(&all, &[], CONVERGE).await;

    // Before the split: two definitions everybody has.
    p1.put("shared", "before").await;
    p1.put("doomed", "before").await;
    p1.put("contested", "before").await;
    wait_definition(&all, "shared", Some("before"), CONVERGE).await;
    wait_definition(&all, "doomed", Some("before"), CONVERGE).await;
    wait_definition(&all, "contested", Some("before"), CONVERGE).await;

    // Split 2 + 3: every datagram across is dropped, both ways.
    let (left, right) = ([&p1, &p2], [&p3, &p4, &p5]);
    for node in left {
        node.cut(&right, true);
    }
    for node in right {
        node.cut(&left, true);
    }
    let split_at = Instant::now();
    tracing::info!("test: partition 2+3 cut");
    wait_side(&left, &right, CONVERGE).await;
    wait_side(&right, &left, CONVERGE).await;
    let split_seen = split_at.elapsed();

    // Writes on both sides: each side adds definitions of its own, and both
    // write "shared", "contested" and "doomed" (one side deletes it), so
    // those conflict; the higher version must win everywhere.
    let mut writes = vec![
        p2.put("doomed", "left-update").await,
        p1.put("left-only-1", "1").await,
        p2.put("left-only-2", "1").await,
        p1.put("contested", "left").await,
        p4.put("contested", "right").await,
        p4.put("shared", "right").await,
        p3.put("right-only-1", "1").await,
        p5.put("right-only-2", "1").await,
        p3.delete("doomed").await,
    ];
    writes.push(p2.put("shared", "left").await);
    // Each side converges on its own writes...
    for (name, value) in [
        ("left-only-1", Some("1")),
        ("left-only-2", Some("1")),
        ("doomed", Some("left-update")),
        ("shared", Some("left")),
        ("contested", Some("left")),
    ] {
        wait_definition(&left, name, value, CONVERGE).await;
    }
    for (name, value) in [
        ("right-only-1", Some("1")),
        ("right-only-2", Some("1")),
        ("doomed", None),
        ("shared", Some("right")),
        ("contested", Some("right")),
    ] {
        wait_definition(&right, name, value, CONVERGE).await;
    }
    // ...and sees none of the other's: the split is real.
    for node in left {
        assert_eq!(node.definition_version("right-only-1").await, None);
    }
    for node in right {
        assert_eq!(node.definition_version("left-only-1").await, None);
    }

    // Heal.
    for node in all {
        node.cut(&all, false);
    }
    let healed_at = Instant::now();
    tracing::info!("test: partition healed");
    wait_side(&all, &[], Duration::from_secs(45)).await;
    let members_back = healed_at.elapsed();
    let digest = eventually(
        "every agent to hold the same catalog",
        Duration::from_secs(45),
        || async {
            let first = p1.digest();
            all.iter().all(|n| n.digest() == first).then_some(first)
        },
    )
    .await;
    let converged = healed_at.elapsed();

    // No write is lost unless a higher version superseded it: every agent
    // holds, for each key written, the highest version written to it.
    let mut winners: BTreeMap<&str, &Written> = BTreeMap::new();
    for write in &writes {
        let best = winners.entry(write.name.as_str()).or_insert(write);
        if write.version > best.version {
            *best = write;
        }
    }
    for node in all {
        for (name, winner) in &winners {
            assert_eq!(
                node.definition_version(name).await,
                winner.value,
                "{name} on {}: the winner of {:?}",
                node.name(),
                writes
                    .iter()
                    .filter(|w| w.name == *name)
                    .collect::<Vec<_>>()
            );
            let held = node.record_version(name).expect("record or tombstone held");
            assert_eq!(held, winner.version, "{name} on {}", node.name());
        }
    }
    println!(
        "partition 2+3: split seen by all {:.2} s after the cut; {} writes across both sides; \
         after the heal all 5 alive everywhere in {:.2} s, one catalog ({} records) in {:.2} s",
        split_seen.as_secs_f64(),
        writes.len(),
        members_back.as_secs_f64(),
        digest.len(),
        converged.as_secs_f64()
    );

    for node in [p1, p2, p3, p4, p5] {
        node.running.stop().await;
    }
}

// === A node back on its address: peers' stale connections reset at once ===

/// A bare transport of node `name`; what it receives goes nowhere.
fn transport(
    name: &str,
    bind: SocketAddr,
    rules: sidecar::link_shim::LinkRules,
) -> anyhow::Result<Arc<sidecar::transport::Transport>> {
    sidecar::tls::install_crypto_provider();
    let trust = sidecar::tls::ClusterTrust::from_passphrase(common::PSK, name)?;
    let (swim, _) = tokio::sync::mpsc::channel(16);
    let (rtt, _) = tokio::sync::mpsc::channel(16);
    let (streams, _) = tokio::sync::mpsc::channel(16);
    sidecar::transport::Transport::bind(
        bind,
        &trust,
        rules,
        sidecar::transport::TransportTimings {
            connect_timeout: Duration::from_secs(2),
            // Long enough that only a stateless reset can end a connection
            // within the test's bounds.
            idle_timeout: Duration::from_secs(60),
            keep_alive: Duration::from_secs(20),
            idle_close: Duration::from_secs(120),
        },
        sidecar::transport::Inbound { swim, rtt, streams },
    )
}

#[tokio::test]
async fn a_node_back_on_its_address_resets_the_connections_peers_still_hold() {
    // An inert rule (TEST-NET-1, never a peer), so the shim wraps a's
    // socket and can cut it later.
    let rules = sidecar::link_shim::LinkRules::default();
    rules.set(
        "192.0.2.1:9".parse().expect("addr"),
        sidecar::link_shim::LinkRule::Drop,
    );
    let a = transport(
        "reset-a",
        "127.0.0.1:0".parse().expect("addr"),
        rules.clone(),
    )
    .expect("bind a");
    let b = transport(
        "reset-b",
        "127.0.0.1:0".parse().expect("addr"),
        Default::default(),
    )
    .expect("bind b");
    let (a_addr, b_addr) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
    b.send_swim(a_addr, b"hello").await.expect("b reaches a");
    // A long-lived connection: the handshake is confirmed on both sides.
    eventually("b's handshake with a to be confirmed", CONVERGE, || async {
        let stats = b.cached(a_addr)?.stats();
        (stats.frame_rx.handshake_done > 0).then_some(())
    })
    .await;

    // a crashes: its goodbye never reaches b, which keeps the connection.
    rules.set(b_addr, sidecar::link_shim::LinkRule::Drop);
    a.shutdown().await;
    drop(a);
    // The same node comes back on the same address (once the port is free).
    let _a_again = eventually("a's port to be free again", CONVERGE, || async {
        transport("reset-a", a_addr, Default::default()).ok()
    })
    .await;
    assert!(
        b.cached(a_addr).is_some(),
        "b still holds the stale connection"
    );

    // b's next packet names a connection of a's previous run: a recognises
    // its own connection id and answers with a stateless reset b can
    // verify, so b drops the connection now rather than after a minute.
    let reset_at = Instant::now();
    let _ = b.send_swim(a_addr, b"still there?").await;
    eventually(
        "b to drop the stale connection",
        Duration::from_secs(10),
        || async { b.cached(a_addr).is_none().then_some(()) },
    )
    .await;
    println!(
        "same-address restart: the peer's stale connection reset {:.3} s after its first packet",
        reset_at.elapsed().as_secs_f64()
    );
    // And b reaches the new a on a fresh connection.
    b.send_swim(a_addr, b"hello again")
        .await
        .expect("b reaches a again");
}
