//! The shared harness of the agent tests: starts real `gossamer agent`
//! processes on free loopback ports, waits for readiness by polling with a
//! deadline (never a fixed sleep), and stops or kills them.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::Client;

/// The passphrase every test cluster uses unless a test says otherwise.
pub const PSK: &str = "test-cluster-passphrase";

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Removes from `command`'s environment every `GOSSAMER_*` variable the test
/// process inherited (a shell that followed the README exports
/// `GOSSAMER_PSK`; a stray `GOSSAMER_JOIN` or `GOSSAMER_ADMIN_LISTEN` would
/// send an agent to someone else's cluster or to a fixed port). Variables
/// the test sets afterwards with `env` are kept.
pub fn scrub_env(command: &mut Command) -> &mut Command {
    for key in inherited_gossamer_vars() {
        command.env_remove(key);
    }
    command
}

/// The names of the `GOSSAMER_*` variables in this process's environment.
pub fn inherited_gossamer_vars() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(key, _)| key)
        .filter(|key| key.to_string_lossy().starts_with("GOSSAMER_"))
        .collect()
}

/// A `gossamer` command of the binary under test with a clean environment
/// (see [`scrub_env`]).
pub fn gossamer() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gossamer"));
    scrub_env(&mut command);
    command
}

/// Listener addresses an agent reports in `listeners.json` (the agent's own type).
pub use sidecar::listeners::Listeners;

/// How to start one agent.
#[derive(Debug, Clone)]
pub struct Spec {
    pub node_id: String,
    pub psk: String,
    pub join: Vec<SocketAddr>,
    pub extra: Vec<String>,
    pub metrics: bool,
    /// Variables set in the agent's environment (after the inherited
    /// `GOSSAMER_*` ones are removed).
    pub env: Vec<(String, String)>,
    /// Pass the passphrase as `GOSSAMER_PSK` rather than `--psk`.
    pub psk_in_env: bool,
    /// Gossip timings: `local` unless a test says otherwise.
    pub profile: String,
    /// The QUIC address to bind (a free port unless a test names one).
    pub bind: String,
}

impl Spec {
    pub fn new(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_owned(),
            psk: PSK.to_owned(),
            join: Vec::new(),
            extra: Vec::new(),
            metrics: false,
            env: Vec::new(),
            psk_in_env: false,
            profile: "local".to_owned(),
            bind: "127.0.0.1:0".to_owned(),
        }
    }

    pub fn join(mut self, seed: &AgentProc) -> Self {
        self.join.push(seed.listeners.quic);
        self
    }

    pub fn psk(mut self, psk: &str) -> Self {
        self.psk = psk.to_owned();
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra.push(arg.into());
        self
    }

    pub fn with_metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Sets a variable in the agent's environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Binds QUIC to `addr` (a join target named before the agent runs).
    pub fn bind(mut self, addr: std::net::SocketAddr) -> Self {
        self.bind = addr.to_string();
        self
    }

    /// Uses the `lan` or `wan` gossip timings instead of `local`.
    pub fn profile(mut self, profile: &str) -> Self {
        self.profile = profile.to_owned();
        self
    }

    /// Hands the passphrase over as `GOSSAMER_PSK`, as the README tells
    /// users to, so that a leak of the agent's environment is possible.
    pub fn psk_in_env(mut self) -> Self {
        self.psk_in_env = true;
        self
    }
}

/// A running `gossamer agent` process.
pub struct AgentProc {
    pub spec: Spec,
    pub data_dir: PathBuf,
    pub listeners: Listeners,
    child: Option<Child>,
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gossamer-test-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

impl AgentProc {
    /// Starts an agent and waits until its admin API says it is ready.
    pub async fn start(spec: Spec) -> Self {
        let data_dir = scratch_dir(&spec.node_id);
        Self::start_in(spec, data_dir).await
    }

