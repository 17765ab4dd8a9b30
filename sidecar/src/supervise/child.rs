//! One process of a supervised copy: started with its port and the agent's
//! addresses in its environment, probed until it serves, and stopped
//! gracefully (SIGTERM to its process group, SIGKILL after the grace period).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::config::supervise::ServiceSpec;

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between probes while a copy starts.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// What a copy learns about its place: its port and the agent's addresses.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Service name.
    pub service: String,
    /// Instance id.
    pub instance: String,
    /// Port the process must listen on (127.0.0.1).
    pub port: u16,
    /// The agent's proxy.
    pub proxy: SocketAddr,
    /// The agent's admin API URL.
    pub admin_url: String,
}

impl Placement {
    /// The variables set in the process's environment (and substituted as
    /// `${NAME}` in its arguments and extra environment).
    pub fn variables(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("SERVICE_PORT", self.port.to_string()),
            ("SERVICE_NAME", self.service.clone()),
            ("SERVICE_INSTANCE", self.instance.clone()),
            ("PROXY_PORT", self.proxy.port().to_string()),
            ("PROXY_ADDR", self.proxy.to_string()),
            ("GOSSAMER_AGENT", self.admin_url.clone()),
        ])
    }
}

/// Replaces `${NAME}` of the injected variables in `text`.
pub fn substitute(text: &str, variables: &BTreeMap<&'static str, String>) -> String {
    let mut out = text.to_owned();
    for (name, value) in variables {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    out
}

/// Starts the process of a copy: its own process group (a Ctrl-C meant for
/// the agent must not reach it before it is deregistered), stdout and
/// stderr piped, and none of the agent's `GOSSAMER_*` settings (they hold
/// the cluster passphrase) besides the admin URL.
pub fn spawn(spec: &ServiceSpec, placement: &Placement) -> std::io::Result<Child> {
    let variables = placement.variables();
    let mut args = spec.command.iter().map(|a| substitute(a, &variables));
    let program = args.next().unwrap_or_default();
    let mut command = Command::new(program);
    command.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GOSSAMER_") {
            command.env_remove(key);
        }
    }
    for (key, value) in &spec.env {
        command.env(key, substitute(value, &variables));
    }
    for (key, value) in &variables {
        command.env(key, value);
    }
    if let Some(dir) = &spec.workdir {
        command.current_dir(dir);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    command.spawn()
}

fn signal_group(pid: u32, signal: rustix::process::Signal) {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    // The group reaches what a shell wrapper started; fall back to the
    // process itself if it left its group.
    if rustix::process::kill_process_group(pid, signal).is_err() {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Stops `child`: SIGTERM, then SIGKILL after `grace`. Returns its exit
/// status and whether it had to be killed.
pub async fn stop(child: &mut Child, grace: Duration) -> (Option<ExitStatus>, bool) {
    if let Ok(Some(status)) = child.try_wait() {
        return (Some(status), false);
    }
    if let Some(pid) = child.id() {
        signal_group(pid, rustix::process::Signal::TERM);
    }
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return (status.ok(), false);
    }
    if let Some(pid) = child.id() {
        signal_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.start_kill();
    (child.wait().await.ok(), true)
}

/// Describes an exit status for people.
pub fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => s.to_string(),
        },
        None => "unknown status".to_owned(),
    }
}

/// The port for a copy: the fixed one, else the one it had if still free,
/// else a free loopback port.
pub fn choose_port(fixed: Option<u16>, previous: Option<u16>) -> std::io::Result<u16> {
    if let Some(port) = fixed {
        return Ok(port);
    }
    if let Some(port) = previous {
        if TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok() {
            return Ok(port);
        }
    }
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(listener.local_addr()?.port())
}

