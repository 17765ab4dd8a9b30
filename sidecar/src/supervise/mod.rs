//! The agent supervises its local services: `--exec NAME -- CMD ARGS...`
//! or `[[supervise]]` tables start each service's copies (`--scale N`), each
//! on its own loopback port, registered once it serves, marked critical and
//! restarted with a capped backoff when it exits, restarted one copy at a
//! time on request without failing calls, and stopped gracefully after
//! being deregistered when the agent stops.
//!
//! Layout: `config::supervise` (what to run), [`copy`] (the life of one
//! copy), [`child`] (one process: environment, probes, signals), [`logs`]
//! (captured output, rotated by size, merged in time order), [`records`]
//! (pid files and strays of an earlier run), [`placement`] (CPU and memory);
//! the API and the operator commands are fronts (`admin::supervise`,
//! `cli::supervise`).
//!
//! Data dir layout: `supervise/<service>/<copy>.pid.json` while a copy's
//! process runs, `supervise/<service>/stray-<pid>.json` for processes an
//! earlier run left running, and `supervise/<service>/logs/<instance>.log*`.

pub mod build;
pub mod child;
pub mod control;
pub mod copy;
pub mod logs;
pub mod placement;
pub mod records;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mesh_proto::catalog::Health;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use crate::config::supervise::ServiceSpec;
use crate::config::Profile;
use crate::listeners::Listeners;
use crate::registry::Registry;
use copy::{stopped, Control, CopyContext, CopyState, CopyStatus, SharedStatus};
use logs::LogClock;

/// What the supervisor uses of the agent.
pub struct SuperviseContext {
    /// Where copies are registered and deregistered.
    pub registry: Arc<Registry>,
    /// `supervise/` in the data dir.
    pub root: PathBuf,
    /// The agent's listeners, handed to each copy's environment.
    pub listeners: Listeners,
    /// Gossip profile (default drain time).
    pub profile: Profile,
    /// The services to run.
    pub specs: Vec<ServiceSpec>,
}

/// The supervisor of one agent; empty until [`run`] starts the services.
pub struct Supervisor {
    ctx: Arc<SuperviseContext>,
    services: Mutex<Vec<Arc<Service>>>,
    stop: watch::Sender<bool>,
    done: watch::Sender<bool>,
    leaving: Arc<AtomicBool>,
    /// Every copy's task; the supervisor is done when they are.
    copy_tasks: TaskTracker,
    /// Log writers, dependency waits, builds and watchers.
    helpers: TaskTracker,
    /// Stamps of log lines, watched by `logs -f`.
    pub clock: Arc<LogClock>,
}

impl Supervisor {
    /// A supervisor of `ctx.specs`, started by [`run`].
    pub fn new(ctx: SuperviseContext) -> Self {
        Self {
            ctx: Arc::new(ctx),
            services: Mutex::new(Vec::new()),
            stop: watch::channel(false).0,
            done: watch::channel(true).0,
            leaving: Arc::new(AtomicBool::new(false)),
            copy_tasks: TaskTracker::new(),
            helpers: TaskTracker::new(),
            clock: Arc::new(LogClock::default()),
        }
    }
}

/// One supervised service.
#[derive(Debug)]
struct Service {
    spec: Arc<ServiceSpec>,
    dir: PathBuf,
    /// Running copies, oldest first.
    copies: Mutex<Vec<Arc<CopyHandle>>>,
    drain: Duration,
    /// One change at a time: a restart, a scale, a stop or start, a rebuild.
    changing: tokio::sync::Mutex<()>,
    /// Copies wanted now (0: stopped).
    desired: AtomicU32,
    /// Copies `start` brings back: the last scale above 0.
    resume: AtomicU32,
    /// Dependencies and builds, for `ps`.
    phase: Mutex<Phase>,
}

/// Where a service is besides its copies.
#[derive(Debug, Clone, Default)]
struct Phase {
    /// Dependencies it still waits for before its first start.
    waiting_for: Vec<String>,
    /// True once its first copies were started (or it was stopped).
    started: bool,
    /// The last build, when it has one.
    build: Option<BuildView>,
}

#[derive(Debug)]
struct CopyHandle {
    copy: u32,
    instance: String,
    status: SharedStatus,
    control: mpsc::Sender<Control>,
    /// Set before the copy is deregistered to stop alone.
    retiring: Arc<AtomicBool>,
    /// Stops this copy alone (its process, then its task).
    retire: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// The last build of a service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuildView {
    /// True when it succeeded.
    pub ok: bool,
    /// When it ended, ms since the Unix epoch.
    pub at_ms: u64,
    /// What happened, for people.
    pub message: String,
}