    async fn start_in(spec: Spec, data_dir: PathBuf) -> Self {
        let _ = std::fs::remove_file(data_dir.join("listeners.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("agent.log"))
            .expect("open agent log");
        let mut command = gossamer();
        command
            .arg("agent")
            .args(["--node-id", &spec.node_id])
            .args(["--bind", &spec.bind])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--proxy-listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--dns-listen", "127.0.0.1:0"])
            .args(["--profile", &spec.profile])
            .arg("--data-dir")
            .arg(&data_dir)
            .env("GOSSAMER_LOG", "info,sidecar=debug")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        if spec.psk_in_env {
            command.env("GOSSAMER_PSK", &spec.psk);
        } else {
            command.args(["--psk", &spec.psk]);
        }
        for seed in &spec.join {
            command.args(["--join", &seed.to_string()]);
        }
        // Last: the extra arguments may end with `--exec NAME -- CMD ...`,
        // after which every argument belongs to the supervised command.
        command.args(&spec.extra);
        let child = command.spawn().expect("spawn gossamer agent");
        let listeners_path = data_dir.join("listeners.json");
        let mut proc = AgentProc {
            spec,
            data_dir,
            listeners: Listeners {
                quic: "127.0.0.1:1".parse().expect("addr"),
                admin: "127.0.0.1:1".parse().expect("addr"),
                proxy: "127.0.0.1:1".parse().expect("addr"),
                metrics: None,
                dns: None,
            },
            child: Some(child),
        };
        let log_path = proc.data_dir.join("agent.log");
        proc.listeners = eventually(
            "agent to write listeners.json",
            Duration::from_secs(30),
            || {
                let path = listeners_path.clone();
                let child = proc.child.as_mut().map(|c| c.try_wait());
                let log_path = log_path.clone();
                async move {
                    if let Some(Ok(Some(status))) = child {
                        panic!(
                            "agent exited early with {status}: {}",
                            std::fs::read_to_string(log_path).unwrap_or_default()
                        );
                    }
                    let bytes = std::fs::read(path).ok()?;
                    serde_json::from_slice(&bytes).ok()
                }
            },
        )
        .await;
        let client = proc.client();
        eventually("agent health to say ready", Duration::from_secs(20), || {
            let client = client.clone();
            async move { client.health().await.ok().filter(|h| h.ready) }
        })
        .await;
        proc
    }

    /// Starts the same agent again on the same data dir.
    pub async fn restart(&mut self) {
        self.kill();
        let fresh = Self::start_in(self.spec.clone(), self.data_dir.clone()).await;
        self.listeners = fresh.listeners;
        self.child = fresh.into_child();
    }

    fn into_child(mut self) -> Option<Child> {
        // The data dir now belongs to the restarted agent: this handle's
        // Drop must not remove it.
        self.data_dir = PathBuf::new();
        self.child.take()
    }

    pub fn node_id(&self) -> &str {
        &self.spec.node_id
    }

    pub fn client(&self) -> Client {
        Client::new(&format!("http://{}", self.listeners.admin)).expect("client")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: a crash, no leave, no deregistration.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.send_term();
        self.wait_exit(Duration::from_secs(15))
    }

    /// Sends SIGTERM and returns at once: the agent starts its clean stop
    /// (deregister, drain, leave) while the test watches.
    pub fn send_term(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    /// Waits up to `limit` for the agent to exit (then kills it) and
    /// returns its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("agent.log")).unwrap_or_default()
    }

    /// The node ids this agent lists in a given state.
    pub async fn members_in(&self, state: &str) -> Vec<String> {
        match self.client().nodes().await {
            Ok(nodes) => {
                let mut ids: Vec<String> = nodes
                    .into_iter()
                    .filter(|n| n.state.as_str() == state)
                    .map(|n| n.id)
                    .collect();
                ids.sort();
                ids
            }
            Err(_) => Vec::new(),
        }
    }

    /// The raw Prometheus text of this agent. A failed scrape fails the
    /// test: it must never read as "every counter is zero".
    pub async fn metrics_text(&self) -> String {
        match self.try_metrics_text().await {
            Ok(text) => text,
            Err(e) => panic!("scraping {}: {e}", self.node_id()),
        }
    }

    /// The raw Prometheus text, or why the scrape failed (no answer, not
    /// 200, or a body without a single `gossamer_*` metric).
    pub async fn try_metrics_text(&self) -> Result<String, String> {
        let addr = self
            .listeners
            .metrics
            .ok_or("the agent has no metrics listener (Spec::with_metrics)")?;
        let (status, _, body) = http_get(addr, "/metrics", &[])
            .await
            .ok_or_else(|| format!("no answer from http://{addr}/metrics"))?;
        if status != 200 {
            return Err(format!("http://{addr}/metrics answered {status}: {body}"));
        }
        if !body.contains("# TYPE gossamer_") {
            return Err(format!(
                "http://{addr}/metrics holds no gossamer metric, so it is not a scrape: {body:?}"
            ));
        }
        Ok(body)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        } else {
            eprintln!(
                "agent {} log kept in {}",
                self.spec.node_id,
                self.data_dir.display()
            );
        }
    }
}

/// Starts `n` agents: the first is the seed, the rest join it.
pub async fn cluster(prefix: &str, n: usize) -> Vec<AgentProc> {
    let seed = AgentProc::start(Spec::new(&format!("{prefix}-1"))).await;
    let mut agents = vec![seed];
    for i in 2..=n {
        let spec = Spec::new(&format!("{prefix}-{i}")).join(&agents[0]);
        agents.push(AgentProc::start(spec).await);
    }
    agents
}

/// Waits until every agent lists exactly `expected` alive.
pub async fn wait_alive(agents: &[&AgentProc], expected: &[&str], timeout: Duration) {
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    for agent in agents {
        let want = expected.clone();
        eventually(
            &format!("{} to list {:?} alive", agent.node_id(), want),
            timeout,
            || {
                let want = want.clone();
                async move { (agent.members_in("alive").await == want).then_some(()) }
            },
        )
        .await;
    }
}

/// One HTTP/1.1 request with a fresh connection: (status, headers, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Option<(u16, http::HeaderMap, String)> {
    use http_body_util::Full;
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(connection);
    let mut request = http::Request::builder().method(method).uri(path);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request.body(Full::new(bytes::Bytes::from(body))).ok()?;
    let response = sender.send_request(request).await.ok()?;
    read_response(response).await
}

/// A response read whole: (status, headers, body as text); `None` when the
/// body broke off.
pub async fn read_response(
    response: http::Response<hyper::body::Incoming>,
) -> Option<(u16, http::HeaderMap, String)> {
    use http_body_util::BodyExt;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// Requests sent to other nodes' sidecars between two scrapes of one
/// agent's metrics, by stream: (new, kept).
pub fn hops_between(before: &str, after: &str) -> (f64, f64) {
    let count = |text: &str, stream: &str| {
        metric_value(text, "gossamer_proxy_hops_total", &[("stream", stream)])
    };
    (
        count(after, "new") - count(before, "new"),
        count(after, "kept") - count(before, "kept"),
    )
}

/// GET through `http_request`.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, http::HeaderMap, String)> {
    http_request(addr, "GET", path, headers, Vec::new()).await
}

/// An echo service on a free loopback port, in this test process.
pub async fn echo_service(name: &str) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let port = listener.local_addr().expect("addr").port();
    let handle = tokio::spawn(sidecar::echo::serve(listener, name.to_owned()));
    (port, handle)
}

