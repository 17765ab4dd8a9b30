//! A `gossamer agent` as its own process, on free loopback ports: for the
//! proxy paths that compare with nginx and HAProxy process to process, and
//! for the gossip scenario's memory and start-up probe. Killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The passphrase of every bench cluster (the demo's, so in-process agents
/// from `sidecar::demo::local_config` and these processes trust each other).
pub const PSK: &str = "gossamer-demo-passphrase";

/// The `gossamer` binary: `explicit` if given, else next to this executable
/// (`target/release/gossamer` for `cargo run --release -p bench`).
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

/// Where a started agent listens.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// QUIC endpoint.
    pub quic: SocketAddr,
    /// Admin API.
    pub admin: SocketAddr,
    /// Proxy.
    pub proxy: SocketAddr,
}

/// A running agent process.
pub struct AgentProcess {
    child: Child,
    dir: PathBuf,
    /// Its listeners.
    pub addrs: Addrs,
    /// From spawn to `listeners.json` written (the agent's ready point).
    pub start_to_ready: Duration,
}

impl AgentProcess {
    /// Starts `binary agent` named `name` with `extra` flags and waits until ready.
    pub async fn start(binary: &Path, name: &str, extra: &[String]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "gossamer-bench-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let log = std::fs::File::create(dir.join("agent.log"))?;
        let started = Instant::now();
        let child = Command::new(binary)
            .arg("agent")
            .args(["--node-id", name])
            .args(["--bind", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--proxy-listen", "127.0.0.1:0"])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--dns-listen", "off"])
            .args(["--psk", PSK])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(extra)
            .env_remove("GOSSAMER_JOIN")
            .env("GOSSAMER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut process = Self {
            child,
            dir,
            addrs: Addrs {
                quic: SocketAddr::from(([127, 0, 0, 1], 0)),
                admin: SocketAddr::from(([127, 0, 0, 1], 0)),
                proxy: SocketAddr::from(([127, 0, 0, 1], 0)),
            },
            start_to_ready: Duration::ZERO,
        };
        let listeners = process.dir.join("data").join("listeners.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(addrs) = read_listeners(&listeners) {
                process.addrs = addrs;
                process.start_to_ready = started.elapsed();
                return Ok(process);
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                bail!(
                    "agent {name} exited with {status}; see {}",
                    process.dir.join("agent.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("agent {name} was not ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it with SIGTERM (it leaves the cluster and drains), waiting up
    /// to 10 s before the kill of `Drop`.
    pub async fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_listeners(path: &Path) -> Option<Addrs> {
    let bytes = std::fs::read(path).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let addr = |key: &str| value.get(key)?.as_str()?.parse::<SocketAddr>().ok();
    Some(Addrs {
        quic: addr("quic")?,
        admin: addr("admin")?,
        proxy: addr("proxy")?,
    })
}