/// One service as `gossamer ps` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    /// Service name.
    pub service: String,
    /// `waiting`, `building`, `build failed` (never started), `running` or `stopped`.
    pub state: String,
    /// Copies wanted.
    pub desired: u32,
    /// Copies running and registered.
    pub running: u32,
    /// Dependencies it still waits for.
    pub waiting_for: Vec<String>,
    /// The last build, when it has one.
    pub build: Option<BuildView>,
}

/// One copy as `gossamer ps` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessView {
    /// Service name.
    pub service: String,
    /// Instance id.
    pub instance: String,
    /// Copy number, from 1.
    pub copy: u32,
    /// Process id, while one runs.
    pub pid: Option<u32>,
    /// Port of the current (or last) process.
    pub port: Option<u16>,
    /// What the copy is doing.
    pub state: CopyState,
    /// Health in the catalog (None: not registered).
    pub health: Option<Health>,
    /// Processes started after the first.
    pub restarts: u32,
    /// Time serving since the current process became ready.
    pub uptime_ms: Option<u64>,
    /// How the last process ended.
    pub last_exit: Option<String>,
}

/// `GET /v1/supervise`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PsView {
    /// This node.
    pub node: String,
    /// Every copy of every supervised service.
    pub processes: Vec<ProcessView>,
    /// Processes an earlier run left running (never killed by the agent).
    pub strays: Vec<records::Stray>,
    /// Every supervised service, stopped ones too.
    #[serde(default)]
    pub services: Vec<ServiceView>,
}

/// `POST /v1/supervise/{name}/restart`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestartView {
    /// Service name.
    pub service: String,
    /// Instances restarted, in order.
    pub restarted: Vec<String>,
    /// How long the whole restart took.
    pub took_ms: u64,
    /// Something the operator should know.
    pub note: Option<String>,
}

/// Why a rolling restart did not happen or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// No such supervised service on this node.
    #[error("this agent supervises no service {0:?}")]
    Unknown(String),
    /// Another restart of it runs.
    #[error("a restart of {0:?} is already running")]
    Busy(String),
    /// A copy did not come back; the others were left alone.
    #[error("{failed} did not come back ({why}); stopped the rolling restart so the other copies keep serving (restarted first: {restarted:?})")]
    Failed {
        /// The copy that failed.
        failed: String,
        /// Why.
        why: String,
        /// Copies restarted before it.
        restarted: Vec<String>,
    },
    /// The agent is stopping.
    #[error("the agent is stopping")]
    Stopping,
}

/// Instance id of a copy.
pub fn instance_id(node: &mesh_proto::NodeId, service: &str, copy: u32) -> String {
    format!("{service}-{node}-{copy}")
}

/// Cleans up after an earlier run, then runs every configured service until
/// [`stop`]. Started by the agent after it restored its registrations.
pub async fn run(supervisor: Arc<Supervisor>) {
    let ctx = supervisor.ctx.clone();
    let registry = &ctx.registry;
    let root = ctx.root.clone();
    // What an earlier run left: records of processes that are gone are
    // removed with their instances; live processes are reported, not killed.
    let (strays, gone) = records::sweep(&root);
    for record in gone {
        if registry.deregister(&record.instance).await.unwrap_or(false) {
            info!(instance = %record.instance, pid = record.pid, "removed the instance of a process an earlier run started, which is gone");
        }
    }
    for stray in &strays {
        let r = &stray.record;
        warn!(
            service = %r.service,
            pid = r.pid,
            port = r.port,
            holds_port = stray.holds_port,
            "a process an earlier run of this agent started is still running{}; it is not stopped: \
             stop it with `kill {}` if it is not wanted (`gossamer ps` lists it)",
            if stray.holds_port { " and holds its port" } else { "" },
            r.pid
        );
    }
    let specs = ctx.specs.clone();
    if specs.is_empty() {
        return;
    }
    supervisor.done.send_replace(false);
    let drain_default = ctx.profile.default_drain();
    let mut services = Vec::new();
    for spec in specs {
        let spec = Arc::new(spec);
        services.push(Arc::new(Service {
            dir: root.join(&spec.name),
            copies: Mutex::new(Vec::new()),
            drain: spec.drain.unwrap_or(drain_default),
            changing: tokio::sync::Mutex::new(()),
            desired: AtomicU32::new(spec.scale),
            resume: AtomicU32::new(spec.scale),
            phase: Mutex::new(Phase {
                waiting_for: spec.depends_on.clone(),
                ..Phase::default()
            }),
            spec,
        }));
    }
    *supervisor
        .services
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = services.clone();
    for service in services {
        supervisor
            .helpers
            .spawn(control::bring_up(supervisor.clone(), service));
    }
    stopped(&mut supervisor.stop.subscribe()).await;
    // Every copy sees the stop; copies started after it stop at once.
    supervisor.copy_tasks.close();
    supervisor.copy_tasks.wait().await;
    supervisor.done.send_replace(true);
    // Let the writers store the processes' last words; a grandchild that
    // keeps a pipe open must not hold the agent's exit.
    supervisor.helpers.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), supervisor.helpers.wait()).await;
}

