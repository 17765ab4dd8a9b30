//! Builds of supervised services (`build`), logged with the service's
//! logs as the instance `<service>-build`, and the watched files
//! (`watch`) whose change triggers one.
//!
//! Watching polls modification times: bounded (at most [`MAX_FILES`] files
//! per service, every [`WATCH_POLL`]), with no platform-specific watcher to
//! fail on network file systems or to run out of inotify handles.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::logs::{self, Stream};
use super::{BuildView, Service, Supervisor};

/// How often watched files are looked at.
pub const WATCH_POLL: Duration = Duration::from_millis(400);
/// Most files one service's globs may match; beyond, the rest is ignored.
pub const MAX_FILES: usize = 20_000;
/// Longest build.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// One watched file: path, modification time, size.
pub type Stamp = (PathBuf, Option<SystemTime>, u64);

/// Runs the service's build; true when it succeeded. Its output goes to
/// the service's logs; the result to `ps`.
pub(super) async fn run(supervisor: &Supervisor, service: &Service) -> bool {
    let spec = &service.spec;
    let instance = format!("{}-build", spec.name);
    let (log, log_rx) = mpsc::channel(1024);
    let path = service.dir.join("logs").join(format!("{instance}.log"));
    match logs::LogFile::open(path.clone(), spec.log_max_bytes, spec.log_files) {
        Ok(file) => {
            supervisor
                .helpers
                .spawn(logs::write_loop(file, supervisor.clock.clone(), log_rx));
        }
        Err(e) => warn!(path = %path.display(), error = %e, "cannot open the build log"),
    }
    let note = |text: String| {
        let log = log.clone();
        async move {
            let _ = log.send((Stream::Sup, text.into_bytes())).await;
        }
    };
    note(format!("building: {}", spec.build.join(" "))).await;
    let mut command = tokio::process::Command::new(&spec.build[0]);
    command
        .args(&spec.build[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = &spec.workdir {
        command.current_dir(dir);
    }
    // As for the copies: the agent's settings (the passphrase among them)
    // are not the build's business.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GOSSAMER_") {
            command.env_remove(key);
        }
    }
    for (key, value) in &spec.env {
        command.env(key, value);
    }
    let outcome = match command.spawn() {
        Err(e) => Err(format!("cannot start the build {:?}: {e}", spec.build[0])),
        Ok(mut child) => {
            if let Some(out) = child.stdout.take() {
                tokio::spawn(logs::pump(out, Stream::Out, log.clone()));
            }
            if let Some(err) = child.stderr.take() {
                tokio::spawn(logs::pump(err, Stream::Err, log.clone()));
            }
            match tokio::time::timeout(BUILD_TIMEOUT, child.wait()).await {
                Err(_) => {
                    let _ = child.start_kill();
                    Err(format!(
                        "the build ran over {} s and was killed",
                        BUILD_TIMEOUT.as_secs()
                    ))
                }
                Ok(Err(e)) => Err(format!("cannot wait for the build: {e}")),
                Ok(Ok(status)) if status.success() => Ok(()),
                Ok(Ok(status)) => Err(format!(
                    "the build failed ({})",
                    super::child::describe(Some(status))
                )),
            }
        }
    };
    let running = !service.copies().is_empty();
    let (ok, message) = match outcome {
        Ok(()) => (true, "build succeeded".to_owned()),
        Err(why) if running => (
            false,
            format!("{why}; the running copies keep serving the previous build"),
        ),
        Err(why) => (false, format!("{why}; the service is not started")),
    };
    note(message.clone()).await;
    if ok {
        info!(service = %spec.name, "build succeeded");
    } else {
        warn!(service = %spec.name, "{message}; see `gossamer logs {}`", spec.name);
    }
    service.set_phase(|p| {
        p.build = Some(BuildView {
            ok,
            at_ms: crate::catalog::wall_ms(),
            message,
        })
    });
    ok
}

/// The files under `root` matching any of `globs`, with their times and
/// sizes, sorted; hidden folders are skipped.
pub fn fingerprint(root: &Path, globs: &[String]) -> Vec<Stamp> {
    let patterns: Vec<Vec<&str>> = globs
        .iter()
        .map(|g| g.trim_start_matches("./").split('/').collect())
        .collect();
    let mut out = Vec::new();
    let mut stack = vec![(root.to_owned(), Vec::<String>::new())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let mut path = rel.clone();
            path.push(name);
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                if stack.len() + out.len() < MAX_FILES {
                    stack.push((entry.path(), path));
                }
            } else if patterns.iter().any(|p| {
                let parts: Vec<&str> = path.iter().map(String::as_str).collect();
                matches(p, &parts)
            }) {
                out.push((entry.path(), meta.modified().ok(), meta.len()));
                if out.len() >= MAX_FILES {
                    break;
                }
            }
        }
    }
    out.sort();
    out
}

/// True when the path segments match the glob segments: `**` is any
/// number of folders, `*` and `?` work within one name.
pub fn matches(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| matches(rest, &path[skip..])),
        Some((first, rest)) => path
            .split_first()
            .is_some_and(|(name, tail)| name_matches(first, name) && matches(rest, tail)),
    }
}

fn name_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|skip| go(rest, &n[skip..])),
            Some((b'?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str) -> bool {
        let p: Vec<&str> = pattern.split('/').collect();
        let f: Vec<&str> = path.split('/').collect();
        matches(&p, &f)
    }

    #[test]
    fn globs_match_names_and_folders() {
        assert!(m("src/**", "src/main.rs"));
        assert!(m("src/**", "src/a/b/c.rs"));
        assert!(!m("src/**", "tests/a.rs"));
        assert!(m("**/*.py", "app.py"));
        assert!(m("**/*.py", "a/b/app.py"));
        assert!(!m("*.py", "a/app.py"));
        assert!(m("server.sh", "server.sh"));
        assert!(m("v?.txt", "v1.txt"));
    }
}
