//! The life of one copy of a supervised service, as one task: start the
//! process, wait until it serves, register it; when it exits, mark it
//! `critical` at once and start it again after a capped exponential
//! backoff; on request, restart it gracefully (out of rotation first); on
//! stop, stop the process and deregister.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mesh_proto::api::RegisterInstance;
use mesh_proto::catalog::Health;
use serde::{Deserialize, Serialize};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::child::{self, Placement};
use super::logs::{self, LogSender, Stream};
use super::records::{self, PidRecord};
use crate::config::supervise::ServiceSpec;
use crate::listeners::Listeners;
use crate::registry::Registry;

/// A process that ran this long before exiting starts the backoff over.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Failed checks in a row before a running copy is marked critical.
const CHECK_FAILURES: u32 = 3;

/// What a copy is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyState {
    /// Started, not serving yet.
    Starting,
    /// Serving and registered.
    Running,
    /// Exited; waiting to be started again.
    Backoff,
    /// Out of rotation, being restarted on request.
    Restarting,
    /// Out of rotation and draining before it stops for good (`stop`, `scale` down).
    Stopping,
    /// Stopped for good.
    Stopped,
}

/// A copy's state as `ps` shows it.
#[derive(Debug, Clone)]
pub struct CopyStatus {
    /// Current state.
    pub state: CopyState,
    /// Process id while a process runs.
    pub pid: Option<u32>,
    /// Port of the current (or last) process.
    pub port: Option<u16>,
    /// Processes started after the first.
    pub restarts: u32,
    /// When the current process became ready.
    pub serving_since: Option<Instant>,
    /// How the last process ended.
    pub last_exit: Option<String>,
}

impl Default for CopyStatus {
    fn default() -> Self {
        Self {
            state: CopyState::Starting,
            pid: None,
            port: None,
            restarts: 0,
            serving_since: None,
            last_exit: None,
        }
    }
}

/// Requests to a running copy.
#[derive(Debug)]
pub enum Control {
    /// Restart gracefully; answered once the new process is registered.
    Restart(oneshot::Sender<Result<(), CopyRestartError>>),
}

/// Why one copy's restart did not bring it back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CopyRestartError {
    /// The new process did not pass its readiness check.
    #[error("{instance} did not come back healthy; see `gossamer logs {service}`")]
    NotHealthy {
        /// The copy.
        instance: String,
        /// Its service.
        service: String,
    },
    /// The agent stopped meanwhile.
    #[error("the agent is stopping")]
    Stopping,
}

/// Shared, for `ps`.
pub type SharedStatus = Arc<Mutex<CopyStatus>>;

/// Everything one copy's task needs that does not change.
pub struct CopyContext {
    /// Where the copy is registered.
    pub registry: Arc<Registry>,
    /// The agent's listeners, for the copy's environment.
    pub listeners: Listeners,
    /// The service.
    pub spec: Arc<ServiceSpec>,
    /// Copy number, from 1.
    pub copy: u32,
    /// Instance id.
    pub instance: String,
    /// The service's directory in the data dir.
    pub dir: PathBuf,
    /// State shown by `ps`.
    pub status: SharedStatus,
    /// Where the process's output and the supervisor's notes go.
    pub log: LogSender,
    /// How long a deregistered copy keeps serving.
    pub drain: Duration,
    /// True once the supervisor deregistered everything to stop.
    pub leaving: Arc<std::sync::atomic::AtomicBool>,
    /// True once this copy alone was taken out of rotation to stop (`stop`, `scale`
    /// down): a late health change must not register it again.
    pub retiring: Arc<std::sync::atomic::AtomicBool>,
}

/// What ended one process's run.
enum Outcome {
    /// It exited (or never served) after running this long.
    Exited(Duration),
    /// Restarted on request: start again at once.
    Restart,
    /// The supervisor stops.
    Stopped,
}

/// Resolves once the supervisor stops (or is gone). Never holds the
/// channel's read guard across an await.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

// === impl Backoff ===

/// Capped exponential backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `base`, doubles up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            next: base,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

// === impl CopyContext ===

impl CopyContext {
    fn update(&self, f: impl FnOnce(&mut CopyStatus)) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut status);
        // A retiring copy shows it until it is gone, whatever its process does.
        if self.retiring.load(std::sync::atomic::Ordering::Acquire)
            && status.state != CopyState::Stopped
        {
            status.state = CopyState::Stopping;
        }
    }

    async fn note(&self, text: String) {
        let _ = self.log.send((Stream::Sup, text.into_bytes())).await;
    }

    /// Publishes the instance with `health`, unless the supervisor is leaving.
    async fn publish(&self, port: u16, health: Health) {
        if self.leaving.load(std::sync::atomic::Ordering::Acquire)
            || self.retiring.load(std::sync::atomic::Ordering::Acquire)
        {
            return;
        }
        publish_health(&self.registry, &self.spec, &self.instance, port, health).await;
    }

    fn placement(&self, port: u16) -> Placement {
        let listeners = self.listeners;
        let loopback = |addr: std::net::SocketAddr| {
            if addr.ip().is_unspecified() {
                std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
            } else {
                addr
            }
        };
        Placement {
            service: self.spec.name.clone(),
            instance: self.instance.clone(),
            port,
            proxy: loopback(listeners.proxy),
            admin_url: format!("http://{}", loopback(listeners.admin)),
        }
    }
}

