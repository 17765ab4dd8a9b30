//! The SDK (`client` crate) against real agents: lookup under requirements,
//! a watch that sees changes and outlives an agent restart, the client-side
//! balancer, and the three examples in `client/examples/` run as programs.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use client::{
    Balancer, BalancerOptions, Client, Error, Indexed, Ineligible, InstancesView, Outcome,
    RegisterInstance, Requirements, RttSource, WatchOptions,
};
use common::{delayed_trio, echo_service, eventually, http_get, wait_instances_measured};
use common::{AgentProc, Spec};
use futures_util::StreamExt;

const HARD_30: Requirements = Requirements {
    hard_rtt_ms: Some(30),
    soft_rtt_ms: None,
};

// === lookup, balancer and the lookup / call_with_balancer examples ===

/// Agents a, b, c with an echo instance each; links from a: 5 ms to b,
/// 60 ms to c. Under hard 30 ms only a's and b's instances may be used.
#[tokio::test]
async fn lookup_and_balancer_honour_requirements() {
    let examples = tokio::task::spawn_blocking(build_examples);
    let trio = delayed_trio("sdk", "echo", true, (5, 60), &[]).await;
    wait_instances_measured(&trio.a, "echo", 3).await;
    let ports: BTreeMap<String, u16> = trio.echo_ports.iter().cloned().collect();
    let agent = trio.a.client();

    // instances(): address, node, health, RTT and its source, eligibility.
    let view = eventually("c to be over hard 30 ms", Duration::from_secs(20), || {
        let agent = agent.clone();
        async move {
            let view = agent.instances("echo", &HARD_30).await.ok()?;
            (view.eligible.len() == 2 && view.ineligible.len() == 1).then_some(view)
        }
    })
    .await;
    assert_eq!(view.hard_rtt_ms, Some(30));
    let mut eligible_nodes: Vec<&str> = view
        .eligible
        .iter()
        .map(|i| i.instance.node.as_str())
        .collect();
    eligible_nodes.sort();
    assert_eq!(eligible_nodes, ["sdk-a", "sdk-b"]);
    for i in view.eligible.iter().chain(&view.ineligible) {
        let node = i.instance.node.as_str();
        assert_eq!(i.instance.address.port(), ports[node], "address of {node}");
        assert_eq!(i.rtt_source, RttSource::Measured, "{node}");
        assert_eq!(i.instance.health, client::Health::Passing, "{node}");
    }
    let local = view
        .eligible
        .iter()
        .find(|i| i.instance.node.as_str() == "sdk-a");
    assert_eq!(local.and_then(|i| i.rtt_ms), Some(0.0));
    let far = &view.ineligible[0];
    assert_eq!(far.instance.node.as_str(), "sdk-c");
    match far.ineligible {
        Some(Ineligible::OverHardRtt {
            rtt_ms,
            hard_rtt_ms: 30,
        }) => assert!(rtt_ms > 30.0, "{rtt_ms}"),
        ref other => panic!("expected over hard RTT, got {other:?}"),
    }
    // Soft 1 ms: both stay eligible, only the local one is within soft.
    let soft = agent
        .instances(
            "echo",
            &Requirements {
                hard_rtt_ms: Some(30),
                soft_rtt_ms: Some(1),
            },
        )
        .await
        .expect("instances with soft");
    let within: Vec<(&str, bool)> = soft
        .eligible
        .iter()
        .map(|i| (i.instance.node.as_str(), i.within_soft))
        .collect();
    assert_eq!(within, [("sdk-a", true), ("sdk-b", false)]);
    // Typed errors: a bad name never reaches the agent.
    assert!(matches!(
        agent.instances("Not A Name", &HARD_30).await,
        Err(Error::InvalidName(_))
    ));

    // The balancer spreads real calls over a and b, never c.
    let options = BalancerOptions {
        requirements: HARD_30,
        ..BalancerOptions::default()
    };
    let balancer = Balancer::with_seed(agent.clone(), "echo", options, 42);
    let mut calls: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..15 {
        // Four at a time, so in-flight counts steer power of two choices.
        let mut wave = Vec::new();
        for _ in 0..4 {
            wave.push(balancer.pick().await.expect("pick"));
        }
        for picked in wave {
            let answer = http_get(picked.address, "/echo", &[]).await;
            let ok = matches!(answer, Some((200, _, _)));
            assert!(ok, "call to {} failed: {answer:?}", picked.address);
            *calls.entry(picked.node.clone()).or_default() += 1;
            let outcome = picked.outcome(ok);
            balancer.report(picked, outcome);
        }
    }
    eprintln!("balancer calls by node: {calls:?}");
    assert_eq!(calls.keys().collect::<Vec<_>>(), ["sdk-a", "sdk-b"]);

    // The caller reports b failing: b is avoided from then on.
    let mut b_failures = 0;
    let mut after_failure: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..10 {
        let mut wave = Vec::new();
        for _ in 0..4 {
            wave.push(balancer.pick().await.expect("pick"));
        }
        for picked in wave {
            let latency = Duration::from_millis(1);
            if picked.node == "sdk-b" {
                b_failures += 1;
                balancer.report(picked, Outcome::Failure { latency });
            } else {
                if b_failures > 0 {
                    *after_failure.entry(picked.node.clone()).or_default() += 1;
                }
                balancer.report(picked, Outcome::Success { latency });
            }
        }
        if b_failures > 0 && after_failure.values().sum::<usize>() >= 20 {
            break;
        }
    }
    eprintln!("b reported failing {b_failures} times; later picks by node: {after_failure:?}");
    assert!(b_failures >= 1, "b was never picked");
    assert!(
        b_failures <= 4,
        "b picked {b_failures} times despite failing"
    );
    assert_eq!(after_failure.keys().collect::<Vec<_>>(), ["sdk-a"]);

    // The examples, as a user runs them.
    let examples = examples.await.expect("build task");
    let url = format!("http://{}", trio.a.listeners.admin);
    let lookup = run_example(
        &examples,
        "lookup",
        &["--agent", &url, "echo", "--hard-rtt", "30"],
        &[],
    )
    .await;
    assert!(lookup.0, "lookup failed:\n{}", lookup.1);
    assert!(
        lookup.1.contains("effective requirements: hard 30 ms")
            && lookup.1.contains("2 eligible, 1 ineligible")
            && lookup.1.contains("sdk-c")
            && lookup.1.contains("OverHardRtt")
            && lookup.1.contains("(measured)"),
        "{}",
        lookup.1
    );
    let listing = run_example(&examples, "lookup", &[], &[("GOSSAMER_AGENT", &url)]).await;
    assert!(listing.0 && listing.1.contains("echo"), "{}", listing.1);

    let call = run_example(
        &examples,
        "call_with_balancer",
        &["--agent", &url, "echo", "--hard-rtt", "30", "--count", "20"],
        &[],
    )
    .await;
    assert!(call.0, "call_with_balancer failed:\n{}", call.1);
    assert!(
        call.1
            .contains("20 calls to echo/echo: 20 succeeded, 0 failed")
            && !call.1.contains("sdk-c"),
        "{}",
        call.1
    );
    // A service without instances: a typed error with its name, exit 1.
    let none = run_example(
        &examples,
        "call_with_balancer",
        &["--agent", &url, "nothing-here", "--count", "1"],
        &[],
    )
    .await;
    assert!(
        !none.0
            && none
                .1
                .contains("cannot pick an instance of \"nothing-here\""),
        "{}",
        none.1
    );
}

