//! A folder of services: every `DIR/*/service.toml` describes the service
//! of its folder. Errors name the file and the key.
//!
//! ```toml
//! # api/service.toml
//! command = "python3 -m http.server $SERVICE_PORT"   # or ["prog", "arg"]
//! build = "make"                  # run in the folder before the first start and on a change
//! watch = ["src/**"]              # changes rebuild and roll the copies
//! scale = 2
//! port = 8000                     # first copy's port [default: a free one]
//! health = "/healthz"
//! depends_on = ["db"]
//! env = { RUST_LOG = "info" }
//! [requirements]
//! cpu_millis = 250
//! memory_mb = 128
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::config::supervise::{dependency_cycle, ServiceFile};

/// The file each service folder holds.
pub const SERVICE_FILE: &str = "service.toml";

/// A program and its arguments, or one line for `sh -c`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum CommandLine {
    Shell(String),
    Argv(Vec<String>),
}

impl CommandLine {
    fn argv(self) -> Vec<String> {
        match self {
            CommandLine::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line],
            CommandLine::Argv(argv) => argv,
        }
    }
}

/// `[requirements]` of a service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequirementsToml {
    cpu_millis: Option<u32>,
    memory_mb: Option<u32>,
    soft_rtt_ms: Option<u32>,
    hard_rtt_ms: Option<u32>,
}

/// One `service.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceToml {
    name: Option<String>,
    command: Option<CommandLine>,
    build: Option<CommandLine>,
    #[serde(default)]
    watch: Vec<String>,
    port: Option<u16>,
    scale: Option<u32>,
    health: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    requirements: RequirementsToml,
    #[serde(default)]
    tags: Vec<String>,
    grace_ms: Option<u64>,
    drain_ms: Option<u64>,
    start_timeout_ms: Option<u64>,
    check_interval_ms: Option<u64>,
}

/// One service of the folder, with the file it came from.
#[derive(Debug, Clone)]
pub struct FolderService {
    /// Its `service.toml`.
    pub file: PathBuf,
    /// What the agent supervises.
    pub service: ServiceFile,
}

