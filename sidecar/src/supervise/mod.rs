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

pub mod child;
pub mod copy;
pub mod logs;
pub mod placement;
pub mod records;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mesh_proto::catalog::{Definition, Health, Requirements};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
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
            clock: Arc::new(LogClock::default()),
        }
    }
}

/// One supervised service.
#[derive(Debug)]
struct Service {
    spec: Arc<ServiceSpec>,
    dir: PathBuf,
    copies: Vec<CopyHandle>,
    drain: Duration,
    restarting: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct CopyHandle {
    copy: u32,
    instance: String,
    status: SharedStatus,
    control: mpsc::Sender<Control>,
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
    // Copies in one set (the supervisor is done when they are); log writers
    // and later checks in another.
    let mut copies_running = JoinSet::new();
    let mut helpers = JoinSet::new();
    for spec in specs {
        let spec = Arc::new(spec);
        declare_requirements(registry, &spec).await;
        let placement_known = warn_if_no_room(registry, &spec);
        let dir = root.join(&spec.name);
        let drain = spec.drain.unwrap_or(drain_default);
        let mut copies = Vec::new();
        for copy in 1..=spec.scale {
            let instance = instance_id(registry.node_id(), &spec.name, copy);
            let status: SharedStatus = Arc::new(Mutex::new(CopyStatus::default()));
            let (log_tx, log_rx) = mpsc::channel(1024);
            let log_path = dir.join("logs").join(format!("{instance}.log"));
            match logs::LogFile::open(log_path.clone(), spec.log_max_bytes, spec.log_files) {
                Ok(file) => {
                    helpers.spawn(logs::write_loop(file, supervisor.clock.clone(), log_rx));
                }
                Err(e) => {
                    warn!(path = %log_path.display(), error = %e, "cannot open a supervised process's log; its output is dropped");
                    helpers.spawn(async move {
                        let mut rx = log_rx;
                        while rx.recv().await.is_some() {}
                    });
                }
            }
            let (control_tx, control_rx) = mpsc::channel(8);
            let copy_ctx = CopyContext {
                registry: registry.clone(),
                listeners: ctx.listeners,
                spec: spec.clone(),
                copy,
                instance: instance.clone(),
                dir: dir.clone(),
                status: status.clone(),
                log: log_tx,
                drain,
                leaving: supervisor.leaving.clone(),
            };
            copies_running.spawn(copy::run(copy_ctx, control_rx, supervisor.stop.subscribe()));
            copies.push(CopyHandle {
                copy,
                instance,
                status,
                control: control_tx,
            });
        }
        info!(service = %spec.name, scale = spec.scale, command = ?spec.command, "supervising");
        if !placement_known {
            // The definition may arrive with the first sync: check again then.
            let registry = registry.clone();
            let spec = spec.clone();
            let mut stop = supervisor.stop.subscribe();
            helpers.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(10)) => { warn_if_no_room(&registry, &spec); }
                    _ = stopped(&mut stop) => {}
                }
            });
        }
        supervisor
            .services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(Service {
                spec,
                dir,
                copies,
                drain,
                restarting: tokio::sync::Mutex::new(()),
            }));
    }
    while copies_running.join_next().await.is_some() {}
    supervisor.done.send_replace(true);
    // Let the writers store the processes' last words; a grandchild that
    // keeps a pipe open must not hold the agent's exit.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while helpers.join_next().await.is_some() {}
    })
    .await;
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
        for copy in &service.copies {
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

impl Supervisor {
    fn services(&self) -> Vec<Arc<Service>> {
        self.services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn service(&self, name: &str) -> Option<Arc<Service>> {
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
        self.service(name).map(|s| s.dir.join("logs"))
    }
}

/// `gossamer ps`: every copy with pid, port, restarts, uptime and health.
pub fn ps(supervisor: &Supervisor) -> PsView {
    let now = Instant::now();
    let mut processes = Vec::new();
    let snapshot = supervisor.ctx.registry.catalog().snapshot();
    for service in supervisor.services() {
        for copy in &service.copies {
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
    }
}

/// `gossamer restart NAME`: one copy at a time, each out of rotation before
/// it stops and back once healthy; the next waits until callers had time to
/// learn the previous one is back.
pub async fn restart(supervisor: &Supervisor, name: &str) -> Result<RestartView, RestartError> {
    let service = supervisor
        .service(name)
        .ok_or_else(|| RestartError::Unknown(name.to_owned()))?;
    let _running = service
        .restarting
        .try_lock()
        .map_err(|_| RestartError::Busy(name.to_owned()))?;
    let started = Instant::now();
    let mut restarted = Vec::new();
    for (i, copy) in service.copies.iter().enumerate() {
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
        if i + 1 < service.copies.len() {
            tokio::time::sleep(service.drain).await;
        }
    }
    info!(service = %name, copies = restarted.len(), "rolling restart done");
    Ok(RestartView {
        service: name.to_owned(),
        restarted,
        took_ms: started.elapsed().as_millis() as u64,
        note: (service.copies.len() == 1).then(|| {
            "only one copy: callers found no instance while it restarted; \
             run two or more copies (--scale) for restarts without failed calls"
                .to_owned()
        }),
    })
}

/// Writes the requirements a `[[supervise]]` table declares into the
/// service's definition (keeping its other fields), so placement sees them.
async fn declare_requirements(registry: &Registry, spec: &ServiceSpec) {
    if !spec.declares_requirements() {
        return;
    }
    let current = registry
        .catalog()
        .snapshot()
        .definition(&spec.name)
        .cloned();
    let mut definition = current.clone().unwrap_or_else(|| Definition {
        name: spec.name.clone(),
        version: String::new(),
        port: None,
        image: None,
        host_port: None,
        repository: None,
        endpoints: Default::default(),
        client_sdks: Default::default(),
        requirements: Requirements::default(),
        content_hash: String::new(),
    });
    let declared = &spec.requirements;
    let r = &mut definition.requirements;
    r.cpu_millis = declared.cpu_millis.or(r.cpu_millis);
    r.memory_mb = declared.memory_mb.or(r.memory_mb);
    r.soft_rtt_ms = declared.soft_rtt_ms.or(r.soft_rtt_ms);
    r.hard_rtt_ms = declared.hard_rtt_ms.or(r.hard_rtt_ms);
    if current
        .as_ref()
        .is_some_and(|c| c.requirements == definition.requirements)
    {
        return;
    }
    // The same content hash the admin API computes for a written definition.
    definition.content_hash = String::new();
    let canonical = serde_json::to_vec(&definition).unwrap_or_default();
    definition.content_hash = Sha256::digest(&canonical)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    info!(service = %spec.name, requirements = ?definition.requirements, "writing the declared requirements to the service definition");
    if let Err(e) = registry.put_definition(definition).await {
        warn!(service = %spec.name, error = %e, hint = %e.hint, "cannot write the declared requirements");
    }
}

/// Warns when this node has no room for the service's copies; false when
/// the service's requirements are not known yet.
fn warn_if_no_room(registry: &Registry, spec: &ServiceSpec) -> bool {
    let node = registry.node_id().clone();
    let (requirements, resources) = registry.catalog().read(|c| {
        let requirements = c.definition(&spec.name).map(|d| d.requirements.clone());
        let resources = placement::resources(
            c,
            &[(node.clone(), "alive".to_owned())],
            Some((&node, &spec.name)),
        );
        (requirements, resources)
    });
    let Some(requirements) = requirements else {
        return false;
    };
    let Some(mine) = resources.first() else {
        return false;
    };
    if !placement::fits(mine, &requirements, spec.scale) {
        warn!(
            node = %node,
            service = %spec.name,
            "this node does not fit {} cop{} of {}: it has {} CPU millis and {} MiB free, \
             each copy needs {} CPU millis and {} MiB (cpu_millis and memory_mb of the definition); \
             starting anyway. `gossamer nodes --fits {}` lists the nodes with room",
            spec.scale,
            if spec.scale == 1 { "y" } else { "ies" },
            spec.name,
            mine.free_cpu_millis,
            mine.free_memory_mb,
            requirements.cpu_millis.unwrap_or(0),
            requirements.memory_mb.unwrap_or(0),
            spec.name,
        );
    }
    true
}