// === watch across an agent restart, and the watch example ===

#[tokio::test]
async fn watch_sees_changes_and_outlives_an_agent_restart() {
    let examples = tokio::task::spawn_blocking(build_examples);
    let mut agent = AgentProc::start(Spec::new("sdkw-1")).await;
    // The harness restarts an agent on a new admin port; a deployment keeps
    // its port. A forwarder gives the watch one address throughout.
    let forward = Forwarder::start(agent.listeners.admin).await;
    let url = format!("http://{}", forward.addr);
    let watcher = Client::new(&url).expect("client");
    // A wait far longer than next_update's 30 s: an update that arrives at
    // all was a wake on the change, not the end of a wait.
    let options = WatchOptions {
        wait: Duration::from_secs(120),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        ..WatchOptions::default()
    };
    let watch = watcher.watch_with("web", options);
    assert_eq!(watch.service(), "web");
    // Polled all the time, as a consumer would, so the restart below lands
    // on a query in flight.
    let (updates, mut received) = tokio::sync::mpsc::unbounded_channel();
    let pump = tokio::spawn(watch.for_each(move |item| {
        let _ = updates.send(item);
        std::future::ready(())
    }));
    let mut errors = 0;

    let first = next_update(&mut received, &mut errors, |_| true).await;
    assert!(first.value.eligible.is_empty() && first.value.ineligible.is_empty());

    // The watch example, started on the same (empty) service.
    let examples = examples.await.expect("build task");
    let mut example = tokio::process::Command::new(examples.join("watch"))
        .args(["web", "--count", "2"])
        .env("GOSSAMER_AGENT", &url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn watch example");
    let mut stdout = tokio::io::BufReader::new(example.stdout.take().expect("stdout"));
    let first_line = tokio::time::timeout(Duration::from_secs(20), async {
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line)
            .await
            .expect("read example output");
        line
    })
    .await
    .expect("watch example printed its first update");
    assert!(first_line.starts_with("update 1 "), "{first_line}");

    // A registration reaches the watch as one update.
    let (port1, _echo1) = echo_service("web-1").await;
    let registered_at = Instant::now();
    let one = register(&agent, "web-one", port1).await;
    let update = next_update(&mut received, &mut errors, |v| has(v, &one)).await;
    let seen_after = registered_at.elapsed();
    // A figure, not a bound: on a loaded machine it varies; what the test
    // holds is that it came before the watch's 120 s wait could end.
    eprintln!("watch saw the registration after {seen_after:?}");
    assert_eq!(update.value.eligible.len(), 1);
    assert_eq!(update.value.eligible[0].instance.address.port(), port1);
    let index_before_restart = update.index;

    let mut text = first_line;
    let status = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text)
            .await
            .expect("read example output");
        example.wait().await.expect("watch example status")
    })
    .await
    .expect("watch example ends after --count 2");
    assert!(status.success(), "{text}");
    assert!(
        text.contains("update 2 ") && text.contains("+ web-one"),
        "{text}"
    );

    // Push the index up, and leave a second watch idle at that index: a
    // restarted agent counts from 1 again, below it.
    for _ in 0..5 {
        register(&agent, "web-tmp", port1).await;
        agent
            .client()
            .deregister("web-tmp")
            .await
            .expect("deregister");
    }
    let mut idle = watcher.watch_with(
        "web",
        WatchOptions {
            wait: Duration::from_secs(120),
            ..WatchOptions::default()
        },
    );
    let before = next_direct(&mut idle, |v| has(v, "web-one")).await;

    // Restart: the watch reports the outage, then follows the new agent.
    agent.restart().await;
    forward.point_to(agent.listeners.admin);
    let (port2, _echo2) = echo_service("web-2").await;
    let two = register(&agent, "web-two", port2).await;
    // Bring the new agent's index to exactly the one the idle watch last
    // saw, with different contents: an index that means another state.
    let mut tmp_registered = false;
    let mut restarted_index = agent.client().health().await.expect("health").catalog_index;
    while restarted_index < before.index {
        if tmp_registered {
            agent
                .client()
                .deregister("web-tmp")
                .await
                .expect("deregister");
        } else {
            register(&agent, "web-tmp", port2).await;
        }
        tmp_registered = !tmp_registered;
        restarted_index = agent.client().health().await.expect("health").catalog_index;
    }
    assert_eq!(
        restarted_index, before.index,
        "each write should bump the index by one"
    );
    let errors_before = errors;
    let update = next_update(&mut received, &mut errors, |v| has(v, &two)).await;
    eprintln!(
        "after restart: {} errors reported, index {} -> {}",
        errors - errors_before,
        index_before_restart,
        update.index
    );
    assert!(errors > errors_before, "the outage went unreported");
    let ids: Vec<&str> = update
        .value
        .eligible
        .iter()
        .map(|i| i.instance.id.as_str())
        .collect();
    assert!(ids.contains(&"web-two"), "{ids:?}");

    // The idle watch was last told index N by the old agent, and the new
    // one is at N too: a query blocking on N would hang until its wait
    // (120 s) ran out. A watch that lost its connection asks without blocking.
    let started = Instant::now();
    let after = next_direct(&mut idle, |v| has(v, "web-two")).await;
    eprintln!(
        "idle watch: index {} -> {} in {:?}",
        before.index,
        after.index,
        started.elapsed()
    );

    // And the pumped watch keeps blocking on the restarted agent's index.
    agent
        .client()
        .deregister("web-two")
        .await
        .expect("deregister");
    next_update(&mut received, &mut errors, |v| !has(v, "web-two")).await;
    pump.abort();
}

