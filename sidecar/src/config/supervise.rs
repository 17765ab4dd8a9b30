//! What to supervise: the `--exec NAME -- CMD ARGS...` flags and the
//! `[[supervise]]` tables of the config file, checked and resolved into
//! [`ServiceSpec`]s with the documented defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use mesh_proto::catalog::Requirements;
use mesh_proto::names::validate_service_name;
use serde::Deserialize;

use super::AgentArgs;

/// Most copies one service may run on one node.
pub const MAX_SCALE: u32 = 64;
/// Default size of a log file before it is rotated (4 MiB).
pub const DEFAULT_LOG_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Default number of rotated log files kept besides the current one.
pub const DEFAULT_LOG_FILES: u32 = 3;

/// One `[[supervise]]` table of the config file.
///
/// ```toml
/// [[supervise]]
/// name = "billing"
/// command = ["/usr/local/bin/billing", "--port", "${SERVICE_PORT}"]
/// env = { RUST_LOG = "info" }
/// scale = 2
/// health = "/healthz"
/// cpu_millis = 500
/// memory_mb = 256
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    /// Service name (the routing name other services call).
    pub name: String,
    /// Program and arguments; `${SERVICE_PORT}` and the other injected variables are substituted.
    pub command: Vec<String>,
    /// Extra environment of the process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of the process [default: the agent's].
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Number of copies, each its own instance on its own port [default: 1].
    #[serde(default)]
    pub scale: Option<u32>,
    /// Port of the first copy (copy i listens on port + i - 1) [default: a free loopback port per copy].
    #[serde(default)]
    pub port: Option<u16>,
    /// HTTP path that must answer 2xx before a copy is registered [default: the port accepting connections].
    #[serde(default)]
    pub health: Option<String>,
    /// CPU one copy needs, in thousandths of a core (written to the definition).
    #[serde(default)]
    pub cpu_millis: Option<u32>,
    /// Memory one copy needs, in MiB (written to the definition).
    #[serde(default)]
    pub memory_mb: Option<u32>,
    /// Callers prefer instances within this RTT (written to the definition).
    #[serde(default)]
    pub soft_rtt_ms: Option<u32>,
    /// Callers never use instances beyond this RTT (written to the definition).
    #[serde(default)]
    pub hard_rtt_ms: Option<u32>,
    /// Tags of the instances.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Time between SIGTERM and SIGKILL when stopping a copy [default: 10000].
    #[serde(default)]
    pub grace_ms: Option<u64>,
    /// Time a deregistered copy keeps running so callers learn it is gone [default: by profile, 1000 to 5000].
    #[serde(default)]
    pub drain_ms: Option<u64>,
    /// Longest wait for a new copy to become healthy [default: 60000].
    #[serde(default)]
    pub start_timeout_ms: Option<u64>,
    /// First delay before restarting a copy that exited, doubling on each exit [default: 500].
    #[serde(default)]
    pub restart_backoff_ms: Option<u64>,
    /// Longest delay before a restart [default: 30000].
    #[serde(default)]
    pub restart_backoff_max_ms: Option<u64>,
    /// Interval of the health check of a running copy [default: 5000].
    #[serde(default)]
    pub check_interval_ms: Option<u64>,
    /// Size of a log file before rotation [default: 4194304].
    #[serde(default)]
    pub log_max_bytes: Option<u64>,
    /// Rotated log files kept per copy [default: 3].
    #[serde(default)]
    pub log_files: Option<u32>,
    /// Services that must have a passing instance before this one starts.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Build command (program and arguments), run in `workdir` before the
    /// first start and on every watched change [default: none].
    #[serde(default)]
    pub build: Vec<String>,
    /// Files whose change rebuilds and rolls the copies: globs relative to
    /// `workdir`, `*` within a name, `**` across folders (e.g. "src/**").
    #[serde(default)]
    pub watch: Vec<String>,
}

