//! `gossamer up [DIR]`: every service of a folder (`DIR/*/service.toml`,
//! see [`folder`]) supervised by one agent started in this process, with a
//! status table and the services' logs on stdout, until Ctrl-C or
//! `gossamer down DIR`.
//!
//! State lives in `DIR/.gossamer/`: the agent's data dir (`data/`, with the
//! services' logs under `data/supervise/<service>/logs/`) and `up.json`
//! (the pid and admin URL of the running `up`), which tells a second `up`
//! that one already runs and tells `down` whom to stop.

pub mod folder;
mod show;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::config::AgentArgs;
use crate::supervise::records;

/// `gossamer up` flags: the folder, then every `gossamer agent` flag.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// The folder holding one folder per service, each with a service.toml.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Rebuild and roll every service with a `build` when its files change
    /// (its `watch` globs, or all its files).
    #[arg(long)]
    pub watch: bool,
    /// Stop the processes an earlier run of this folder left running
    /// (SIGTERM, then SIGKILL after 5 s) instead of only reporting them.
    #[arg(long)]
    pub kill_strays: bool,
    /// Agent flags (ports, passphrase, --join...).
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// `DIR/.gossamer/up.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpRecord {
    /// Process id of the running `gossamer up`.
    pub pid: u32,
    /// Its agent's admin API.
    pub admin: String,
    /// Its agent's proxy.
    pub proxy: String,
}

/// `DIR/.gossamer`.
pub fn state_dir(dir: &Path) -> PathBuf {
    dir.join(".gossamer")
}

fn record_path(dir: &Path) -> PathBuf {
    state_dir(dir).join("up.json")
}

fn read_record(dir: &Path) -> Option<UpRecord> {
    let bytes = std::fs::read(record_path(dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// True when `pid` is a running `gossamer` (not a reused pid).
fn gossamer_alive(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit(')')
        .next()
        .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    !zombie && String::from_utf8_lossy(&cmdline).contains("gossamer")
}

/// Runs `gossamer up`.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let dir = args.dir.clone();
    if args.agent.exec.is_some() || !args.agent.exec_command.is_empty() {
        bail!("--exec is for `gossamer agent`; with `gossamer up` each service is a folder of {} with a service.toml", dir.display());
    }
    let services = folder::read(&dir, args.watch)?;
    let state = state_dir(&dir);
    if let Some(earlier) = read_record(&dir) {
        if earlier.pid != std::process::id() && gossamer_alive(earlier.pid) {
            bail!(
                "an earlier `gossamer up` (pid {}, admin {}) still runs in {}; \
                 stop it with `gossamer down {}` (or Ctrl-C in its terminal), \
                 or talk to it with `gossamer --agent {} ps`",
                earlier.pid,
                earlier.admin,
                dir.display(),
                dir.display(),
                earlier.admin
            );
        }
    }
    std::fs::create_dir_all(&state)
        .with_context(|| format!("cannot create {}; is the folder writable?", state.display()))?;
    let mut agent = args.agent.clone();
    if agent.config.is_none() && dir.join("gossamer.toml").is_file() {
        agent.config = Some(dir.join("gossamer.toml"));
    }
    if agent.data_dir.is_none() {
        agent.data_dir = Some(state.join("data"));
    }
    // A folder on a laptop: without a passphrase or peers (flags or
    // gossamer.toml), a single loopback node.
    let file: AgentArgs = agent
        .config
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| toml::from_str(&text).ok())
        .unwrap_or_default();
    let alone = [&agent, &file].iter().all(|a| {
        a.psk.is_none() && a.psk_file.is_none() && a.tls_ca.is_none() && a.join.is_empty()
    });
    if alone {
        agent.dev = true;
    }
    agent.supervise = services.iter().map(|s| s.service.clone()).collect();
    let config = agent.resolve()?;
    strays(&config.data_dir, &services, args.kill_strays);

    let running = crate::agent::start(config).await?;
    let listeners = running.agent.listeners;
    let record = UpRecord {
        pid: std::process::id(),
        admin: format!("http://{}", listeners.admin),
        proxy: listeners.proxy.to_string(),
    };
    crate::persist::write_atomic(&record_path(&dir), &serde_json::to_vec_pretty(&record)?)?;
    println!(
        "gossamer up: {} service{} of {}; admin {} (gossamer --agent {} ps), proxy {}; Ctrl-C or `gossamer down {}` stops them",
        services.len(),
        if services.len() == 1 { "" } else { "s" },
        dir.display(),
        record.admin,
        record.admin,
        record.proxy,
        dir.display()
    );
    let stop = crate::agent::wait_for_signal();
    tokio::select! {
        result = stop => result?,
        _ = show::follow(running.agent.clone(), std::io::IsTerminal::is_terminal(&std::io::stdout())) => {}
    }
    println!("gossamer up: stopping every service (deregistered, drained, stopped)...");
    running.stop().await;
    if read_record(&dir).is_some_and(|r| r.pid == std::process::id()) {
        let _ = std::fs::remove_file(record_path(&dir));
    }
    println!("gossamer up: stopped");
    Ok(())
}

/// Reports (or with `kill` stops) what an earlier run left: processes of
/// its pid records that still run, and fixed ports already held.
fn strays(data_dir: &Path, services: &[folder::FolderService], kill: bool) {
    let root = data_dir.join("supervise");
    let mut found = Vec::new();
    for service in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(service.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = file.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") {
                continue;
            }
            let record: Option<records::PidRecord> = std::fs::read(file.path())
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(record) = record {
                if records::process_alive(record.pid, &record.program) {
                    found.push((file.path(), record));
                }
            }
        }
    }
    for (path, record) in found {
        if kill {
            println!(
                "stopping pid {} ({} on port {}), left running by an earlier run (--kill-strays)",
                record.pid, record.instance, record.port
            );
            stop_process(record.pid);
            let _ = std::fs::remove_file(path);
        } else {
            println!(
                "warning: pid {} ({} on port {}) still runs from an earlier run; \
                 it is not stopped: run `gossamer up --kill-strays` or `kill {}`",
                record.pid, record.instance, record.port, record.pid
            );
        }
    }
    for s in services {
        let Some(port) = s.service.port else { continue };
        let copies = s.service.scale.unwrap_or(1);
        for p in port..port.saturating_add(copies as u16) {
            if records::port_in_use(p) {
                println!(
                    "warning: port {p} of {} is already held by another process; \
                     the copy will fail to listen until it is freed (`ss -ltnp 'sport = :{p}'` names it)",
                    s.service.name
                );
            }
        }
    }
}

