//! Run-time control of supervised services: the first start (once the
//! service's dependencies pass and its build succeeded), `scale` up and
//! down, `stop` and `start`, and rebuilds when a watched file changes.
//!
//! Every change of one service holds its `changing` lock, so a scale, a
//! rolling restart and a rebuild never interleave.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use mesh_proto::catalog::Health;

use super::copy::{publish_health, stopped, CopyState};
use super::placement::{declare_requirements, warn_if_no_room};
use super::{build, roll, CopyHandle, Service, Supervisor};
use crate::config::supervise::MAX_SCALE;

/// How often a waiting service looks at its dependencies again.
const DEPENDENCY_POLL: Duration = Duration::from_millis(250);

/// `POST /v1/supervise/{name}/scale|stop|start`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleView {
    /// Service name.
    pub service: String,
    /// Copies before.
    pub from: u32,
    /// Copies wanted now.
    pub to: u32,
    /// Instances started, serving when the answer came.
    pub started: Vec<String>,
    /// Instances taken out of rotation, drained, stopped and deregistered (newest first).
    pub stopped: Vec<String>,
    /// How long it took.
    pub took_ms: u64,
    /// Something the operator should know.
    pub note: Option<String>,
}

/// Why a scale, stop or start did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such supervised service on this node.
    #[error("this agent supervises no service {0:?}")]
    Unknown(String),
    /// Out of range.
    #[error("scale {0} is out of range; use 0 to {MAX_SCALE} (0 stops the service)")]
    Range(u32),
    /// The agent is stopping.
    #[error("the agent is stopping")]
    Stopping,
}

/// `gossamer scale NAME N`: starts copies up to `n` (answering once they
/// serve) or stops the newest down to `n`, each out of rotation and
/// drained before its process stops, deregistered once it has.
pub async fn scale(supervisor: &Supervisor, name: &str, n: u32) -> Result<ScaleView, ControlError> {
    if n > MAX_SCALE {
        return Err(ControlError::Range(n));
    }
    let service = supervisor
        .service_named(name)
        .ok_or_else(|| ControlError::Unknown(name.to_owned()))?;
    if *supervisor.stop.borrow() {
        return Err(ControlError::Stopping);
    }
    let _changing = service.changing.lock().await;
    let from = service.desired.swap(n, Ordering::AcqRel);
    if n > 0 {
        service.resume.store(n, Ordering::Release);
    }
    let started_at = Instant::now();
    let phase = service.phase();
    if !phase.started {
        // The first start has not happened yet: it will start `n` copies.
        let why = if phase.waiting_for.is_empty() {
            "its first build".to_owned()
        } else {
            format!("its dependencies ({})", phase.waiting_for.join(", "))
        };
        return Ok(ScaleView {
            service: name.to_owned(),
            from,
            to: n,
            started: Vec::new(),
            stopped: Vec::new(),
            took_ms: 0,
            note: Some(format!(
                "{name} has not started yet: it waits for {why}; it will start {n} cop{}",
                plural(n)
            )),
        });
    }
    let (started, stopped) = set_copies(supervisor, &service, n).await;
    let not_serving: Vec<String> = service
        .copies()
        .iter()
        .filter(|c| started.contains(&c.instance) && c.state() != CopyState::Running)
        .map(|c| c.instance.clone())
        .collect();
    info!(service = %name, from, to = n, "scaled");
    Ok(ScaleView {
        service: name.to_owned(),
        from,
        to: n,
        started,
        stopped,
        took_ms: started_at.elapsed().as_millis() as u64,
        note: (!not_serving.is_empty()).then(|| {
            format!(
                "not serving yet: {}; see `gossamer logs {name}`",
                not_serving.join(", ")
            )
        }),
    })
}

/// `gossamer stop NAME`: every copy out of rotation, drained, stopped, deregistered.
pub async fn stop(supervisor: &Supervisor, name: &str) -> Result<ScaleView, ControlError> {
    let service = supervisor
        .service_named(name)
        .ok_or_else(|| ControlError::Unknown(name.to_owned()))?;
    let resume = service.resume.load(Ordering::Acquire);
    let view = scale(supervisor, name, 0).await?;
    // `start` brings back as many as ran.
    service.resume.store(resume.max(1), Ordering::Release);
    Ok(view)
}

/// `gossamer start NAME`: as many copies as ran before `stop`.
pub async fn start(supervisor: &Supervisor, name: &str) -> Result<ScaleView, ControlError> {
    let service = supervisor
        .service_named(name)
        .ok_or_else(|| ControlError::Unknown(name.to_owned()))?;
    let n = service.resume.load(Ordering::Acquire).max(1);
    scale(supervisor, name, n).await
}