/// A supervised service, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// Program and arguments (never empty).
    pub command: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: Option<PathBuf>,
    /// Number of copies.
    pub scale: u32,
    /// Port of the first copy, when fixed.
    pub port: Option<u16>,
    /// HTTP health path, when set.
    pub health: Option<String>,
    /// Requirements declared with the service (only the set fields are written).
    pub requirements: Requirements,
    /// Instance tags.
    pub tags: Vec<String>,
    /// SIGTERM to SIGKILL.
    pub grace: Duration,
    /// Deregistration to stop (None: the profile's default).
    pub drain: Option<Duration>,
    /// Longest wait for health.
    pub start_timeout: Duration,
    /// First restart delay.
    pub backoff: Duration,
    /// Longest restart delay.
    pub backoff_max: Duration,
    /// Health check interval while running.
    pub check_interval: Duration,
    /// Log rotation size.
    pub log_max_bytes: u64,
    /// Rotated log files kept.
    pub log_files: u32,
    /// Services that must pass before this one starts.
    pub depends_on: Vec<String>,
    /// Build command, when any.
    pub build: Vec<String>,
    /// Watched globs, relative to the working directory.
    pub watch: Vec<String>,
}

impl ServiceSpec {
    /// True when the spec declares any requirement to publish.
    pub fn declares_requirements(&self) -> bool {
        self.requirements != Requirements::default()
    }
}

/// The services `args` asks to supervise: the `--exec` one, then the file's.
pub fn resolve(args: &AgentArgs) -> anyhow::Result<Vec<ServiceSpec>> {
    let mut specs = Vec::new();
    if let Some(name) = &args.exec {
        let file = ServiceFile {
            name: name.clone(),
            command: args.exec_command.clone(),
            scale: args.scale,
            port: args.exec_port,
            health: args.exec_health.clone(),
            ..ServiceFile::default()
        };
        specs.push(
            check(file, "--exec")
                .with_context(|| format!("--exec {name}: the supervised service is not valid"))?,
        );
    } else if !args.exec_command.is_empty() {
        bail!(
            "a command was given after `--` but no --exec NAME; \
             write `gossamer agent ... --exec NAME -- CMD ARGS...`"
        );
    } else if args.scale.is_some() || args.exec_port.is_some() || args.exec_health.is_some() {
        bail!("--scale, --exec-port and --exec-health apply to --exec NAME -- CMD; add --exec");
    }
    for file in &args.supervise {
        let name = file.name.clone();
        if specs.iter().any(|s: &ServiceSpec| s.name == name) {
            if args.exec.as_deref() == Some(name.as_str()) {
                // The flag wins over the file, as every other flag does.
                continue;
            }
            bail!(
                "the config file declares [[supervise]] {name:?} twice; keep one table per service"
            );
        }
        specs.push(
            check(file.clone(), "[[supervise]]").with_context(|| {
                format!("[[supervise]] {name:?} in the config file is not valid")
            })?,
        );
    }
    check_dependencies(&specs)?;
    Ok(specs)
}

fn millis(value: Option<u64>, default: u64, max: u64, what: &str) -> anyhow::Result<Duration> {
    let ms = value.unwrap_or(default);
    if ms > max {
        bail!("{what} = {ms} is above the limit of {max} ms");
    }
    Ok(Duration::from_millis(ms))
}

