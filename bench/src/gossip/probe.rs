//! One more agent as its own process (`gossamer agent`), joined to the
//! in-process cluster: its start-to-ready time includes process start, and
//! its resident memory is one agent's alone, idle with every member known.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::cluster::status_kib;

/// What the separate agent process measured.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// From spawn to `listeners.json` written (the agent's ready point), in ms.
    pub start_to_ready_ms: f64,
    /// Members it saw alive (itself included) when memory was read.
    pub members_seen: usize,
    /// Seconds from ready to seeing every member.
    pub full_view_s: f64,
    /// Resident memory when idle with every member known, in KiB.
    pub rss_kib: u64,
    /// Peak resident memory, in KiB.
    pub hwm_kib: u64,
}

/// The `gossamer` binary next to this one (`target/release/gossamer`).
pub fn find_binary(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return path.is_file().then(|| path.to_path_buf());
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    // Tests run from target/<profile>/deps; the binary sits one level up.
    [dir.join("gossamer"), dir.parent()?.join("gossamer")]
        .into_iter()
        .find(|p| p.is_file())
}

struct Killed(Child, PathBuf);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// Starts the agent binary joined to `seed`, waits until it sees
/// `expect_members` alive (itself included), lets it idle for `settle`,
/// reads its memory and kills it.
pub async fn measure(
    binary: &Path,
    seed: &str,
    expect_members: usize,
    settle: Duration,
) -> anyhow::Result<ProbeResult> {
    let dir = std::env::temp_dir().join(format!(
        "gossamer-bench-probe-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let started = Instant::now();
    let child = Command::new(binary)
        .arg("agent")
        .args(["--node-id", "gossip-probe"])
        .args(["--bind", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--proxy-listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--profile", "local"])
        .args(["--psk", "gossamer-demo-passphrase"])
        .args(["--join", seed])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("GOSSAMER_JOIN")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let mut guard = Killed(child, dir.clone());
    let listeners = dir.join("data").join("listeners.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    let admin = loop {
        if let Ok(bytes) = std::fs::read(&listeners) {
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
                if let Some(admin) = value.get("admin").and_then(|a| a.as_str()) {
                    break admin.to_owned();
                }
            }
        }
        if let Ok(Some(status)) = guard.0.try_wait() {
            bail!(
                "the probe agent exited with {status}; see {}",
                dir.join("agent.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!("the probe agent was not ready within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let start_to_ready = started.elapsed();
    let ready_at = Instant::now();
    let client = client::Client::new(&format!("http://{admin}"))?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = 0;
    while seen < expect_members {
        if Instant::now() > deadline {
            bail!("the probe agent saw {seen} of {expect_members} members after 90 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(nodes) = client.nodes().await {
            seen = nodes
                .iter()
                .filter(|n| n.state == mesh_proto::api::MemberState::Alive)
                .count();
        }
    }
    let full_view = ready_at.elapsed();
    tokio::time::sleep(settle).await;
    let status = format!("/proc/{}/status", guard.0.id());
    Ok(ProbeResult {
        start_to_ready_ms: start_to_ready.as_secs_f64() * 1000.0,
        members_seen: seen,
        full_view_s: full_view.as_secs_f64(),
        rss_kib: status_kib(&status, "VmRSS:"),
        hwm_kib: status_kib(&status, "VmHWM:"),
    })
}