/// Reads a counter or gauge value (summed over matching label sets) from Prometheus text.
pub fn metric_value(text: &str, name: &str, label_filter: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            label_filter
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Three agents: b and c joined, a joining them with links of `delays_ms`
/// (to b, to c) through the link-delay shim; an echo service behind b and c
/// (and behind a when `echo_on_a`), all registered as `service`.
pub struct Trio {
    pub a: AgentProc,
    pub b: AgentProc,
    pub c: AgentProc,
    pub echo_ports: Vec<(String, u16)>,
    _echoes: Vec<tokio::task::JoinHandle<()>>,
}

pub async fn delayed_trio(
    prefix: &str,
    service: &str,
    echo_on_a: bool,
    delays_ms: (u64, u64),
    extra: &[&str],
) -> Trio {
    let mut echoes = Vec::new();
    let mut echo_ports = Vec::new();
    let spec_with_echo = |name: String, spec: Spec| {
        let name_for_echo = name.clone();
        async move {
            let (port, handle) = echo_service(&format!("{service}@{name_for_echo}")).await;
            (
                spec.arg("--service").arg(format!("{service}={port}")),
                port,
                handle,
                name,
            )
        }
    };
    let start_extra = |mut spec: Spec| {
        for arg in extra {
            spec = spec.arg(*arg);
        }
        spec
    };
    let (spec_b, port_b, echo_b, name_b) = spec_with_echo(
        format!("{prefix}-b"),
        start_extra(Spec::new(&format!("{prefix}-b")).with_metrics()),
    )
    .await;
    let b = AgentProc::start(spec_b).await;
    let (spec_c, port_c, echo_c, name_c) = spec_with_echo(
        format!("{prefix}-c"),
        start_extra(Spec::new(&format!("{prefix}-c")).join(&b).with_metrics()),
    )
    .await;
    let c = AgentProc::start(spec_c).await;
    echoes.extend([echo_b, echo_c]);
    echo_ports.push((name_b, port_b));
    echo_ports.push((name_c, port_c));
    let mut spec_a = start_extra(Spec::new(&format!("{prefix}-a")).join(&b).with_metrics())
        .arg("--debug-link-delay")
        .arg(format!("{}={}", b.listeners.quic, delays_ms.0))
        .arg("--debug-link-delay")
        .arg(format!("{}={}", c.listeners.quic, delays_ms.1));
    if echo_on_a {
        let (spec, port, handle, name) = spec_with_echo(format!("{prefix}-a"), spec_a).await;
        spec_a = spec;
        echoes.push(handle);
        echo_ports.push((name, port));
    }
    let a = AgentProc::start(spec_a).await;
    Trio {
        a,
        b,
        c,
        echo_ports,
        _echoes: echoes,
    }
}

/// Waits until `agent` lists `n` instances of `service` and has a measured
/// RTT to every node hosting one.
pub async fn wait_instances_measured(agent: &AgentProc, service: &str, n: usize) {
    let client = agent.client();
    eventually(
        &format!(
            "{} to see {n} instances of {service} with measured RTT",
            agent.node_id()
        ),
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let view = client.instances(service, &Default::default()).await.ok()?;
                let all: Vec<_> = view.eligible.iter().chain(view.ineligible.iter()).collect();
                let measured = all
                    .iter()
                    .all(|i| i.rtt_source == mesh_proto::api::RttSource::Measured);
                (all.len() == n && measured).then_some(())
            }
        },
    )
    .await;
}

