//! nginx and HAProxy as local reverse proxies with keep-alive upstreams,
//! for comparison. Each is started from a config written to a temporary
//! directory, on a free loopback port, and killed after its run. A proxy
//! whose binary is absent is skipped with a note.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Which reverse proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// nginx, `proxy_pass` to an upstream with `keepalive`.
    Nginx,
    /// HAProxy in HTTP mode with `http-reuse always`.
    Haproxy,
}

impl Kind {
    /// Name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    /// Where Debian installs the binary.
    fn binary(self) -> &'static str {
        match self {
            Kind::Nginx => "/usr/sbin/nginx",
            Kind::Haproxy => "/usr/sbin/haproxy",
        }
    }

    /// The binary, if installed.
    pub fn find(self) -> Option<PathBuf> {
        let path = PathBuf::from(self.binary());
        path.is_file().then_some(path)
    }

    /// Why this proxy is skipped when absent.
    pub fn missing_note(self) -> String {
        format!(
            "skipped: {} not found (install it with `apt-get install -y {}`)",
            self.binary(),
            self.name()
        )
    }
}

/// A running reverse proxy; killed on drop.
pub struct External {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl External {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for External {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master then stops its workers, which a
        // SIGKILL of the master would leave running.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("no free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// An nginx config with `workers` and, inside `http`, `server`: everything
/// it writes (pid, logs, temporary files) stays in `dir`.
fn nginx_conf(dir: &Path, workers: &str, server: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes {workers};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{server}
}}
"
    )
}

/// nginx as a reverse proxy with a keep-alive upstream.
fn nginx_config(dir: &Path, port: u16, upstream: SocketAddr) -> String {
    let server = format!(
        "    upstream echo {{
        server {upstream};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering on;
        }}
    }}"
    );
    nginx_conf(dir, "auto", &server)
}

/// nginx as the service: one worker answering `return 200`.
fn nginx_service_config(dir: &Path, port: u16) -> String {
    let server = format!(
        "    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{ return 200 \"ok\\n\"; }}
    }}"
    );
    nginx_conf(dir, "1", &server)
}

fn haproxy_config(port: u16, upstream: SocketAddr) -> String {
    format!(
        "global
    maxconn 8192
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend bench
    bind 127.0.0.1:{port}
    default_backend echo
backend echo
    server echo {upstream}
"
    )
}

/// Starts `kind` as a reverse proxy in front of `upstream`, waiting until
/// it accepts connections.
pub async fn start(kind: Kind, binary: &Path, upstream: SocketAddr) -> anyhow::Result<External> {
    launch(kind.name(), binary, |dir, port, command| match kind {
        Kind::Nginx => use_nginx_config(command, dir, &nginx_config(dir, port, upstream)),
        Kind::Haproxy => {
            let conf = dir.join("haproxy.cfg");
            std::fs::write(&conf, haproxy_config(port, upstream))?;
            command.arg("-db").arg("-f").arg(&conf);
            Ok(())
        }
    })
    .await
}

/// Starts nginx as the service itself (one worker answering `return 200`,
/// what users put behind a proxy to compare proxies), waiting until it
/// accepts connections.
pub async fn start_nginx_service(binary: &Path) -> anyhow::Result<External> {
    launch(Kind::Nginx.name(), binary, |dir, port, command| {
        use_nginx_config(command, dir, &nginx_service_config(dir, port))
    })
    .await
}

/// Writes `text` as nginx's config in `dir` and points `command` at it.
fn use_nginx_config(command: &mut Command, dir: &Path, text: &str) -> std::io::Result<()> {
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, text)?;
    command
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf);
    Ok(())
}

/// Runs `binary` as `name` on a free loopback port from a fresh directory,
/// after `configure` wrote its config there and set its arguments.
async fn launch(
    name: &str,
    binary: &Path,
    configure: impl FnOnce(&Path, u16, &mut Command) -> std::io::Result<()>,
) -> anyhow::Result<External> {
    let dir = std::env::temp_dir().join(format!(
        "gossamer-bench-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let port = free_port()?;
    let mut command = Command::new(binary);
    configure(&dir, port, &mut command)
        .with_context(|| format!("cannot write the {name} config in {}", dir.display()))?;
    let log = std::fs::File::create(dir.join("stderr.log"))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut external = External { addr, child, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(external);
        }
        if let Ok(Some(status)) = external.child.try_wait() {
            let log = std::fs::read_to_string(external.dir.join("stderr.log")).unwrap_or_default();
            bail!("{name} exited with {status} at start: {}", log.trim());
        }
        if Instant::now() > deadline {
            bail!("{name} did not accept connections on {addr} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