/// Registers (or updates) a copy's instance with `health`.
pub async fn publish_health(
    registry: &Registry,
    spec: &ServiceSpec,
    instance: &str,
    port: u16,
    health: Health,
) {
    let mut tags = spec.tags.clone();
    tags.push("supervised".to_owned());
    let request = RegisterInstance {
        service: spec.name.clone(),
        port: Some(port),
        address: None,
        id: Some(instance.to_owned()),
        deployment_id: None,
        tags,
        health: Some(health),
    };
    if let Err(e) = registry.register(request, false).await {
        warn!(instance = %instance, error = %e, hint = %e.hint, "cannot register a supervised instance");
    }
}

/// Runs one copy until the supervisor stops.
pub async fn run(
    ctx: CopyContext,
    mut control: mpsc::Receiver<Control>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(ctx.spec.backoff, ctx.spec.backoff_max);
    let mut waiting: Vec<oneshot::Sender<Result<(), CopyRestartError>>> = Vec::new();
    let mut port = None;
    let mut first = true;
    loop {
        if *stop.borrow() {
            break;
        }
        if !first {
            ctx.update(|s| s.restarts += 1);
        }
        first = false;
        match run_once(&ctx, &mut control, &mut stop, &mut port, &mut waiting).await {
            Outcome::Stopped => break,
            Outcome::Restart => backoff.reset(),
            Outcome::Exited(ran) => {
                for reply in waiting.drain(..) {
                    let _ = reply.send(Err(CopyRestartError::NotHealthy {
                        instance: ctx.instance.clone(),
                        service: ctx.spec.name.clone(),
                    }));
                }
                if ran >= STABLE_AFTER {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                ctx.update(|s| s.state = CopyState::Backoff);
                ctx.note(format!("restarting in {} ms", delay.as_millis()))
                    .await;
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut stop) => break,
                    Some(Control::Restart(reply)) = control.recv() => waiting.push(reply),
                }
            }
        }
    }
    for reply in waiting.drain(..) {
        let _ = reply.send(Err(CopyRestartError::Stopping));
    }
    if let Err(e) = ctx.registry.deregister(&ctx.instance).await {
        warn!(instance = %ctx.instance, error = %e, "cannot deregister a stopped copy");
    }
    records::remove(&ctx.dir, ctx.copy);
    ctx.update(|s| {
        s.state = CopyState::Stopped;
        s.pid = None;
        s.serving_since = None;
    });
}

