//! Supervision end to end: real agents start `gossamer echo` as their
//! supervised service (`--exec echo -- gossamer echo`), register it, restart
//! it when it dies, scale it, restart it without failing calls, keep its
//! logs, report strays of an earlier run, and place services by CPU and
//! memory.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{eventually, http_get, http_request, wait_alive, AgentProc, Spec};
use sidecar::supervise::{PsView, RestartView};

const GOSSAMER: &str = env!("CARGO_BIN_EXE_gossamer");

/// An agent spec supervising `gossamer echo` as `echo` with `extra` flags
/// (before the `--`).
fn supervising(node: &str, extra: &[&str]) -> Spec {
    let mut spec = Spec::new(node).arg("--exec").arg("echo");
    for arg in extra {
        spec = spec.arg(*arg);
    }
    spec.arg("--")
        .arg(GOSSAMER)
        .arg("echo")
        .arg("--name")
        .arg(format!("echo@{node}"))
}

/// Kills, when a test ends (passing or not), the agents it tracks and then
/// every process their data dirs record, so a failed test leaves no
/// supervised process behind. Declare it after the agents: it drops first.
#[derive(Default)]
struct Reaper {
    tracked: Vec<(u32, PathBuf)>,
}

impl Reaper {
    fn track(&mut self, agent: &AgentProc) {
        if let Some(pid) = agent.pid() {
            self.tracked.push((pid, agent.data_dir.clone()));
        }
    }
}

fn kill9(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for (agent, _) in &self.tracked {
            if common::alive(*agent) {
                kill9(*agent);
            }
        }
        for (_, dir) in &self.tracked {
            for pid in common::recorded_pids(&dir.join("supervise")) {
                if common::alive(pid) {
                    kill9(pid);
                }
            }
        }
    }
}