/// Why a copy is not serving (yet).
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotServing {
    /// Its port refuses connections.
    #[error("port {port} refuses connections: {reason}")]
    Refused {
        /// The copy's port.
        port: u16,
        /// What the connect said.
        reason: String,
    },
    /// Its port did not accept in time.
    #[error("port {port} did not accept within {PROBE_TIMEOUT:?}")]
    Silent {
        /// The copy's port.
        port: u16,
    },
    /// The health path answered, but not 2xx.
    #[error("GET {path} answered {status}")]
    Unhealthy {
        /// The health path.
        path: String,
        /// Its status.
        status: u16,
    },
    /// The health request failed or timed out.
    #[error("GET {path} failed: {reason}")]
    CheckFailed {
        /// The health path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The process exited before it served.
    #[error("exited with {0} before serving")]
    Exited(String),
    /// Not ready when the start timeout ended.
    #[error("not ready after {timeout:?}: {last}")]
    StartTimeout {
        /// The start timeout.
        timeout: Duration,
        /// The last probe's failure.
        last: Box<NotServing>,
    },
}

/// One check: the port accepts a connection, and `health` (when set)
/// answers 2xx.
pub async fn probe(port: u16, health: Option<&str>) -> Result<(), NotServing> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(NotServing::Refused {
                port,
                reason: e.to_string(),
            })
        }
        Err(_) => return Err(NotServing::Silent { port }),
    };
    let Some(path) = health else {
        return Ok(());
    };
    let failed = |reason: String| NotServing::CheckFailed {
        path: path.to_owned(),
        reason,
    };
    match tokio::time::timeout(PROBE_TIMEOUT, http_get(stream, addr, path)).await {
        Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
        Ok(Ok(status)) => Err(NotServing::Unhealthy {
            path: path.to_owned(),
            status,
        }),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_) => Err(failed(format!("no answer within {PROBE_TIMEOUT:?}"))),
    }
}

async fn http_get(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    use http_body_util::{BodyExt, Empty};
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header("user-agent", "gossamer-supervisor")
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    // Read the body so the server sees a complete exchange.
    let _ = response.into_body().collect().await;
    driver.abort();
    Ok(status)
}

/// Probes until the copy serves or `timeout` passes; the last failure
/// explains a timeout.
pub async fn wait_ready(
    port: u16,
    health: Option<&str>,
    timeout: Duration,
) -> Result<(), NotServing> {
    let deadline = Instant::now() + timeout;
    loop {
        match probe(port, health).await {
            Ok(()) => return Ok(()),
            Err(why) if Instant::now() >= deadline => {
                return Err(NotServing::StartTimeout {
                    timeout,
                    last: Box::new(why),
                })
            }
            Err(_) => tokio::time::sleep(PROBE_EVERY).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_substitute_in_arguments() {
        let placement = Placement {
            service: "echo".into(),
            instance: "echo-n-1".into(),
            port: 9000,
            proxy: "127.0.0.1:4201".parse().expect("addr"),
            admin_url: "http://127.0.0.1:4200".into(),
        };
        let vars = placement.variables();
        assert_eq!(
            substitute("--listen=127.0.0.1:${SERVICE_PORT}", &vars),
            "--listen=127.0.0.1:9000"
        );
        assert_eq!(
            substitute("${PROXY_ADDR} $SERVICE_PORT", &vars),
            "127.0.0.1:4201 $SERVICE_PORT"
        );
    }

    #[tokio::test]
    async fn probes_see_ports_and_health_paths() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(crate::echo::serve(listener, "t".into()));
        assert!(probe(port, None).await.is_ok());
        assert!(probe(port, Some("/status/204")).await.is_ok());
        let err = probe(port, Some("/status/503")).await.expect_err("503");
        assert!(err.to_string().contains("503"), "{err}");
        let free = choose_port(None, None).expect("port");
        assert!(probe(free, None).await.is_err());
        assert_eq!(choose_port(None, Some(free)).expect("port"), free);
        assert_ne!(choose_port(None, Some(port)).expect("port"), port);
    }

    #[tokio::test]
    async fn stop_terminates_then_kills() {
        let spec = crate::config::supervise::check(
            crate::config::supervise::ServiceFile {
                name: "t".into(),
                command: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "trap '' TERM; echo trapped; while true; do sleep 0.05; done".into(),
                ],
                ..Default::default()
            },
            "test",
        )
        .expect("spec");
        let placement = Placement {
            service: "t".into(),
            instance: "t-1".into(),
            port: 1,
            proxy: "127.0.0.1:1".parse().expect("addr"),
            admin_url: "http://127.0.0.1:1".into(),
        };
        let mut child = spawn(&spec, &placement).expect("spawn");
        // Signal only once the shell says its trap is installed.
        let mut out = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line)
            .await
            .expect("read");
        assert_eq!(line.trim(), "trapped");
        let (status, killed) = stop(&mut child, Duration::from_millis(300)).await;
        assert!(killed, "ignored SIGTERM, so SIGKILL was needed");
        assert_eq!(describe(status), "signal 9");

        let spec = crate::config::supervise::check(
            crate::config::supervise::ServiceFile {
                name: "t".into(),
                command: vec!["/bin/sh".into(), "-c".into(), "exec sleep 30".into()],
                ..Default::default()
            },
            "test",
        )
        .expect("spec");
        let mut child = spawn(&spec, &placement).expect("spawn");
        let (status, killed) = stop(&mut child, Duration::from_secs(5)).await;
        assert!(!killed);
        assert_eq!(describe(status), "signal 15");
    }
}