fn plural(n: u32) -> &'static str {
    if n == 1 {
        "y"
    } else {
        "ies"
    }
}

/// Starts or stops copies until `n` run; under the `changing` lock.
/// Returns (started, stopped) instance ids.
async fn set_copies(
    supervisor: &Supervisor,
    service: &Service,
    n: u32,
) -> (Vec<String>, Vec<String>) {
    let current = service.copies();
    let mut started = Vec::new();
    let mut stopped_ids = Vec::new();
    if (current.len() as u32) < n {
        let in_use: Vec<u32> = current.iter().map(|c| c.copy).collect();
        let numbers: Vec<u32> = (1..=MAX_SCALE)
            .filter(|c| !in_use.contains(c))
            .take((n as usize).saturating_sub(current.len()))
            .collect();
        let mut new = Vec::new();
        for copy in numbers {
            if *supervisor.stop.borrow() {
                break;
            }
            let handle = supervisor.spawn_copy(service, copy);
            started.push(handle.instance.clone());
            service
                .copies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(handle.clone());
            new.push(handle);
        }
        gauge(service);
        // Answer once the new copies serve (or it is clear they do not).
        let limit = service.spec.start_timeout + Duration::from_secs(5);
        let _ = tokio::time::timeout(limit, async {
            while new.iter().any(|c| {
                !matches!(c.state(), CopyState::Running | CopyState::Stopped) && !c.task_finished()
            }) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    } else if (current.len() as u32) > n {
        // Newest first: the oldest copies have served longest and keep going.
        let mut by_age = current.clone();
        by_age.sort_by_key(|c| c.copy);
        let leaving = by_age.split_off(n as usize);
        retire(supervisor, service, &leaving).await;
        stopped_ids = leaving.iter().rev().map(|c| c.instance.clone()).collect();
    }
    (started, stopped_ids)
}

/// Takes `copies` out of rotation (marked critical), lets callers learn it
/// for the drain time, then stops them; each copy deregisters as it ends.
///
/// Critical, not deregistered, while draining: a caller a gossip round
/// behind still sends to the copy, and the copy's node forwards only to
/// instances it still has (the relay check), so a copy deregistered first
/// would turn those calls away instead of serving them.
async fn retire(supervisor: &Supervisor, service: &Service, copies: &[Arc<CopyHandle>]) {
    for copy in copies {
        // First, so the copy's own health checks cannot mark it passing again.
        copy.retiring.store(true, Ordering::Release);
        let port = {
            let mut status = copy.status.lock().unwrap_or_else(PoisonError::into_inner);
            status.state = CopyState::Stopping;
            status.port
        };
        match port {
            Some(port) => {
                publish_health(
                    &supervisor.ctx.registry,
                    &service.spec,
                    &copy.instance,
                    port,
                    Health::Critical,
                )
                .await
            }
            None => {
                let _ = supervisor.ctx.registry.deregister(&copy.instance).await;
            }
        }
    }
    info!(
        service = %service.spec.name,
        copies = copies.len(),
        drain_ms = service.drain.as_millis() as u64,
        "out of rotation; stopping the copies after the drain"
    );
    tokio::time::sleep(service.drain).await;
    for copy in copies {
        if let Some(retire) = copy
            .retire
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = retire.send(());
        }
    }
    let limit = service.spec.grace + Duration::from_secs(5);
    for copy in copies {
        let task = copy
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            if tokio::time::timeout(limit, task).await.is_err() {
                warn!(instance = %copy.instance, "a copy did not stop within {limit:?}");
            }
        }
    }
    service
        .copies
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|c| !copies.iter().any(|gone| Arc::ptr_eq(gone, c)));
    gauge(service);
}

/// `gossamer_supervised_copies{service}`: copies this agent runs.
fn gauge(service: &Service) {
    let n = service
        .copies
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    ::metrics::gauge!(crate::metrics::SUPERVISED_COPIES, "service" => service.spec.name.clone())
        .set(n as f64);
}

impl CopyHandle {
    fn task_finished(&self) -> bool {
        self.task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_none_or(|t| t.is_finished())
    }
}