async fn ps(agent: &AgentProc) -> Option<PsView> {
    let (status, _, body) = http_get(agent.listeners.admin, "/v1/supervise", &[]).await?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Runs the `gossamer` CLI against `agent`: (success, stdout, stderr).
fn cli(agent: &AgentProc, args: &[&str]) -> (bool, String, String) {
    let output = common::gossamer()
        .arg("--agent")
        .arg(format!("http://{}", agent.listeners.admin))
        .args(args)
        .output()
        .expect("run gossamer");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `(health, pid)` of every instance of `echo` that `agent` lists, by id.
async fn echo_health(agent: &AgentProc) -> Vec<(String, String)> {
    let Ok(view) = agent.client().instances("echo", &Default::default()).await else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = view
        .eligible
        .iter()
        .chain(view.ineligible.iter())
        .map(|i| {
            (
                i.instance.id.clone(),
                format!("{:?}", i.instance.health).to_lowercase(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until `agent` lists exactly `n` passing instances of echo.
async fn wait_passing(agent: &AgentProc, n: usize) {
    eventually(
        &format!("{} to list {n} passing echo instances", agent.node_id()),
        Duration::from_secs(30),
        || async move {
            let all = echo_health(agent).await;
            (all.len() == n && all.iter().all(|(_, h)| h == "passing")).then_some(())
        },
    )
    .await;
}

/// The health states of echo's instances that an agent's list goes
/// through, followed with blocking queries (`?index=`), so that a state
/// that lasts less than a poll interval is still seen.
struct EchoHistory {
    admin: std::net::SocketAddr,
    index: u64,
    seen: Vec<Vec<String>>,
}

impl EchoHistory {
    async fn start(agent: &AgentProc) -> Self {
        let mut history = Self {
            admin: agent.listeners.admin,
            index: 0,
            seen: Vec::new(),
        };
        history.next(Duration::ZERO).await;
        history
    }

    /// One read, blocking up to `wait` for a change past the last index.
    async fn next(&mut self, wait: Duration) {
        let path = format!(
            "/v1/services/echo/instances?index={}&wait={}ms",
            self.index,
            wait.as_millis()
        );
        let (status, headers, body) = tokio::time::timeout(
            wait + Duration::from_secs(10),
            http_get(self.admin, &path, &[]),
        )
        .await
        .expect("a blocking query answers after its wait at the latest")
        .expect("answer");
        assert_eq!(status, 200, "{body}");
        self.index = headers
            .get(mesh_proto::api::INDEX_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("index header");
        let view: mesh_proto::api::InstancesView =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        let mut health: Vec<String> = view
            .eligible
            .iter()
            .chain(view.ineligible.iter())
            .map(|i| format!("{:?}", i.instance.health).to_lowercase())
            .collect();
        health.sort();
        if self.seen.last() != Some(&health) {
            self.seen.push(health);
        }
    }

    /// Follows the list until it went critical and then passing again.
    async fn until_passing_after_critical(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let critical_at = self.seen.iter().position(|h| h == &["critical"]);
            let passing_after =
                critical_at.is_some_and(|at| self.seen[at..].iter().any(|h| h == &["passing"]));
            if passing_after {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "echo's states as b saw them: {:?}; expected passing, critical, passing",
                self.seen
            );
            self.next(Duration::from_secs(5)).await;
        }
    }
}

/// The next line from a reader thread, if one comes within 20 s.
async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .ok()
        .flatten()
}

fn upstream(headers: &http::HeaderMap) -> String {
    headers
        .get("x-gossamer-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn supervised_echo_serves_through_another_agent_and_comes_back_after_a_kill() {
    // The passphrase is in the agent's environment, as the README's tour
    // has it, so that a leak into the supervised process is possible.
    let a = AgentProc::start(supervising("sup-a", &[]).psk_in_env()).await;
    let b = AgentProc::start(Spec::new("sup-b").join(&a)).await;
    let mut reaper = Reaper::default();
    reaper.track(&a);
    reaper.track(&b);
    wait_alive(&[&a, &b], &["sup-a", "sup-b"], Duration::from_secs(20)).await;
    wait_passing(&b, 1).await;

    // A call from b's side reaches the copy a supervises.
    let (status, headers, body) = http_get(b.listeners.proxy, "/", &[("host", "echo.localhost")])
        .await
        .expect("answer");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("echo@sup-a"), "{body}");
    assert_eq!(upstream(&headers), "sup-a/echo-sup-a-1");

    // The supervisor gave the copy its port and the agent's addresses.
    let view = ps(&a).await.expect("ps");
    let first = view.processes[0].clone();
    let pid = first.pid.expect("running");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    let environ = String::from_utf8_lossy(&environ);
    let port = first.port.expect("port");
    assert!(environ.contains(&format!("SERVICE_PORT={port}")));
    assert!(environ.contains(&format!("PROXY_ADDR={}", a.listeners.proxy)));
    assert!(environ.contains(&format!("GOSSAMER_AGENT=http://{}", a.listeners.admin)));
    // The agent itself runs with GOSSAMER_PSK and GOSSAMER_LOG: neither,
    // nor any other agent setting, reaches the service.
    let agent_environ = std::fs::read(format!("/proc/{}/environ", a.pid().expect("agent pid")))
        .expect("agent environ");
    assert!(
        String::from_utf8_lossy(&agent_environ).contains(&format!("GOSSAMER_PSK={}", common::PSK)),
        "the test must run the agent with GOSSAMER_PSK, or there is nothing to leak"
    );
    let leaked: Vec<&str> = environ
        .split('\0')
        .filter(|kv| kv.starts_with("GOSSAMER_") && !kv.starts_with("GOSSAMER_AGENT="))
        .collect();
    assert!(
        leaked.is_empty(),
        "agent settings leaked into the service's environment: {leaked:?}"
    );
    assert!(
        !environ.contains(common::PSK),
        "the cluster passphrase must not leak into the service's environment"
    );

    // Killed: critical everywhere at once, then back after the restart.
    // The critical spell lasts about the restart backoff (500 ms): rather
    // than hope a poll lands in it, follow b's list with blocking queries,
    // which answer at each change, and check the states come in order.
    let mut history = EchoHistory::start(&b).await;
    kill9(pid);
    history.until_passing_after_critical().await;
    let b_ref = &b;
    wait_passing(&b, 1).await;
    let view = ps(&a).await.expect("ps");
    let now = &view.processes[0];
    assert_eq!(now.restarts, 1, "{now:?}");
    assert_ne!(now.pid, Some(pid));
    assert!(
        now.last_exit.as_deref().unwrap_or("").contains("signal 9"),
        "{now:?}"
    );
    let (status, _, body) = http_get(b.listeners.proxy, "/", &[("host", "echo.localhost")])
        .await
        .expect("answer");
    assert_eq!(status, 200, "{body}");

    // SIGTERM: deregistered first (gone from b's list, not critical), then
    // the process is stopped.
    let new_pid = now.pid.expect("pid");
    let mut a = a;
    let status = a.terminate().expect("exit status");
    assert!(status.success(), "agent exit: {status}");
    assert!(
        !common::alive(new_pid),
        "the supervised process outlived its agent"
    );
    eventually(
        "b to drop the instance",
        Duration::from_secs(10),
        || async move { echo_health(b_ref).await.is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn scale_three_runs_three_instances_with_logs_and_ps() {
    let a = AgentProc::start(supervising("scale-a", &["--scale", "3"])).await;
    let mut reaper = Reaper::default();
    reaper.track(&a);
    wait_passing(&a, 3).await;

    let view = ps(&a).await.expect("ps");
    assert_eq!(view.processes.len(), 3);
    let mut ports: Vec<u16> = view.processes.iter().filter_map(|p| p.port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3, "each copy has its own port: {view:?}");
    for p in &view.processes {
        assert!(common::alive(p.pid.expect("pid")), "{p:?}");
    }
    let instances = a
        .client()
        .instances("echo", &Default::default())
        .await
        .expect("instances");
    let mut addresses: Vec<u16> = instances
        .eligible
        .iter()
        .map(|i| i.instance.address.port())
        .collect();
    addresses.sort();
    assert_eq!(addresses, ports, "the catalog lists the ports ps shows");

    // `ps` for people.
    let (ok, out, err) = cli(&a, &["ps"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("SERVICE"), "{out}");
    for p in &view.processes {
        let row = out
            .lines()
            .find(|l| l.contains(&p.instance))
            .unwrap_or_else(|| panic!("no row for {}: {out}", p.instance));
        for cell in [
            p.pid.expect("pid").to_string(),
            p.port.expect("port").to_string(),
            "running".to_owned(),
            "passing".to_owned(),
        ] {
            assert!(row.contains(&cell), "{cell} missing in {row:?}");
        }
    }

    // Logs: every copy's output, prefixed with its instance, in time order.
    let (ok, out, err) = cli(&a, &["logs", "echo"]);
    assert!(ok, "{err}");
    for p in &view.processes {
        let prefix = format!("{} | echo service", p.instance);
        assert!(
            out.lines().any(|l| l.starts_with(&prefix)
                && l.contains(&format!("127.0.0.1:{}", p.port.expect("port")))),
            "no line {prefix:?} naming its port in:\n{out}"
        );
    }
    let (ok, out, _) = cli(&a, &["--json", "logs", "echo"]);
    assert!(ok);
    let stamps: Vec<u64> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json line")["ts_us"]
                .as_u64()
                .expect("ts")
        })
        .collect();
    assert!(stamps.len() >= 6, "{out}");
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "merged in time order"
    );
    let (ok, out, _) = cli(&a, &["logs", "echo", "--tail", "2"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 2, "{out}");

    // `logs -f --tail 1` prints the newest line, then only what comes after.
    let mut follow = common::gossamer()
        .arg("--agent")
        .arg(format!("http://{}", a.listeners.admin))
        .args(["logs", "echo", "-f", "--tail", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("logs -f");
    let stdout = follow.stdout.take().expect("stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let newest = next_line(&mut rx)
        .await
        .expect("logs -f printed the newest line");
    let victim = view.processes[1].clone();
    kill9(victim.pid.expect("pid"));
    let wanted = format!("{} | gossamer: exited", victim.instance);
    let after_kill = next_line(&mut rx).await;
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        after_kill
            .as_deref()
            .is_some_and(|l| l.starts_with(&wanted)),
        "after {newest:?}, logs -f showed {after_kill:?}, not the exit of {}",
        victim.instance
    );
    wait_passing(&a, 3).await;
}

#[tokio::test]
async fn rolling_restart_under_load_loses_no_call() {
    let a = AgentProc::start(supervising("roll-a", &["--scale", "2"])).await;
    let b = AgentProc::start(Spec::new("roll-b").join(&a)).await;
    let mut reaper = Reaper::default();
    reaper.track(&a);
    reaper.track(&b);
    wait_alive(&[&a, &b], &["roll-a", "roll-b"], Duration::from_secs(20)).await;
    wait_passing(&b, 2).await;
    let before: Vec<u32> = ps(&a)
        .await
        .expect("ps")
        .processes
        .iter()
        .filter_map(|p| p.pid)
        .collect();

    // The restart runs in the background while four workers send GETs
    // through b, each taking 30 ms so some are always in flight at a copy
    // when it is taken down: only a copy drained before it stops serves
    // them all.
    let admin = a.listeners.admin;
    let restart = tokio::spawn(async move {
        http_request(admin, "POST", "/v1/supervise/echo/restart", &[], Vec::new()).await
    });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(45);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let done = done.clone();
            let proxy = b.listeners.proxy;
            tokio::spawn(async move {
                let mut calls = 0usize;
                let mut failures = Vec::new();
                let mut served = std::collections::BTreeMap::<String, usize>::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed)
                    && calls < 5_000
                    && Instant::now() < deadline
                {
                    calls += 1;
                    match http_get(proxy, "/?delay_ms=30", &[("host", "echo.localhost")]).await {
                        Some((200, headers, _)) => {
                            *served.entry(upstream(&headers)).or_default() += 1
                        }
                        Some((status, _, body)) => failures.push(format!("{status}: {body}")),
                        None => failures.push("no answer".to_owned()),
                    }
                }
                (calls, failures, served)
            })
        })
        .collect();
    let finished = tokio::time::timeout(Duration::from_secs(45), restart).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut calls = 0;
    let mut failures = Vec::new();
    let mut served = std::collections::BTreeMap::<String, usize>::new();
    for worker in workers {
        let (n, failed, by) = worker.await.expect("worker");
        calls += n;
        failures.extend(failed);
        for (k, v) in by {
            *served.entry(k).or_default() += v;
        }
    }
    let restart = finished.expect("the rolling restart did not finish in time");
    let (status, _, body) = restart.expect("join").expect("restart answer");
    assert_eq!(status, 200, "{body}");
    let report: RestartView = serde_json::from_str(&body).expect("restart view");
    assert_eq!(report.restarted, ["echo-roll-a-1", "echo-roll-a-2"]);
    eprintln!(
        "{calls} GETs during a {} ms rolling restart, served by {served:?}",
        report.took_ms
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:?}",
        failures.len()
    );
    assert!(calls >= 20, "too few calls to mean anything: {calls}");

    let after = ps(&a).await.expect("ps");
    for p in &after.processes {
        assert!(
            !before.contains(&p.pid.expect("pid")),
            "{p:?} was not restarted"
        );
        assert_eq!(p.restarts, 1);
    }
    for pid in before {
        assert!(!common::alive(pid), "old process {pid} still runs");
    }
    // Unknown names are explained.
    let (ok, _, err) = cli(&a, &["restart", "nosuch"]);
    assert!(!ok);
    assert!(
        err.contains("supervises no service") && err.contains("echo"),
        "{err}"
    );
}

/// Waits (at most 30 s) until the load workers sent `n` calls in all.
async fn sent_at_least(sent: &std::sync::atomic::AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent.load(std::sync::atomic::Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "fewer than {n} calls in 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn scale_up_and_down_at_run_time_under_load_through_another_agent_loses_no_call() {
    let a = AgentProc::start(supervising("scale-a", &["--scale", "1"])).await;
    let b = AgentProc::start(Spec::new("scale-b").join(&a)).await;
    let mut reaper = Reaper::default();
    reaper.track(&a);
    reaper.track(&b);
    wait_alive(&[&a, &b], &["scale-a", "scale-b"], Duration::from_secs(20)).await;
    wait_passing(&b, 1).await;

    // Four workers GET through b while a scales echo 1 -> 3 -> 1: the
    // copies leaving are deregistered, b learns it by gossip, and only
    // then do they stop.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(60);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let done = done.clone();
            let sent = sent.clone();
            let proxy = b.listeners.proxy;
            tokio::spawn(async move {
                let (mut calls, mut failures) = (0usize, Vec::new());
                while !done.load(std::sync::atomic::Ordering::Relaxed)
                    && calls < 10_000
                    && Instant::now() < deadline
                {
                    calls += 1;
                    sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match http_get(proxy, "/?delay_ms=20", &[("host", "echo.localhost")]).await {
                        Some((200, _, _)) => {}
                        Some((status, _, body)) => failures.push(format!("{status}: {body}")),
                        None => failures.push("no answer".to_owned()),
                    }
                }
                (calls, failures)
            })
        })
        .collect();
    // The CLI runs off the test's runtime, so the workers keep calling
    // while it waits for the copies.
    let admin = a.listeners.admin;
    let scale = |n: &'static str| {
        tokio::task::spawn_blocking(move || {
            let output = common::gossamer()
                .arg("--agent")
                .arg(format!("http://{admin}"))
                .args(["scale", "echo", n])
                .output()
                .expect("run gossamer");
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        })
    };
    let (ok, out, err) = scale("3").await.expect("scale 3");
    assert!(ok, "{err}");
    assert!(out.contains("1 -> 3"), "{out}");
    wait_passing(&b, 3).await;
    // Calls spread over three copies before two of them leave.
    sent_at_least(&sent, 100).await;
    let (ok, out, err) = scale("1").await.expect("scale 1");
    assert!(ok, "{err}");
    assert!(
        out.contains("echo-scale-a-3, echo-scale-a-2"),
        "newest first: {out}"
    );
    wait_passing(&b, 1).await;
    let now = sent.load(std::sync::atomic::Ordering::Relaxed);
    sent_at_least(&sent, now + 100).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut calls, mut failures) = (0, Vec::new());
    for worker in workers {
        let (n, failed) = worker.await.expect("worker");
        calls += n;
        failures.extend(failed);
    }
    eprintln!(
        "scale 1 -> 3 -> 1 through another agent: {calls} GETs, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:?}",
        failures.len()
    );
    assert!(calls >= 200, "too few calls to mean anything: {calls}");
    let view = ps(&a).await.expect("ps");
    assert_eq!(view.processes.len(), 1);
    assert_eq!(view.processes[0].copy, 1, "the oldest copy stays");

    // stop, then start.
    let (ok, out, err) = cli(&a, &["stop", "echo"]);
    assert!(ok && out.contains("1 -> 0"), "{out}{err}");
    wait_passing(&b, 0).await;
    let (ok, out, _) = cli(&a, &["ps"]);
    assert!(ok && out.contains("echo: stopped"), "{out}");
    let (ok, out, err) = cli(&a, &["start", "echo"]);
    assert!(ok && out.contains("0 -> 1"), "{out}{err}");
    wait_passing(&b, 1).await;
    // A bad scale is explained.
    let (ok, _, err) = cli(&a, &["scale", "echo", "500"]);
    assert!(!ok && err.contains("out of range"), "{err}");
}

#[tokio::test]
async fn an_earlier_runs_process_is_reported_not_killed() {
    let mut a = AgentProc::start(supervising("stray-a", &[])).await;
    let mut reaper = Reaper::default();
    reaper.track(&a);
    wait_passing(&a, 1).await;
    let old = ps(&a).await.expect("ps").processes[0].clone();
    let old_pid = old.pid.expect("pid");

    // A crash of the agent leaves its process running.
    a.kill();
    assert!(common::alive(old_pid));
    a.restart().await;
    reaper.track(&a);
    wait_passing(&a, 1).await;
    let view = ps(&a).await.expect("ps");
    assert_eq!(view.strays.len(), 1, "{view:?}");
    let stray = &view.strays[0];
    assert_eq!(stray.record.pid, old_pid);
    assert!(stray.holds_port);
    assert!(common::alive(old_pid), "the stray was killed");
    assert_ne!(
        view.processes[0].port, old.port,
        "the new copy took a free port"
    );
    assert!(
        a.log().contains(&format!("kill {old_pid}")),
        "the stray is reported in the log"
    );
    let (ok, out, _) = cli(&a, &["ps"]);
    assert!(ok);
    assert!(
        out.contains("earlier run") && out.contains(&old_pid.to_string()),
        "{out}"
    );

    // Once the operator stops it, its record goes.
    kill9(old_pid);
    let a_ref = &a;
    eventually(
        "the stray to leave ps",
        Duration::from_secs(10),
        || async move { ps(a_ref).await.filter(|v| v.strays.is_empty()).map(|_| ()) },
    )
    .await;

    // A crash that took the process down too leaves only a record: removed
    // at the next start, with nothing reported.
    let current = ps(&a).await.expect("ps").processes[0].pid.expect("pid");
    a.kill();
    kill9(current);
    let record = a.data_dir.join("supervise/echo/1.pid.json");
    assert!(record.exists(), "the crash left the process record");
    a.restart().await;
    reaper.track(&a);
    wait_passing(&a, 1).await;
    let view = ps(&a).await.expect("ps");
    assert!(view.strays.is_empty(), "{view:?}");
    assert_ne!(view.processes[0].pid, Some(current));
    let now: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).expect("the new copy's record"))
            .expect("json");
    assert_eq!(now["pid"].as_u64(), view.processes[0].pid.map(u64::from));
}

#[tokio::test]
async fn config_file_services_and_placement_by_cpu_and_memory() {
    let dir = std::env::temp_dir().join(format!("gossamer-sup-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[supervise]]
name = "huge"
command = ["{GOSSAMER}", "echo", "--listen", "127.0.0.1:${{SERVICE_PORT}}", "--name", "huge"]
env = {{ GREETING = "port ${{SERVICE_PORT}}" }}
health = "/status/200"
cpu_millis = 100000000
memory_mb = 1
"#
        ),
    )
    .expect("write config");
    let a = AgentProc::start(
        Spec::new("place-a")
            .arg("--config")
            .arg(config.to_string_lossy()),
    )
    .await;
    let b = AgentProc::start(Spec::new("place-b").join(&a)).await;
    let mut reaper = Reaper::default();
    reaper.track(&a);
    reaper.track(&b);
    wait_alive(&[&a, &b], &["place-a", "place-b"], Duration::from_secs(20)).await;

    // The service runs, its requirements went to its definition, and its
    // own node warned that it has no room for it.
    let (a_ref, b_ref) = (&a, &b);
    let view = eventually(
        "the huge service to run",
        Duration::from_secs(20),
        || async move {
            ps(a_ref)
                .await
                .filter(|v| v.processes.iter().any(|p| p.health.is_some()))
        },
    )
    .await;
    let pid = view.processes[0].pid.expect("pid");
    let port = view.processes[0].port.expect("port");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(String::from_utf8_lossy(&environ).contains(&format!("GREETING=port {port}")));
    let definition = eventually(
        "b to learn the definition",
        Duration::from_secs(10),
        || async move { b_ref.client().definition("huge").await.ok() },
    )
    .await;
    assert_eq!(definition.requirements.cpu_millis, Some(100_000_000));
    assert!(
        a.log().contains("does not fit"),
        "no placement warning in a's log"
    );

    let (ok, out, err) = cli(&b, &["nodes", "--fits", "huge"]);
    assert!(ok, "{err}");
    assert!(out.contains("0 of 2 nodes fit"), "{out}");

    // A small service fits b, whose CPU nothing reserves, and not a.
    let mut small = definition.clone();
    small.name = "small".into();
    small.requirements.cpu_millis = Some(100);
    small.requirements.memory_mb = Some(16);
    b.client().put_definition(&small).await.expect("put");
    let out = eventually(
        "a to learn the small definition",
        Duration::from_secs(10),
        || async move {
            let (ok, out, _) = cli(a_ref, &["nodes", "--fits", "small"]);
            (ok && out.contains("1 of 2 nodes fit")).then_some(out)
        },
    )
    .await;
    assert!(out.contains("place-b") && !out.contains("place-a"), "{out}");
    let (ok, out, _) = cli(&a, &["--json", "nodes"]);
    assert!(ok);
    let nodes: serde_json::Value = serde_json::from_str(&out).expect("json");
    let a_node = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["node"] == "place-a")
        .expect("place-a")
        .clone();
    assert!(a_node["cpus"].as_u64().expect("cpus") >= 1);
    assert!(a_node["memory_mb"].as_u64().expect("memory") > 0);
    assert_eq!(
        a_node["free_cpu_millis"], 0,
        "the huge copy reserves every CPU"
    );

    let (ok, _, err) = cli(&a, &["nodes", "--fits", "nosuch"]);
    assert!(!ok);
    assert!(err.contains("no definition"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_stopping_agent_deregisters_its_copy_before_it_stops_the_process_or_leaves() {
    // A long drain holds the window open: between the deregistration and the
    // end of the drain the agent is still a live member and the process
    // still runs. Only a deregistration made first (not the one the copy
    // makes once its process is gone, nor the peers' dropping of a node
    // that left) empties b's list in that window.
    let dir = std::env::temp_dir().join(format!("gossamer-sup-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[supervise]]
name = "echo"
command = ["{GOSSAMER}", "echo", "--name", "echo@drain-a"]
drain_ms = 20000
grace_ms = 2000
"#
        ),
    )
    .expect("write config");
    let mut a = AgentProc::start(
        Spec::new("drain-a")
            .arg("--config")
            .arg(config.to_string_lossy()),
    )
    .await;
    let b = AgentProc::start(Spec::new("drain-b").join(&a)).await;
    let mut reaper = Reaper::default();
    reaper.track(&a);
    reaper.track(&b);
    wait_alive(&[&a, &b], &["drain-a", "drain-b"], Duration::from_secs(20)).await;
    wait_passing(&b, 1).await;
    let pid = ps(&a).await.expect("ps").processes[0].pid.expect("running");

    a.send_term();
    let b_ref = &b;
    // Well inside the 20 s drain: what b sees must come from the
    // deregistration, while a is alive and its process serves.
    eventually(
        "b to drop the instance while drain-a is still alive and its process runs",
        Duration::from_secs(15),
        || async move {
            if !echo_health(b_ref).await.is_empty() {
                return None;
            }
            assert!(
                common::alive(pid),
                "the process stopped before b saw the instance deregistered"
            );
            assert!(
                b_ref
                    .members_in("alive")
                    .await
                    .contains(&"drain-a".to_owned()),
                "drain-a left before b saw its instance deregistered"
            );
            Some(())
        },
    )
    .await;
    let status = a.wait_exit(Duration::from_secs(40)).expect("exit status");
    assert!(status.success(), "agent exit: {status}");
    assert!(
        !common::alive(pid),
        "the supervised process outlived its agent"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_process_that_keeps_exiting_is_restarted_with_doubling_capped_delays() {
    let dir = std::env::temp_dir().join(format!("gossamer-sup-backoff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        r#"
[[supervise]]
name = "flaky"
command = ["sh", "-c", "echo up; exit 3"]
restart_backoff_ms = 200
restart_backoff_max_ms = 800
"#,
    )
    .expect("write config");
    let a = AgentProc::start(
        Spec::new("backoff-a")
            .arg("--config")
            .arg(config.to_string_lossy()),
    )
    .await;
    let mut reaper = Reaper::default();
    reaper.track(&a);

    // The supervisor's notes in the copy's log: one "restarting in N ms"
    // per exit. Order and values, not timing: 200, 400, 800, then capped.
    let log = a
        .data_dir
        .join("supervise/flaky/logs/flaky-backoff-a-1.log");
    let delays = eventually(
        "five restarts of the flaky process",
        Duration::from_secs(60),
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).ok()?;
                let delays: Vec<u64> = text
                    .lines()
                    .filter_map(|l| {
                        let rest = &l[l.find("restarting in ")? + "restarting in ".len()..];
                        rest.split(' ').next()?.parse().ok()
                    })
                    .collect();
                (delays.len() >= 5).then_some(delays)
            }
        },
    )
    .await;
    assert_eq!(delays[..5], [200, 400, 800, 800, 800], "{delays:?}");
    let view = ps(&a).await.expect("ps");
    let copy = &view.processes[0];
    // The count grows when the next process starts, after its delay.
    assert!(copy.restarts >= 4, "{copy:?}");
    assert!(
        copy.last_exit
            .as_deref()
            .unwrap_or("")
            .contains("exit code 3"),
        "the exit code is reported: {copy:?}"
    );
    // Never served: listed critical (so an operator sees it), never
    // eligible, so nobody routes to it.
    let view = a
        .client()
        .instances("flaky", &Default::default())
        .await
        .expect("instances");
    assert!(view.eligible.is_empty(), "{view:?}");
    assert!(
        view.ineligible
            .iter()
            .all(|i| i.instance.health == mesh_proto::catalog::Health::Critical),
        "{view:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_failing_health_check_marks_a_running_copy_critical_until_it_passes_again() {
    let dir = std::env::temp_dir().join(format!("gossamer-sup-health-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[supervise]]
name = "echo"
command = ["{GOSSAMER}", "echo", "--name", "echo@health-a"]
health = "/status/200"
check_interval_ms = 300
"#
        ),
    )
    .expect("write config");
    let a = AgentProc::start(
        Spec::new("health-a")
            .arg("--config")
            .arg(config.to_string_lossy()),
    )
    .await;
    let b = AgentProc::start(Spec::new("health-b").join(&a)).await;
    let mut reaper = Reaper::default();
    reaper.track(&a);
    reaper.track(&b);
    wait_alive(
        &[&a, &b],
        &["health-a", "health-b"],
        Duration::from_secs(20),
    )
    .await;
    wait_passing(&b, 1).await;
    let pid = ps(&a).await.expect("ps").processes[0].pid.expect("running");

    // Stopped (SIGSTOP), the process still runs and holds its port but
    // answers nothing: its checks fail, and it is marked critical, not
    // restarted.
    let signal = |sig: &str| {
        let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
    };
    signal("-STOP");
    let b_ref = &b;
    eventually(
        "b to see the unresponsive copy critical",
        Duration::from_secs(60),
        || async move {
            (echo_health(b_ref).await == [("echo-health-a-1".to_owned(), "critical".to_owned())])
                .then_some(())
        },
    )
    .await;
    let view = ps(&a).await.expect("ps");
    assert_eq!(view.processes[0].pid, Some(pid), "{view:?}");
    assert_eq!(view.processes[0].restarts, 0, "{view:?}");

    // Answering again: passing again, the same process.
    signal("-CONT");
    wait_passing(&b, 1).await;
    let view = ps(&a).await.expect("ps");
    assert_eq!(view.processes[0].pid, Some(pid), "{view:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_chatty_process_log_is_rotated_by_size_keeping_the_configured_files() {
    let dir = std::env::temp_dir().join(format!("gossamer-sup-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("agent.toml");
    // 400 numbered lines of about 60 bytes (about 24 KB), then the echo
    // service, so the copy becomes ready and the lines are all written.
    std::fs::write(
        &config,
        format!(
            r#"
[[supervise]]
name = "chatty"
command = ["sh", "-c", "i=0; while [ $i -lt 400 ]; do echo \"chatty line $i padding padding padding\"; i=$((i+1)); done; exec {GOSSAMER} echo --name chatty"]
log_max_bytes = 2048
log_files = 2
"#
        ),
    )
    .expect("write config");
    let a = AgentProc::start(
        Spec::new("rotate-a")
            .arg("--config")
            .arg(config.to_string_lossy()),
    )
    .await;
    let mut reaper = Reaper::default();
    reaper.track(&a);

    let logs = a.data_dir.join("supervise/chatty/logs");
    let current = logs.join("chatty-rotate-a-1.log");
    let read = |suffix: &str| {
        std::fs::read_to_string(logs.join(format!("chatty-rotate-a-1.log{suffix}")))
            .unwrap_or_default()
    };
    eventually(
        "the last line to be written",
        Duration::from_secs(30),
        || async {
            (read("").contains("chatty line 399") || read(".1").contains("chatty line 399"))
                .then_some(())
        },
    )
    .await;
    // The current file and two rotated ones, none over the limit (plus
    // one line), and no third: the oldest lines were dropped.
    for suffix in ["", ".1", ".2"] {
        let text = read(suffix);
        assert!(
            !text.is_empty(),
            "{}{suffix} is missing or empty",
            current.display()
        );
        assert!(
            text.len() <= 2048,
            "{}{suffix} holds {} bytes",
            current.display(),
            text.len()
        );
    }
    assert!(
        !logs.join("chatty-rotate-a-1.log.3").exists(),
        "more files kept than log_files = 2"
    );
    assert!(
        !format!("{}{}{}", read(".2"), read(".1"), read("")).contains("chatty line 0 "),
        "the oldest lines should be gone"
    );
    // The kept lines are the newest, in order, across the files.
    let kept: Vec<u32> = format!("{}{}{}", read(".2"), read(".1"), read(""))
        .lines()
        .filter_map(|l| {
            l.split("chatty line ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
    assert_eq!(kept.last(), Some(&399));
    let _ = std::fs::remove_dir_all(&dir);
}