/// Reads every `DIR/*/service.toml`, in name order; `watch_all` watches
/// every service with a build (its `watch`, or all its files).
pub fn read(dir: &Path, watch_all: bool) -> anyhow::Result<Vec<FolderService>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "cannot read the folder {}; pass the folder holding one folder per service",
            dir.display()
        )
    })?;
    let mut folders: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(SERVICE_FILE).is_file())
        .collect();
    folders.sort();
    if folders.is_empty() {
        bail!(
            "no service in {}: each service needs a folder with a {SERVICE_FILE}, \
             for example {}/api/{SERVICE_FILE} holding command = \"./server\"",
            dir.display(),
            dir.display()
        );
    }
    let mut services = Vec::new();
    for folder in folders {
        let file = folder.join(SERVICE_FILE);
        let service = one(&folder, &file, watch_all)?;
        if let Some(other) = services
            .iter()
            .find(|s: &&FolderService| s.service.name == service.name)
        {
            bail!(
                "{} and {} both name the service {:?} (key `name`); give each its own name",
                other.file.display(),
                file.display(),
                service.name
            );
        }
        services.push(FolderService { file, service });
    }
    for s in &services {
        for dep in &s.service.depends_on {
            if !services.iter().any(|o| &o.service.name == dep) {
                bail!(
                    "{}: `depends_on` names {dep:?}, which is no service of {}; \
                     the services are: {}",
                    s.file.display(),
                    dir.display(),
                    services
                        .iter()
                        .map(|o| o.service.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    let graph: Vec<_> = services
        .iter()
        .map(|s| (s.service.name.clone(), s.service.depends_on.clone()))
        .collect();
    if let Some(cycle) = dependency_cycle(&graph) {
        let files: Vec<String> = services
            .iter()
            .filter(|s| cycle.contains(&s.service.name))
            .map(|s| s.file.display().to_string())
            .collect();
        bail!(
            "`depends_on` has a cycle: {} (in {}); remove one of these dependencies",
            cycle.join(" -> "),
            files.join(", ")
        );
    }
    Ok(services)
}

fn one(folder: &Path, file: &Path, watch_all: bool) -> anyhow::Result<ServiceFile> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let parsed: ServiceToml = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}; the keys are command, build, watch, port, scale, health, env, \
             depends_on, requirements, tags, name, grace_ms, drain_ms, start_timeout_ms, check_interval_ms",
            file.display(),
            e.to_string().trim_end()
        )
    })?;
    let folder_name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = parsed.name.unwrap_or(folder_name);
    let Some(command) = parsed.command else {
        bail!(
            "{}: no `command`; add the line that starts the service, for example \
             command = \"./server --port $SERVICE_PORT\"",
            file.display()
        );
    };
    let command = command.argv();
    if command.is_empty() {
        bail!(
            "{}: `command` is empty; give the program and its arguments",
            file.display()
        );
    }
    let build = parsed.build.map(CommandLine::argv).unwrap_or_default();
    let mut watch = parsed.watch;
    if watch_all && watch.is_empty() && !build.is_empty() {
        watch.push("**".to_owned());
    }
    let workdir = std::path::absolute(folder).unwrap_or_else(|_| folder.to_owned());
    Ok(ServiceFile {
        name,
        command,
        env: parsed.env,
        workdir: Some(workdir),
        scale: parsed.scale,
        port: parsed.port,
        health: parsed.health,
        cpu_millis: parsed.requirements.cpu_millis,
        memory_mb: parsed.requirements.memory_mb,
        soft_rtt_ms: parsed.requirements.soft_rtt_ms,
        hard_rtt_ms: parsed.requirements.hard_rtt_ms,
        tags: parsed.tags,
        grace_ms: parsed.grace_ms,
        drain_ms: parsed.drain_ms,
        start_timeout_ms: parsed.start_timeout_ms,
        check_interval_ms: parsed.check_interval_ms,
        depends_on: parsed.depends_on,
        build,
        watch,
        ..ServiceFile::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gossamer-up-folder-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        for (service, text) in files {
            std::fs::create_dir_all(dir.join(service)).expect("mkdir");
            std::fs::write(dir.join(service).join(SERVICE_FILE), text).expect("write");
        }
        dir
    }

    fn error(files: &[(&str, &str)]) -> String {
        format!("{:#}", read(&folder(files), false).expect_err("invalid"))
    }

    #[test]
    fn services_are_read_with_shell_and_argv_commands() {
        let dir = folder(&[
            (
                "api",
                "command = \"exec ./server\"\nscale = 2\ndepends_on = [\"db\"]",
            ),
            (
                "db",
                "command = [\"/bin/sh\", \"-c\", \"sleep 1\"]\n[requirements]\nmemory_mb = 64",
            ),
        ]);
        let services = read(&dir, false).expect("valid");
        assert_eq!(services.len(), 2);
        assert_eq!(services[0].service.name, "api");
        assert_eq!(services[0].service.command[..2], ["/bin/sh", "-c"]);
        assert_eq!(services[1].service.memory_mb, Some(64));
        assert!(services[0].service.watch.is_empty());
    }

    #[test]
    fn watch_all_watches_every_file_of_a_service_with_a_build() {
        let dir = folder(&[
            ("api", "command = \"true\"\nbuild = \"make\""),
            ("db", "command = \"true\""),
            (
                "web",
                "command = \"true\"\nbuild = \"make\"\nwatch = [\"src/**\"]",
            ),
        ]);
        let services = read(&dir, true).expect("valid");
        let watch: Vec<_> = services.iter().map(|s| s.service.watch.clone()).collect();
        assert_eq!(
            watch,
            [vec!["**".to_owned()], vec![], vec!["src/**".to_owned()]]
        );
    }

    #[test]
    fn mistakes_name_the_file_and_the_key() {
        let e = error(&[("api", "command = \"true\"\nreplicas = 2")]);
        assert!(
            e.contains("api/service.toml") && e.contains("replicas"),
            "{e}"
        );
        let e = error(&[("api", "scale = 2")]);
        assert!(
            e.contains("api/service.toml") && e.contains("`command`"),
            "{e}"
        );
        let e = error(&[
            ("a", "command = \"true\"\ndepends_on = [\"b\"]"),
            ("b", "command = \"true\"\ndepends_on = [\"a\"]"),
        ]);
        assert!(e.contains("cycle") && e.contains("a -> b -> a"), "{e}");
        let e = error(&[("a", "command = \"true\"\ndepends_on = [\"zz\"]")]);
        assert!(e.contains("a/service.toml") && e.contains("zz"), "{e}");
    }
}