impl Supervisor {
    /// Starts copy number `copy` of `service`: its log writer, its task.
    fn spawn_copy(&self, service: &Service, copy: u32) -> Arc<CopyHandle> {
        let registry = &self.ctx.registry;
        let spec = &service.spec;
        let dir = &service.dir;
        let instance = instance_id(registry.node_id(), &spec.name, copy);
        let status: SharedStatus = Arc::new(Mutex::new(CopyStatus::default()));
        let (log_tx, log_rx) = mpsc::channel(1024);
        let log_path = dir.join("logs").join(format!("{instance}.log"));
        match logs::LogFile::open(log_path.clone(), spec.log_max_bytes, spec.log_files) {
            Ok(file) => {
                self.helpers
                    .spawn(logs::write_loop(file, self.clock.clone(), log_rx));
            }
            Err(e) => {
                warn!(path = %log_path.display(), error = %e, "cannot open a supervised process's log; its output is dropped");
                self.helpers.spawn(async move {
                    let mut rx = log_rx;
                    while rx.recv().await.is_some() {}
                });
            }
        }
        let (control_tx, control_rx) = mpsc::channel(8);
        let retiring = Arc::new(AtomicBool::new(false));
        let copy_ctx = CopyContext {
            registry: registry.clone(),
            listeners: self.ctx.listeners,
            spec: spec.clone(),
            copy,
            instance: instance.clone(),
            dir: dir.clone(),
            status: status.clone(),
            log: log_tx,
            drain: service.drain,
            leaving: self.leaving.clone(),
            retiring: retiring.clone(),
        };
        // The copy stops with the agent or alone (`stop`, `scale` down).
        let (copy_stop, copy_stopped) = watch::channel(false);
        let (retire_tx, retire_rx) = oneshot::channel::<()>();
        let mut agent_stop = self.stop.subscribe();
        self.copy_tasks.spawn(async move {
            tokio::select! {
                _ = stopped(&mut agent_stop) => {}
                _ = retire_rx => {}
            }
            copy_stop.send_replace(true);
        });
        let task = self
            .copy_tasks
            .spawn(copy::run(copy_ctx, control_rx, copy_stopped));
        Arc::new(CopyHandle {
            copy,
            instance,
            status,
            control: control_tx,
            retiring,
            retire: Mutex::new(Some(retire_tx)),
            task: Mutex::new(Some(task)),
        })
    }
}

/// Deregisters every supervised instance, lets callers learn it, then stops
/// the processes (SIGTERM, SIGKILL after each service's grace period).
pub async fn stop(supervisor: &Supervisor) {
    let services = supervisor.services();
    if services.is_empty() {
        return;
    }
    supervisor.leaving.store(true, Ordering::Release);
    for service in &services {
        for copy in service.copies() {
            if let Err(e) = supervisor.ctx.registry.deregister(&copy.instance).await {
                warn!(instance = %copy.instance, error = %e, "cannot deregister a supervised copy");
            }
        }
    }
    let drain = services.iter().map(|s| s.drain).max().unwrap_or_default();
    let grace = services
        .iter()
        .map(|s| s.spec.grace)
        .max()
        .unwrap_or_default();
    info!(
        drain_ms = drain.as_millis() as u64,
        "deregistered the supervised instances; stopping their processes after the drain"
    );
    tokio::time::sleep(drain).await;
    supervisor.stop.send_replace(true);
    let mut done = supervisor.done.subscribe();
    let limit = grace + Duration::from_secs(5);
    if tokio::time::timeout(limit, done.wait_for(|d| *d))
        .await
        .is_err()
    {
        warn!("supervised processes did not all stop within {limit:?}");
    }
}

