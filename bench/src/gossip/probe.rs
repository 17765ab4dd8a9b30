//! One more agent as its own process (`gossamer agent`), joined to the
//! in-process cluster: its start-to-ready time includes process start, and
//! its resident memory is one agent's alone, idle with every member known.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use sidecar::config::Profile;

use super::cluster::status_kib;
use crate::agent_proc::AgentProcess;

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

/// Starts the agent binary joined to `seed`, waits until it sees
/// `expect_members` alive (itself included), lets it idle for `settle`,
/// reads its memory and kills it.
pub async fn measure(
    binary: &Path,
    profile: Profile,
    seed: &str,
    expect_members: usize,
    settle: Duration,
) -> anyhow::Result<ProbeResult> {
    let extra = vec![
        "--profile".to_owned(),
        super::profile_name(profile),
        "--join".to_owned(),
        seed.to_owned(),
    ];
    let mut process = AgentProcess::start(binary, "gossip-probe", &extra).await?;
    let start_to_ready = process.start_to_ready;
    let admin = process.addrs.admin;
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
    let status = format!("/proc/{}/status", process.pid());
    let result = ProbeResult {
        start_to_ready_ms: start_to_ready.as_secs_f64() * 1000.0,
        members_seen: seen,
        full_view_s: full_view.as_secs_f64(),
        rss_kib: status_kib(&status, "VmRSS:"),
        hwm_kib: status_kib(&status, "VmHWM:"),
    };
    // It leaves cleanly, so the measurements after it see no failure.
    process.stop().await;
    Ok(result)
}
