//! Process records: each running copy leaves `<copy>.pid.json` in its
//! service's directory, so the next run of the agent can tell what an
//! earlier run left behind. At start a record whose process is gone is
//! removed (and its instance deregistered); a process that is still there is
//! reported as a stray, never killed: it may be serving, and only its
//! operator knows.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// What a copy leaves on disk while its process runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidRecord {
    /// Service name.
    pub service: String,
    /// Instance id of the copy.
    pub instance: String,
    /// Copy number (from 1).
    pub copy: u32,
    /// Process id.
    pub pid: u32,
    /// Port the process was given.
    pub port: u16,
    /// The program as started (`argv[0]`), to tell a reused pid apart.
    pub program: String,
    /// When it started, ms since the Unix epoch.
    pub started_ms: u64,
}

/// A process an earlier run started that is still running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stray {
    /// What the earlier run recorded.
    pub record: PidRecord,
    /// True when its port is still taken.
    pub holds_port: bool,
}

/// Path of the record of copy `copy` in a service directory.
pub fn path(service_dir: &Path, copy: u32) -> PathBuf {
    service_dir.join(format!("{copy}.pid.json"))
}

/// Writes the record of a started copy.
pub fn write(service_dir: &Path, record: &PidRecord) {
    let written = serde_json::to_vec_pretty(record)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            fs::create_dir_all(service_dir)?;
            crate::persist::write_atomic(&path(service_dir, record.copy), &bytes)
                .map_err(std::io::Error::other)
        });
    if let Err(e) = written {
        warn!(service = %record.service, error = %e, "cannot write the process record; a stray process could go unnoticed after a crash");
    }
}

/// Removes the record of a copy whose process this run saw exit.
pub fn remove(service_dir: &Path, copy: u32) {
    let _ = fs::remove_file(path(service_dir, copy));
}

/// True when `pid` runs and is still `program` (not a reused pid).
pub fn process_alive(pid: u32, program: &str) -> bool {
    let Some(pid_value) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid_value) {
        Ok(()) => {}
        // It exists but belongs to someone else.
        Err(e) if e == rustix::io::Errno::PERM => {}
        Err(_) => return false,
    }
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
            argv0 == program.as_bytes()
        }
        // No procfs: trust the pid.
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

/// True when something listens on (or holds) the loopback `port`.
pub fn port_in_use(port: u16) -> bool {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_err()
}

/// Checks every record under `root` (one directory per service) left by an
/// earlier run: returns the strays (their records kept as
/// `stray-<pid>.json`) and the records removed because the process is gone.
pub fn sweep(root: &Path) -> (Vec<Stray>, Vec<PidRecord>) {
    let mut strays = Vec::new();
    let mut gone = Vec::new();
    let Ok(services) = fs::read_dir(root) else {
        return (strays, gone);
    };
    for service in services.flatten().filter(|e| e.path().is_dir()) {
        let Ok(files) = fs::read_dir(service.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            let is_copy = name.ends_with(".pid.json");
            let is_stray = name.starts_with("stray-") && name.ends_with(".json");
            if !is_copy && !is_stray {
                continue;
            }
            let path = file.path();
            let record: Option<PidRecord> = fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            let Some(record) = record else {
                warn!(path = %path.display(), "removing an unreadable process record");
                let _ = fs::remove_file(&path);
                continue;
            };
            if process_alive(record.pid, &record.program) {
                if is_copy {
                    let kept = service.path().join(format!("stray-{}.json", record.pid));
                    let _ = fs::rename(&path, kept);
                }
                strays.push(Stray {
                    holds_port: port_in_use(record.port),
                    record,
                });
            } else {
                let _ = fs::remove_file(&path);
                gone.push(record);
            }
        }
    }
    (strays, gone)
}

/// The strays recorded under `root` whose process still runs (for `ps`).
pub fn current_strays(root: &Path) -> Vec<Stray> {
    let Ok(services) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut strays = Vec::new();
    for service in services.flatten() {
        let Ok(files) = fs::read_dir(service.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("stray-") && name.ends_with(".json")) {
                continue;
            }
            let record: Option<PidRecord> = fs::read(file.path())
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            match record {
                Some(record) if process_alive(record.pid, &record.program) => strays.push(Stray {
                    holds_port: port_in_use(record.port),
                    record,
                }),
                _ => {
                    let _ = fs::remove_file(file.path());
                }
            }
        }
    }
    strays
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32, program: &str, port: u16) -> PidRecord {
        PidRecord {
            service: "svc".into(),
            instance: "svc-n-1".into(),
            copy: 1,
            pid,
            port,
            program: program.into(),
            started_ms: 0,
        }
    }

    #[test]
    fn records_of_gone_processes_are_removed_and_live_ones_kept_as_strays() {
        let root = std::env::temp_dir().join(format!(
            "gossamer-records-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let dir = root.join("svc");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        write(&dir, &record(child.id(), "sleep", port));
        let mut gone = record(u32::MAX / 2, "sleep", 1);
        gone.copy = 2;
        write(&dir, &gone);
        // A live pid running another program is a reused pid: gone too.
        let mut reused = record(std::process::id(), "not-this-program", 1);
        reused.copy = 3;
        write(&dir, &reused);

        let (strays, removed) = sweep(&root);
        assert_eq!(strays.len(), 1);
        assert_eq!(strays[0].record.pid, child.id());
        assert!(strays[0].holds_port);
        assert_eq!(removed.len(), 2);
        assert!(!path(&dir, 1).exists());
        assert!(dir.join(format!("stray-{}.json", child.id())).exists());
        assert_eq!(current_strays(&root).len(), 1);

        let _ = child.kill();
        let _ = child.wait();
        drop(listener);
        assert!(current_strays(&root).is_empty());
        let _ = fs::remove_dir_all(root);
    }
}