impl Service {
    fn copies(&self) -> Vec<Arc<CopyHandle>> {
        self.copies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn phase(&self) -> Phase {
        self.phase
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_phase(&self, f: impl FnOnce(&mut Phase)) {
        f(&mut self.phase.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl CopyHandle {
    fn state(&self) -> CopyState {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state
    }
}

impl Supervisor {
    fn services(&self) -> Vec<Arc<Service>> {
        self.services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn service_named(&self, name: &str) -> Option<Arc<Service>> {
        self.services().into_iter().find(|s| s.spec.name == name)
    }

    /// Names of the supervised services.
    pub fn names(&self) -> Vec<String> {
        self.services()
            .iter()
            .map(|s| s.spec.name.clone())
            .collect()
    }

    /// The log directory of `name`, if supervised here.
    pub fn log_dir(&self, name: &str) -> Option<PathBuf> {
        self.service_named(name).map(|s| s.dir.join("logs"))
    }
}

/// `gossamer ps`: every copy with pid, port, restarts, uptime and health.
pub fn ps(supervisor: &Supervisor) -> PsView {
    let now = Instant::now();
    let mut processes = Vec::new();
    let snapshot = supervisor.ctx.registry.catalog().snapshot();
    let mut views = Vec::new();
    for service in supervisor.services() {
        let copies = service.copies();
        let phase = service.phase();
        let running = copies
            .iter()
            .filter(|c| c.state() == CopyState::Running)
            .count() as u32;
        let desired = service.desired.load(Ordering::Acquire);
        views.push(ServiceView {
            service: service.spec.name.clone(),
            state: if !phase.waiting_for.is_empty() {
                "waiting"
            } else if !phase.started && phase.build.as_ref().is_some_and(|b| !b.ok) {
                "build failed"
            } else if !phase.started {
                "building"
            } else if desired == 0 && copies.is_empty() {
                "stopped"
            } else {
                "running"
            }
            .to_owned(),
            desired,
            running,
            waiting_for: phase.waiting_for,
            build: phase.build,
        });
        for copy in &copies {
            let status = copy
                .status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let health = snapshot.local_instance(&copy.instance).map(|i| i.health);
            processes.push(ProcessView {
                service: service.spec.name.clone(),
                instance: copy.instance.clone(),
                copy: copy.copy,
                pid: status.pid,
                port: status.port,
                state: status.state,
                health,
                restarts: status.restarts,
                uptime_ms: status
                    .serving_since
                    .map(|t| now.saturating_duration_since(t).as_millis() as u64),
                last_exit: status.last_exit,
            });
        }
    }
    PsView {
        node: supervisor.ctx.registry.node_id().to_string(),
        processes,
        strays: records::current_strays(&supervisor.ctx.root),
        services: views,
    }
}

/// `gossamer restart NAME`: one copy at a time, each out of rotation before
/// it stops and back once healthy; the next waits until callers had time to
/// learn the previous one is back.
pub async fn restart(supervisor: &Supervisor, name: &str) -> Result<RestartView, RestartError> {
    let service = supervisor
        .service_named(name)
        .ok_or_else(|| RestartError::Unknown(name.to_owned()))?;
    let _running = service
        .changing
        .try_lock()
        .map_err(|_| RestartError::Busy(name.to_owned()))?;
    if service.copies().is_empty() {
        return Ok(RestartView {
            service: name.to_owned(),
            restarted: Vec::new(),
            took_ms: 0,
            note: Some(format!(
                "{name} runs no copy (stopped, or not started yet): nothing to restart; \
                 `gossamer start {name}` starts it"
            )),
        });
    }
    roll(&service, name).await
}

/// The rolling restart itself, under the service's `changing` lock.
async fn roll(service: &Service, name: &str) -> Result<RestartView, RestartError> {
    let started = Instant::now();
    let mut restarted = Vec::new();
    let copies = service.copies();
    for (i, copy) in copies.iter().enumerate() {
        let (reply, answer) = oneshot::channel();
        copy.control
            .send(Control::Restart(reply))
            .await
            .map_err(|_| RestartError::Stopping)?;
        match answer.await {
            Ok(Ok(())) => restarted.push(copy.instance.clone()),
            Ok(Err(why)) => {
                return Err(RestartError::Failed {
                    failed: copy.instance.clone(),
                    why: why.to_string(),
                    restarted,
                })
            }
            Err(_) => return Err(RestartError::Stopping),
        }
        if i + 1 < copies.len() {
            tokio::time::sleep(service.drain).await;
        }
    }
    info!(service = %name, copies = restarted.len(), "rolling restart done");
    Ok(RestartView {
        service: name.to_owned(),
        restarted,
        took_ms: started.elapsed().as_millis() as u64,
        note: (copies.len() == 1).then(|| {
            "only one copy: callers found no instance while it restarted; \
             run two or more copies (--scale) for restarts without failed calls"
                .to_owned()
        }),
    })
}