// === helpers ===

fn has(view: &InstancesView, id: &str) -> bool {
    view.eligible
        .iter()
        .chain(&view.ineligible)
        .any(|i| i.instance.id == id)
}

async fn register(agent: &AgentProc, id: &str, port: u16) -> String {
    let registration = RegisterInstance {
        service: "web".to_owned(),
        port: Some(port),
        address: None,
        id: Some(id.to_owned()),
        deployment_id: None,
        tags: Vec::new(),
        health: None,
    };
    agent
        .client()
        .register(&registration)
        .await
        .expect("register")
        .id
}

/// The next update that satisfies `wanted`, within 30 s; errors are counted.
async fn next_update(
    watch: &mut tokio::sync::mpsc::UnboundedReceiver<Result<Indexed<InstancesView>, Error>>,
    errors: &mut usize,
    wanted: impl Fn(&InstancesView) -> bool,
) -> Indexed<InstancesView> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, watch.recv()).await {
            Err(_) => panic!("no wanted update within 30 s ({errors} errors so far)"),
            Ok(None) => panic!("the watch ended"),
            Ok(Some(Err(error))) => {
                assert!(error.is_transient(), "fatal watch error: {error}");
                *errors += 1;
            }
            Ok(Some(Ok(update))) if wanted(&update.value) => return update,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// The next update of `watch` that satisfies `wanted`, within 30 s, reading
/// the stream directly.
async fn next_direct(
    watch: &mut client::Watch,
    wanted: impl Fn(&InstancesView) -> bool,
) -> Indexed<InstancesView> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, watch.next()).await {
            Err(_) => panic!("no wanted update within 30 s"),
            Ok(None) => panic!("the watch ended"),
            Ok(Some(Err(error))) => assert!(error.is_transient(), "fatal watch error: {error}"),
            Ok(Some(Ok(update))) if wanted(&update.value) => return update,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Forwards TCP connections from a fixed loopback port to a target that can
/// be changed, standing in for an agent whose admin port survives restarts.
struct Forwarder {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind forwarder");
        let addr = listener.local_addr().expect("forwarder addr");
        let target = Arc::new(Mutex::new(target));
        let current = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *current.lock().expect("target");
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, target, task }
    }

    fn point_to(&self, target: SocketAddr) {
        *self.target.lock().expect("target") = target;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Builds the client examples (a no-op when `cargo test --workspace` built
/// them already) and returns the directory holding them. Once per process,
/// bounded in time.
fn build_examples() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        // target/<profile>/deps/sdk-HASH -> target/<profile>
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .ok_or("test binary outside a target dir")?
            .to_path_buf();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let log_path = std::env::temp_dir().join(format!(
            "gossamer-sdk-examples-build-{}.log",
            std::process::id()
        ));
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut child = std::process::Command::new(cargo)
            .args(["build", "--workspace", "--examples", "--profile", &profile])
            .args(["--manifest-path", manifest])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("cargo build --examples took over 600 s".to_owned());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let _ = std::fs::remove_file(&log_path);
        if !status.success() {
            return Err(format!("cargo build --examples failed: {log}"));
        }
        Ok(profile_dir.join("examples"))
    });
    built.clone().unwrap_or_else(|e| panic!("{e}"))
}

/// Runs one example to completion within 60 s: (success, stdout + stderr).
async fn run_example(
    dir: &std::path::Path,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (bool, String) {
    let mut command = tokio::process::Command::new(dir.join(name));
    for key in common::inherited_gossamer_vars() {
        command.env_remove(key);
    }
    command.args(args).kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("example {name} ran over 60 s"))
        .unwrap_or_else(|e| panic!("cannot run example {name}: {e}"));
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}
