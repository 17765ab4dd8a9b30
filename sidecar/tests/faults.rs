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

const CONVERGE: Duration = Duration::from_secs(20);
/// Generous bound on SWIM failure detection with the `local` profile
/// (probe every 500 ms, suspicion 2 s for small clusters) on a busy 2-core
/// machine. The figure each test prints is the one to watch.
const FAILURE_DETECTION: Duration = Duration::from_secs(15);

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

    println!(
        "kill under load: {} calls sent ({before_kill} before the kill), {} failed; \
         instances of the killed node gone from every catalog {:.2} s after the kill; \
         calls by node {:?}",
        report.calls.len(),
        report.failures().len(),
        gone.as_secs_f64(),
        report.by_node()
    );
    report.assert_no_failures("echo");
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