/// A bare QUIC endpoint holding the cluster passphrase, as a peer that is
/// not an agent: it passes the handshake, then may send anything.
pub fn peer_transport(psk: &str, name: &str) -> std::sync::Arc<sidecar::transport::Transport> {
    sidecar::tls::install_crypto_provider();
    let trust = sidecar::tls::ClusterTrust::from_passphrase(psk, name).expect("trust");
    // The receivers are dropped: this peer only dials.
    let (swim, _) = tokio::sync::mpsc::channel(16);
    let (rtt, _) = tokio::sync::mpsc::channel(16);
    let (streams, _) = tokio::sync::mpsc::channel(16);
    sidecar::transport::Transport::bind(
        "127.0.0.1:0".parse().expect("addr"),
        &trust,
        sidecar::link_shim::LinkRules::default(),
        sidecar::transport::TransportTimings {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            idle_close: Duration::from_secs(20),
        },
        sidecar::transport::Inbound { swim, rtt, streams },
    )
    .expect("bind peer transport")
}

/// The first eligible instance of `service` that `agent` lists (waits up
/// to 10 s for one).
pub async fn first_instance(agent: &AgentProc, service: &str) -> mesh_proto::catalog::Instance {
    eventually(
        &format!("{} to list an instance of {service}", agent.node_id()),
        Duration::from_secs(10),
        || {
            let client = agent.client();
            async move {
                let view = client.instances(service, &Default::default()).await.ok()?;
                view.eligible.into_iter().next().map(|i| i.instance)
            }
        },
    )
    .await
}