/// The life of a service beyond its copies: requirements, dependencies,
/// the first build and start, then rebuilds on watched changes.
pub(super) async fn bring_up(supervisor: Arc<Supervisor>, service: Arc<Service>) {
    let registry = supervisor.ctx.registry.clone();
    let spec = service.spec.clone();
    let mut stop = supervisor.stop.subscribe();
    declare_requirements(&registry, &spec).await;
    if !warn_if_no_room(&registry, &spec) {
        // The definition may arrive with the first sync: check again then.
        let registry = registry.clone();
        let spec = spec.clone();
        let mut stop = supervisor.stop.subscribe();
        supervisor.helpers.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(10)) => { warn_if_no_room(&registry, &spec); }
                _ = stopped(&mut stop) => {}
            }
        });
    }
    if !spec.depends_on.is_empty() {
        tokio::select! {
            _ = wait_for_dependencies(&supervisor, &service) => {}
            _ = stopped(&mut stop) => return,
        }
    }
    let built = if spec.build.is_empty() {
        true
    } else {
        tokio::select! {
            ok = build::run(&supervisor, &service) => ok,
            _ = stopped(&mut stop) => return,
        }
    };
    if built {
        first_start(&supervisor, &service).await;
    }
    if !spec.watch.is_empty() {
        tokio::select! {
            _ = watch_and_rebuild(&supervisor, &service) => {}
            _ = stopped(&mut stop) => {}
        }
    }
}

async fn first_start(supervisor: &Supervisor, service: &Service) {
    let _changing = service.changing.lock().await;
    if *supervisor.stop.borrow() {
        return;
    }
    let n = service.desired.load(Ordering::Acquire);
    service.set_phase(|p| p.started = true);
    info!(service = %service.spec.name, scale = n, command = ?service.spec.command, "supervising");
    let mut handles = Vec::new();
    for copy in 1..=n {
        handles.push(supervisor.spawn_copy(service, copy));
    }
    *service
        .copies
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = handles;
    gauge(service);
}

/// Returns once every dependency has a passing instance in the catalog.
async fn wait_for_dependencies(supervisor: &Supervisor, service: &Service) {
    let catalog = supervisor.ctx.registry.catalog();
    let mut said = Vec::new();
    loop {
        let snapshot = catalog.snapshot();
        let missing: Vec<String> = service
            .spec
            .depends_on
            .iter()
            .filter(|dep| {
                !snapshot.service(dep).is_some_and(|s| {
                    s.instances
                        .iter()
                        .any(|i| i.health == mesh_proto::catalog::Health::Passing)
                })
            })
            .cloned()
            .collect();
        service.set_phase(|p| p.waiting_for = missing.clone());
        if missing.is_empty() {
            info!(service = %service.spec.name, "its dependencies pass; starting it");
            return;
        }
        if missing != said {
            info!(service = %service.spec.name, waiting_for = ?missing, "waiting for its dependencies to pass before starting it");
            said = missing;
        }
        tokio::time::sleep(DEPENDENCY_POLL).await;
    }
}

/// Polls the watched files; after a change has settled, builds and, only
/// if the build succeeds, rolls the copies one at a time.
async fn watch_and_rebuild(supervisor: &Supervisor, service: &Service) {
    let spec = &service.spec;
    let root = spec
        .workdir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    let scan = |root: std::path::PathBuf, globs: Vec<String>| async move {
        tokio::task::spawn_blocking(move || build::fingerprint(&root, &globs))
            .await
            .unwrap_or_default()
    };
    let mut seen = scan(root.clone(), spec.watch.clone()).await;
    loop {
        tokio::time::sleep(build::WATCH_POLL).await;
        let now = scan(root.clone(), spec.watch.clone()).await;
        if now == seen {
            continue;
        }
        // Debounce: an editor or a checkout writes in bursts.
        let mut settled = now;
        loop {
            tokio::time::sleep(build::WATCH_POLL).await;
            let again = scan(root.clone(), spec.watch.clone()).await;
            if again == settled {
                break;
            }
            settled = again;
        }
        info!(service = %spec.name, "a watched file changed; building");
        let built = build::run(supervisor, service).await;
        // What the build itself wrote (outputs under a `**` glob) must not
        // start another build.
        seen = scan(root.clone(), spec.watch.clone()).await;
        if !built {
            continue;
        }
        if !service.phase().started {
            first_start(supervisor, service).await;
            continue;
        }
        let _changing = service.changing.lock().await;
        if service.copies().is_empty() {
            continue;
        }
        match roll(service, &spec.name).await {
            Ok(view) => {
                info!(service = %spec.name, restarted = ?view.restarted, "rebuilt and rolled")
            }
            Err(e) => {
                warn!(service = %spec.name, error = %e, "rebuilt, but the rolling restart stopped")
            }
        }
    }
}