async fn run_once(
    ctx: &CopyContext,
    control: &mut mpsc::Receiver<Control>,
    stop: &mut watch::Receiver<bool>,
    port_slot: &mut Option<u16>,
    waiting: &mut Vec<oneshot::Sender<Result<(), CopyRestartError>>>,
) -> Outcome {
    let fixed = ctx.spec.port.map(|p| p + (ctx.copy - 1) as u16);
    let port = match child::choose_port(fixed, *port_slot) {
        Ok(port) => port,
        Err(e) => {
            ctx.note(format!("cannot find a free loopback port: {e}"))
                .await;
            return Outcome::Exited(Duration::ZERO);
        }
    };
    *port_slot = Some(port);
    if fixed.is_some() && records::port_in_use(port) {
        let why = format!("port {port} is already in use (see `gossamer ps` for strays of an earlier run); the process will likely fail to listen");
        warn!(instance = %ctx.instance, "{why}");
        ctx.note(why).await;
    }
    let placement = ctx.placement(port);
    ctx.update(|s| {
        s.state = CopyState::Starting;
        s.port = Some(port);
        s.serving_since = None;
    });
    let mut process = match child::spawn(&ctx.spec, &placement) {
        Ok(process) => process,
        Err(e) => {
            let why = format!("cannot start {:?}: {e}", ctx.spec.command[0]);
            warn!(instance = %ctx.instance, "{why}");
            ctx.update(|s| s.last_exit = Some(why.clone()));
            ctx.note(why).await;
            return Outcome::Exited(Duration::ZERO);
        }
    };
    let pid = process.id().unwrap_or(0);
    if let Some(out) = process.stdout.take() {
        tokio::spawn(logs::pump(out, Stream::Out, ctx.log.clone()));
    }
    if let Some(err) = process.stderr.take() {
        tokio::spawn(logs::pump(err, Stream::Err, ctx.log.clone()));
    }
    records::write(
        &ctx.dir,
        &PidRecord {
            service: ctx.spec.name.clone(),
            instance: ctx.instance.clone(),
            copy: ctx.copy,
            pid,
            port,
            program: ctx.spec.command[0].clone(),
            started_ms: crate::catalog::wall_ms(),
        },
    );
    ctx.update(|s| s.pid = Some(pid));
    ctx.note(format!("started pid {pid} on port {port}")).await;
    info!(instance = %ctx.instance, pid, port, "started a supervised process");
    let started = Instant::now();

    let ready = tokio::select! {
        ready = child::wait_ready(port, ctx.spec.health.as_deref(), ctx.spec.start_timeout) => ready,
        status = process.wait() => Err(child::NotServing::Exited(child::describe(status.ok()))),
        _ = stopped(stop) => {
            finish(ctx, &mut process, "stopped with the agent").await;
            return Outcome::Stopped;
        }
    };
    if let Err(why) = ready {
        let why = why.to_string();
        ctx.note(why.clone()).await;
        warn!(instance = %ctx.instance, "{why}");
        let (status, _) = child::stop(&mut process, ctx.spec.grace).await;
        ended(ctx, status, &why).await;
        ctx.publish(port, Health::Critical).await;
        return Outcome::Exited(started.elapsed());
    }
    ctx.publish(port, Health::Passing).await;
    ctx.update(|s| {
        s.state = CopyState::Running;
        s.serving_since = Some(Instant::now());
    });
    ctx.note(format!("serving on port {port}; registered"))
        .await;
    for reply in waiting.drain(..) {
        let _ = reply.send(Ok(()));
    }

    let mut checks = tokio::time::interval(ctx.spec.check_interval);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    checks.tick().await;
    let mut failures = 0u32;
    // The drain below waits on its own receiver: the loop's is in use.
    let mut stop_during_drain = stop.clone();
    loop {
        tokio::select! {
            status = process.wait() => {
                // Out of rotation at once: every sidecar stops routing to it
                // within a gossip round.
                ctx.publish(port, Health::Critical).await;
                let status = status.ok();
                let how = child::describe(status);
                warn!(instance = %ctx.instance, pid, "supervised process exited ({how}); marked critical");
                ended(ctx, status, "exited").await;
                return Outcome::Exited(started.elapsed());
            }
            _ = stopped(stop) => {
                finish(ctx, &mut process, "stopped with the agent").await;
                return Outcome::Stopped;
            }
            Some(Control::Restart(reply)) = control.recv() => {
                waiting.push(reply);
                ctx.update(|s| s.state = CopyState::Restarting);
                ctx.publish(port, Health::Critical).await;
                ctx.note(format!("restart requested: out of rotation, draining {} ms", ctx.drain.as_millis())).await;
                tokio::select! {
                    _ = tokio::time::sleep(ctx.drain) => {}
                    _ = stopped(&mut stop_during_drain) => {
                        finish(ctx, &mut process, "stopped with the agent").await;
                        return Outcome::Stopped;
                    }
                }
                finish(ctx, &mut process, "stopped for a restart").await;
                return Outcome::Restart;
            }
            _ = checks.tick() => {
                match child::probe(port, ctx.spec.health.as_deref()).await {
                    Ok(()) => {
                        if failures >= CHECK_FAILURES {
                            ctx.publish(port, Health::Passing).await;
                            ctx.note("health check passes again; marked passing".to_owned()).await;
                        }
                        failures = 0;
                    }
                    Err(why) => {
                        failures += 1;
                        if failures == CHECK_FAILURES {
                            ctx.publish(port, Health::Critical).await;
                            warn!(instance = %ctx.instance, "{why}; marked critical");
                            ctx.note(format!("health check failed {CHECK_FAILURES} times ({why}); marked critical")).await;
                        }
                    }
                }
            }
        }
    }
}

/// Stops the process gracefully and records how it ended.
async fn finish(ctx: &CopyContext, process: &mut Child, why: &str) {
    let why = if ctx.retiring.load(std::sync::atomic::Ordering::Acquire) {
        "stopped on request (`stop` or `scale`), after it was out of rotation and drained"
    } else {
        why
    };
    let (status, killed) = child::stop(process, ctx.spec.grace).await;
    let why = if killed {
        format!(
            "{why}; it ignored SIGTERM for {} ms and was killed",
            ctx.spec.grace.as_millis()
        )
    } else {
        why.to_owned()
    };
    ended(ctx, status, &why).await;
}

async fn ended(ctx: &CopyContext, status: Option<std::process::ExitStatus>, why: &str) {
    let how = format!("{why} ({})", child::describe(status));
    ctx.note(how.clone()).await;
    records::remove(&ctx.dir, ctx.copy);
    ctx.update(|s| {
        s.pid = None;
        s.serving_since = None;
        s.last_exit = Some(how);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let delays: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 3000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }
}