/// Checks one service and fills in the defaults; `origin` names where it came from.
pub fn check(file: ServiceFile, origin: &str) -> anyhow::Result<ServiceSpec> {
    validate_service_name(&file.name).map_err(|e| {
        anyhow::anyhow!("{e}; service names are DNS labels, for example \"billing-api\"")
    })?;
    let Some(program) = file.command.first() else {
        bail!("no command: give the program and its arguments ({origin})");
    };
    find_program(program, file.workdir.as_deref())?;
    let scale = file.scale.unwrap_or(1);
    if scale == 0 || scale > MAX_SCALE {
        bail!("scale {scale} is out of range; use 1 to {MAX_SCALE}");
    }
    if let Some(port) = file.port {
        if port == 0 || u32::from(port) + scale - 1 > u32::from(u16::MAX) {
            bail!(
                "port {port} with scale {scale} does not fit in 1-65535; copy i uses port + i - 1"
            );
        }
    }
    if let Some(path) = &file.health {
        if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
            bail!(
                "health path {path:?} must start with '/' and hold no spaces, for example /healthz"
            );
        }
    }
    if let (Some(soft), Some(hard)) = (file.soft_rtt_ms, file.hard_rtt_ms) {
        if soft > hard {
            bail!("soft_rtt_ms {soft} is above hard_rtt_ms {hard}; make soft ≤ hard");
        }
    }
    for key in file.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            bail!("environment variable name {key:?} is not valid");
        }
    }
    if file.tags.len() > 64 || file.tags.iter().any(|t| t.len() > 256) {
        bail!("use at most 64 tags of at most 256 characters");
    }
    let backoff = millis(
        file.restart_backoff_ms,
        500,
        3_600_000,
        "restart_backoff_ms",
    )?
    .max(Duration::from_millis(10));
    let backoff_max = millis(
        file.restart_backoff_max_ms,
        30_000,
        3_600_000,
        "restart_backoff_max_ms",
    )?
    .max(backoff);
    let log_max_bytes = file.log_max_bytes.unwrap_or(DEFAULT_LOG_MAX_BYTES);
    if !(1024..=1024 * 1024 * 1024).contains(&log_max_bytes) {
        bail!("log_max_bytes {log_max_bytes} is out of range; use 1024 to 1073741824");
    }
    let log_files = file.log_files.unwrap_or(DEFAULT_LOG_FILES);
    if log_files > 100 {
        bail!("log_files {log_files} is above 100");
    }
    Ok(ServiceSpec {
        requirements: Requirements {
            soft_rtt_ms: file.soft_rtt_ms,
            hard_rtt_ms: file.hard_rtt_ms,
            cpu_millis: file.cpu_millis,
            memory_mb: file.memory_mb,
        },
        name: file.name,
        command: file.command,
        env: file.env,
        workdir: file.workdir,
        scale,
        port: file.port,
        health: file.health,
        tags: file.tags,
        grace: millis(file.grace_ms, 10_000, 600_000, "grace_ms")?,
        drain: file
            .drain_ms
            .map(|ms| millis(Some(ms), 0, 600_000, "drain_ms"))
            .transpose()?,
        start_timeout: millis(file.start_timeout_ms, 60_000, 3_600_000, "start_timeout_ms")?
            .max(Duration::from_millis(100)),
        backoff,
        backoff_max,
        check_interval: millis(
            file.check_interval_ms,
            5_000,
            3_600_000,
            "check_interval_ms",
        )?
        .max(Duration::from_millis(100)),
        log_max_bytes,
        log_files,
        depends_on: file.depends_on,
        build: file.build,
        watch: file.watch,
    })
}