/// A proxy stream to `agent` opened by `caller` as a calling sidecar
/// would: the frame naming `instance` of `service` (with `timeout_ms`) is
/// written; what follows is the caller's.
pub async fn open_proxy_stream(
    caller: &std::sync::Arc<sidecar::transport::Transport>,
    agent: &AgentProc,
    instance: &mesh_proto::catalog::Instance,
    service: &str,
    timeout_ms: u32,
) -> (
    quinn::SendStream,
    quinn::RecvStream,
    sidecar::transport::StreamLease,
) {
    let (mut send, recv, _, lease) = caller
        .open_stream(agent.listeners.quic, mesh_proto::gossip::StreamKind::Proxy)
        .await
        .expect("open proxy stream");
    let frame = mesh_proto::frame::ProxyFrame {
        instance_id: instance.id.clone(),
        address: instance.address,
        service: service.to_owned(),
        timeout_ms,
    };
    send.write_all(&frame.encode().expect("encode"))
        .await
        .expect("write frame");
    (send, recv, lease)
}

/// Registers `service` at `127.0.0.1:port` on `agent`'s node.
pub async fn register_port(agent: &AgentProc, service: &str, port: u16) {
    register_port_at(agent.listeners.admin, service, port).await;
}

/// Registers `service` at `127.0.0.1:port` through the admin API at `admin`
/// (an agent in this process, or one of its own).
pub async fn register_port_at(admin: std::net::SocketAddr, service: &str, port: u16) {
    Client::new(&format!("http://{admin}"))
        .expect("client")
        .register(&mesh_proto::api::RegisterInstance {
            service: service.to_owned(),
            port: Some(port),
            address: None,
            id: None,
            deployment_id: None,
            tags: Vec::new(),
            health: None,
        })
        .await
        .unwrap_or_else(|e| panic!("register {service} through {admin}: {e}"));
}

/// Runs `command` to its end with piped output, killing it and panicking
/// if it takes longer than `limit`.
pub fn run_bounded(command: &mut Command, limit: Duration, what: &str) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let deadline = Instant::now() + limit;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("collect output")
}

/// Pids in the supervised copies' records under `supervise_root` (a data
/// dir's `supervise/`): one folder per service, one JSON record per copy.
pub fn recorded_pids(supervise_root: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(services) = std::fs::read_dir(supervise_root) else {
        return pids;
    };
    for service in services.flatten() {
        for file in std::fs::read_dir(service.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let record: Option<serde_json::Value> = std::fs::read(file.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(pid) = record.and_then(|r| r.get("pid").and_then(|p| p.as_u64())) {
                pids.push(pid as u32);
            }
        }
    }
    pids
}

/// Waits until `agent` sees `service` defined with `protocol`.
pub async fn wait_protocol(agent: &AgentProc, service: &str, protocol: mesh_proto::Protocol) {
    let client = agent.client();
    eventually(
        &format!("{} to see {service} as {protocol}", agent.node_id()),
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let view = client.instances(service, &Default::default()).await.ok()?;
                (view.protocol == Some(protocol)).then_some(())
            }
        },
    )
    .await;
}

/// True while `pid` runs; a zombie is as good as gone (its parent reaps it).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