/// SIGTERM to the process (and its group), SIGKILL after 5 s.
fn stop_process(pid: u32) {
    use rustix::process::{kill_process, kill_process_group, Pid, Signal};
    let Some(id) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    let _ = kill_process_group(id, Signal::TERM);
    let _ = kill_process(id, Signal::TERM);
    for _ in 0..50 {
        if !records::process_alive(pid, "") {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = kill_process_group(id, Signal::KILL);
    let _ = kill_process(id, Signal::KILL);
}

/// `gossamer down [DIR]`: SIGTERM to the `up` of DIR, then waits until it
/// stopped every service and exited.
pub async fn down(dir: &Path) -> anyhow::Result<()> {
    let Some(record) = read_record(dir) else {
        bail!(
            "no `gossamer up` runs in {} (no {}); start one with `gossamer up {}`",
            dir.display(),
            record_path(dir).display(),
            dir.display()
        );
    };
    if !gossamer_alive(record.pid) {
        let _ = std::fs::remove_file(record_path(dir));
        bail!(
            "the `gossamer up` of {} (pid {}) is not running any more; removed its stale {}",
            dir.display(),
            record.pid,
            record_path(dir).display()
        );
    }
    let pid = rustix::process::Pid::from_raw(i32::try_from(record.pid).unwrap_or(0))
        .context("the pid in up.json is not valid; remove the file")?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .with_context(|| format!("cannot signal pid {}", record.pid))?;
    println!(
        "asked `gossamer up` (pid {}) to stop; waiting...",
        record.pid
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while gossamer_alive(record.pid) {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "`gossamer up` (pid {}) did not stop within 300 s; see its terminal",
                record.pid
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("stopped every service of {}", dir.display());
    Ok(())
}