/// A dependency cycle among `services` (name, depends_on), as the names
/// around it ending where it began, if there is one.
pub fn dependency_cycle(services: &[(String, Vec<String>)]) -> Option<Vec<String>> {
    // Depth-first search; `path` is the chain being followed.
    fn visit<'a>(
        name: &'a str,
        services: &'a [(String, Vec<String>)],
        done: &mut Vec<&'a str>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == name) {
            let mut cycle: Vec<String> = path[at..].iter().map(|s| (*s).to_owned()).collect();
            cycle.push(name.to_owned());
            return Some(cycle);
        }
        if done.contains(&name) {
            return None;
        }
        path.push(name);
        let deps = services.iter().find(|(n, _)| n == name).map(|(_, d)| d);
        for dep in deps.into_iter().flatten() {
            if let Some(cycle) = visit(dep, services, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.push(name);
        None
    }
    let mut done = Vec::new();
    for (name, _) in services {
        if let Some(cycle) = visit(name, services, &mut done, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

/// Refuses a `depends_on` naming no supervised service, or a cycle.
pub fn check_dependencies(specs: &[ServiceSpec]) -> anyhow::Result<()> {
    for spec in specs {
        for dep in &spec.depends_on {
            if dep == &spec.name {
                bail!("{:?} depends on itself (depends_on); remove it", spec.name);
            }
            if !specs.iter().any(|s| &s.name == dep) {
                bail!(
                    "{:?} depends on {dep:?} (depends_on), which is not supervised here; \
                     supervise it too or remove it from depends_on",
                    spec.name
                );
            }
        }
    }
    let graph: Vec<_> = specs
        .iter()
        .map(|s| (s.name.clone(), s.depends_on.clone()))
        .collect();
    if let Some(cycle) = dependency_cycle(&graph) {
        bail!(
            "depends_on has a cycle: {}; a service cannot wait for itself, remove one of these",
            cycle.join(" -> ")
        );
    }
    Ok(())
}

/// Fails early, with the name, when the program cannot be found.
fn find_program(program: &str, workdir: Option<&Path>) -> anyhow::Result<()> {
    let found = if program.contains('/') {
        let path = Path::new(program);
        let path = match workdir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_owned(),
        };
        path.is_file()
    } else {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
            .unwrap_or(false)
    };
    if !found {
        bail!("cannot find the program {program:?}; give its full path or put it on PATH");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh() -> String {
        "/bin/sh".to_owned()
    }

    #[test]
    fn exec_flags_resolve_with_defaults() {
        let args = AgentArgs {
            exec: Some("echo".into()),
            exec_command: vec![sh(), "-c".into(), "true".into()],
            scale: Some(3),
            ..AgentArgs::default()
        };
        let specs = resolve(&args).expect("valid");
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].scale, 3);
        assert_eq!(specs[0].grace, Duration::from_secs(10));
        assert_eq!(specs[0].drain, None);
        assert!(!specs[0].declares_requirements());
    }

    #[test]
    fn bad_services_are_explained() {
        let base = ServiceFile {
            name: "echo".into(),
            command: vec![sh()],
            ..ServiceFile::default()
        };
        assert!(check(base.clone(), "t").is_ok());
        let err = |f: ServiceFile| format!("{:#}", check(f, "t").expect_err("invalid"));
        assert!(err(ServiceFile {
            name: "Echo".into(),
            ..base.clone()
        })
        .contains("DNS"));
        assert!(err(ServiceFile {
            command: vec![],
            ..base.clone()
        })
        .contains("no command"));
        assert!(err(ServiceFile {
            command: vec!["no-such-program-gossamer".into()],
            ..base.clone()
        })
        .contains("cannot find"));
        assert!(err(ServiceFile {
            scale: Some(0),
            ..base.clone()
        })
        .contains("scale"));
        assert!(err(ServiceFile {
            port: Some(65535),
            scale: Some(2),
            ..base.clone()
        })
        .contains("65535"));
        assert!(err(ServiceFile {
            health: Some("healthz".into()),
            ..base.clone()
        })
        .contains("start with '/'"));
    }

    #[test]
    fn dependency_cycles_are_found_and_named() {
        let g = |edges: &[(&str, &[&str])]| {
            edges
                .iter()
                .map(|(n, d)| ((*n).to_owned(), d.iter().map(|s| (*s).to_owned()).collect()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            dependency_cycle(&g(&[("web", &["api"]), ("api", &["db"]), ("db", &[])])),
            None
        );
        assert_eq!(
            dependency_cycle(&g(&[("web", &["api"]), ("api", &["db"]), ("db", &["web"])])),
            Some(vec!["web".into(), "api".into(), "db".into(), "web".into()])
        );
    }

    #[test]
    fn command_without_exec_is_refused() {
        let args = AgentArgs {
            exec_command: vec![sh()],
            ..AgentArgs::default()
        };
        assert!(resolve(&args).is_err());
        let args = AgentArgs {
            scale: Some(2),
            ..AgentArgs::default()
        };
        assert!(resolve(&args).is_err());
    }

    #[test]
    fn the_config_file_declares_services() {
        let text = r#"
            [[supervise]]
            name = "billing"
            command = ["/bin/sh", "-c", "exec sleep 1"]
            env = { A = "1" }
            scale = 2
            cpu_millis = 500
            memory_mb = 256
        "#;
        let args: AgentArgs = toml::from_str(text).expect("toml");
        let specs = resolve(&args).expect("valid");
        assert_eq!(specs[0].name, "billing");
        assert_eq!(specs[0].requirements.cpu_millis, Some(500));
        assert_eq!(specs[0].env.get("A").map(String::as_str), Some("1"));
        assert!(specs[0].declares_requirements());
        let dup = format!("{text}\n{text}");
        let args: AgentArgs = toml::from_str(&dup).expect("toml");
        assert!(resolve(&args).is_err());
    }
}
