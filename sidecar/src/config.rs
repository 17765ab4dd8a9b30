//! The agent's configuration: one struct read from flags, `GOSSAMER_*`
//! environment variables and an optional TOML file, in that order of
//! precedence, then resolved into [`AgentConfig`] with the documented defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use mesh_proto::names::validate_service_name;

mod admin_token;
pub mod supervise;
pub mod tcp;

pub use admin_token::AdminToken;

/// Default QUIC endpoint.
pub const DEFAULT_BIND: &str = "0.0.0.0:4300";
/// Default admin API listener.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:4200";
/// Default proxy listener.
pub const DEFAULT_PROXY: &str = "127.0.0.1:4201";
/// Default Prometheus listener.
pub const DEFAULT_METRICS: &str = "0.0.0.0:9102";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./gossamer-data";

/// Gossip timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Fast timings for tests and demos on one machine.
    Local,
    /// memberlist's LAN timings.
    #[default]
    Lan,
    /// memberlist's WAN timings.
    Wan,
}

/// Timings of the QUIC layer.
#[derive(Debug, Clone, Copy)]
pub struct TransportTimings {
    /// Give up dialling a peer after this long.
    pub connect_timeout: Duration,
    /// Close a connection that has been silent this long.
    pub idle_timeout: Duration,
    /// Send a keep-alive when nothing else was sent for this long.
    pub keep_alive: Duration,
    /// Close a connection that carried no stream or datagram for this long
    /// (keep-alives do not count): connections exist only to peers in use,
    /// and the next use dials again.
    pub idle_close: Duration,
}

/// The profile tables: every timing a profile sets, except foca's own
/// (`membership::foca_config`, which follows foca's presets).
impl Profile {
    /// QUIC timings.
    pub fn transport(self) -> TransportTimings {
        let (connect, idle, keep_alive, idle_close) = match self {
            Profile::Local => (1, 10, 2, 10),
            Profile::Lan => (3, 30, 5, 60),
            Profile::Wan => (10, 60, 10, 120),
        };
        TransportTimings {
            connect_timeout: Duration::from_secs(connect),
            idle_timeout: Duration::from_secs(idle),
            keep_alive: Duration::from_secs(keep_alive),
            idle_close: Duration::from_secs(idle_close),
        }
    }

    /// Time between two member pulls (memberlist's push-pull: 30 s on a LAN).
    pub fn member_sync_interval(self) -> Duration {
        match self {
            Profile::Local => Duration::from_secs(5),
            Profile::Lan => Duration::from_secs(30),
            Profile::Wan => Duration::from_secs(60),
        }
    }

    /// Time between anti-entropy rounds.
    pub fn anti_entropy_interval(self) -> Duration {
        match self {
            Profile::Local => Duration::from_secs(1),
            Profile::Lan => Duration::from_secs(5),
            Profile::Wan => Duration::from_secs(15),
        }
    }

    /// How long a supervised copy drains (deregistered, still serving)
    /// before it is stopped, unless its service sets its own.
    pub fn default_drain(self) -> Duration {
        match self {
            Profile::Local => Duration::from_millis(1000),
            Profile::Lan => Duration::from_millis(2000),
            Profile::Wan => Duration::from_millis(5000),
        }
    }
}

/// `gossamer agent` flags. Every flag also reads `GOSSAMER_<FLAG>`, and a
/// `--config` TOML file may hold the same keys (snake_case).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct AgentArgs {
    /// TOML file with any of these settings (flags and env win over it).
    #[arg(long, env = "GOSSAMER_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Unique node name [default: generated once, kept in the data dir].
    #[arg(long, env = "GOSSAMER_NODE_ID")]
    pub node_id: Option<String>,
    /// Worker threads, the cores the agent may keep busy [default: 1]. A
    /// flag or env only: the runtime starts before the config file is read.
    #[arg(long, env = "GOSSAMER_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    #[serde(skip)]
    pub threads: Option<u16>,
    /// UDP address of the QUIC endpoint [default: 0.0.0.0:4300].
    #[arg(long, env = "GOSSAMER_BIND")]
    pub bind: Option<SocketAddr>,
    /// Address peers use to reach this node [default: the bind address].
    #[arg(long, env = "GOSSAMER_ADVERTISE")]
    pub advertise: Option<SocketAddr>,
    /// Bootstrap peer HOST:PORT, repeatable (GOSSAMER_JOIN: comma-separated).
    #[arg(long, env = "GOSSAMER_JOIN", value_delimiter = ',')]
    #[serde(default)]
    pub join: Vec<String>,
    /// Cluster passphrase.
    #[arg(long, env = "GOSSAMER_PSK", hide_env_values = true)]
    pub psk: Option<String>,
    /// File holding the cluster passphrase.
    #[arg(long, env = "GOSSAMER_PSK_FILE")]
    pub psk_file: Option<PathBuf>,
    /// Bearer token the admin API requires on every write (PUT, POST,
    /// DELETE); reads stay open. The CLI sends GOSSAMER_ADMIN_TOKEN.
    #[arg(long, env = "GOSSAMER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token.
    #[arg(long, env = "GOSSAMER_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Operator CA certificate (PEM), instead of the passphrase-derived CA.
    #[arg(long, env = "GOSSAMER_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate chain (PEM), signed by --tls-ca.
    #[arg(long, env = "GOSSAMER_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "GOSSAMER_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// Admin HTTP API listener [default: 127.0.0.1:4200].
    #[arg(long, env = "GOSSAMER_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Outbound proxy listener for the local service [default: 127.0.0.1:4201].
    #[arg(long, env = "GOSSAMER_PROXY_LISTEN")]
    pub proxy_listen: Option<SocketAddr>,
    /// Prometheus /metrics listener [default: 0.0.0.0:9102].
    #[arg(long, env = "GOSSAMER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// DNS listener for *.gossamer, UDP and TCP, or `off` [default: 127.0.0.1:8600].
    #[arg(long, env = "GOSSAMER_DNS_LISTEN", value_name = "ADDR|off")]
    pub dns_listen: Option<String>,
    /// TTL of DNS answers, in seconds [default: 5].
    #[arg(long, env = "GOSSAMER_DNS_TTL", value_name = "SECONDS")]
    pub dns_ttl: Option<u32>,
    /// Write one JSON line per proxied request to PATH (appended), or to
    /// stdout with `-` [default: off].
    #[arg(long, env = "GOSSAMER_ACCESS_LOG", value_name = "PATH|-")]
    pub access_log: Option<PathBuf>,
    /// Directory for node identity, registrations and catalog snapshot [default: ./gossamer-data].
    #[arg(long, env = "GOSSAMER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Register a local instance NAME=PORT (127.0.0.1:PORT) at start, repeatable.
    #[arg(long = "service", env = "GOSSAMER_SERVICE", value_delimiter = ',')]
    #[serde(default, rename = "service")]
    pub services: Vec<String>,
    /// Gossip timings [default: lan].
    #[arg(long, env = "GOSSAMER_PROFILE", value_enum)]
    pub profile: Option<Profile>,
    /// Failure domain advertised in node metadata.
    #[arg(long, env = "GOSSAMER_ZONE")]
    pub zone: Option<String>,
    /// How long an instance is ejected after 5 consecutive failures, doubling on repeats [default: 30000].
    #[arg(long, env = "GOSSAMER_BASE_EJECTION_MS")]
    pub base_ejection_ms: Option<u64>,
    /// Open connections at most on each HTTP listener (proxy, admin,
    /// metrics); more are answered 503 and closed [default: 4096].
    #[arg(long, env = "GOSSAMER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Time a client of an HTTP listener has to send a request head, also
    /// the idle keep-alive timeout [default: 30000].
    #[arg(long, env = "GOSSAMER_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Drop the instances and metadata of a node down this long, in
    /// seconds; they come back if it returns [default: 259200 (72 h)].
    #[arg(long, env = "GOSSAMER_REAP_AFTER_S")]
    pub reap_after_s: Option<u64>,
    /// Let estimated (Vivaldi) RTT satisfy hard requirements.
    #[arg(long, env = "GOSSAMER_ALLOW_ESTIMATED_RTT")]
    #[serde(default)]
    pub allow_estimated_rtt: bool,
    /// Single node, ephemeral data dir, everything on loopback, no passphrase.
    #[arg(long, env = "GOSSAMER_DEV")]
    #[serde(default)]
    pub dev: bool,
    /// TEST ONLY: delay every datagram sent to ADDR by MS milliseconds, repeatable.
    #[arg(long, value_name = "ADDR=MS")]
    #[serde(default)]
    pub debug_link_delay: Vec<String>,
    /// TEST ONLY: drop every datagram sent to ADDR, repeatable.
    #[arg(long, value_name = "ADDR")]
    #[serde(default)]
    pub debug_link_drop: Vec<String>,
    /// Supervise a local service NAME: run the command given after `--`, register it once it serves, restart it when it exits.
    #[arg(long, env = "GOSSAMER_EXEC", value_name = "NAME")]
    #[serde(skip)]
    pub exec: Option<String>,
    /// The supervised command and its arguments (after `--`); `${SERVICE_PORT}` is replaced by the copy's port.
    #[arg(last = true, value_name = "CMD")]
    #[serde(skip)]
    pub exec_command: Vec<String>,
    /// Port of the first --exec copy (copy i listens on PORT+i-1) [default: a free loopback port per copy].
    #[arg(long, env = "GOSSAMER_EXEC_PORT")]
    #[serde(skip)]
    pub exec_port: Option<u16>,
    /// HTTP path of the --exec service that must answer 2xx before a copy is registered [default: its port accepting].
    #[arg(long, env = "GOSSAMER_EXEC_HEALTH", value_name = "PATH")]
    #[serde(skip)]
    pub exec_health: Option<String>,
    /// Copies of the --exec service, each its own instance on its own port [default: 1].
    #[arg(long, env = "GOSSAMER_SCALE")]
    #[serde(skip)]
    pub scale: Option<u32>,
    /// Supervised services of the config file: `[[supervise]]` tables (see README.md).
    #[arg(skip)]
    #[serde(default)]
    pub supervise: Vec<supervise::ServiceFile>,
    /// Reach the TCP service NAME through a local listener at LISTEN_ADDR (IP:PORT), repeatable.
    #[arg(
        long = "tcp",
        env = "GOSSAMER_TCP",
        value_delimiter = ',',
        value_name = "NAME=LISTEN_ADDR"
    )]
    #[serde(skip)]
    pub tcp: Vec<String>,
    /// TCP services of the config file: `[[tcp]]` tables with `service` and `listen`.
    #[arg(skip)]
    #[serde(default, rename = "tcp")]
    pub tcp_tables: Vec<tcp::TcpFile>,
}

/// Where the cluster's trust comes from.
#[derive(Debug, Clone)]
pub enum TrustSource {
    /// A passphrase stretched into the cluster CA.
    Passphrase(String),
    /// An operator's CA, certificate and key (PEM files).
    OperatorCa {
        /// CA certificate.
        ca: PathBuf,
        /// Node certificate chain.
        cert: PathBuf,
        /// Node key.
        key: PathBuf,
    },
}

/// The resolved configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Explicit node id, if any.
    pub node_id: Option<String>,
    /// QUIC bind address.
    pub bind: SocketAddr,
    /// Advertised address.
    pub advertise: SocketAddr,
    /// Join targets as given (HOST:PORT, resolved at join time).
    pub join: Vec<String>,
    /// Trust root.
    pub trust: TrustSource,
    /// Admin listener.
    pub admin_listen: SocketAddr,
    /// Proxy listener.
    pub proxy_listen: SocketAddr,
    /// Metrics listener; None disables the exporter.
    pub metrics_listen: Option<SocketAddr>,
    /// DNS listener; None disables the DNS front.
    pub dns_listen: Option<SocketAddr>,
    /// TTL of DNS answers.
    pub dns_ttl: Duration,
    /// Access log target (`-` is stdout); None writes none.
    pub access_log: Option<PathBuf>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// True when the data dir is a temporary one to remove at exit.
    pub ephemeral_data_dir: bool,
    /// Instances to register at start: (service, port).
    pub services: Vec<(String, u16)>,
    /// Gossip timings.
    pub profile: Profile,
    /// Zone label.
    pub zone: Option<String>,
    /// Whether estimated RTT satisfies hard requirements.
    pub allow_estimated_rtt: bool,
    /// Base ejection time of failing instances.
    pub base_ejection: Duration,
    /// Connection cap of each HTTP listener.
    pub max_connections: usize,
    /// Header-read (and idle keep-alive) timeout of the HTTP listeners.
    pub header_read_timeout: Duration,
    /// How long a node stays down before its records are reaped.
    pub reap_after: Duration,
    /// Test-only per-peer delays.
    pub link_delays: Vec<(SocketAddr, Duration)>,
    /// Test-only per-peer drops.
    pub link_drops: Vec<SocketAddr>,
    /// Local services the agent runs and supervises.
    pub supervise: Vec<supervise::ServiceSpec>,
    /// Local listeners of TCP services.
    pub tcp: Vec<tcp::TcpSpec>,
    /// Token required on admin writes, if any.
    pub admin_token: Option<AdminToken>,
    /// In-process users only (tests, benches; no flag): replaces the
    /// profile's idle close of QUIC connections.
    pub idle_close: Option<Duration>,
    /// In-process users only (no flag): replaces the profile's
    /// anti-entropy period.
    pub anti_entropy: Option<Duration>,
}

impl AgentArgs {
    /// Reads `--config` (if any) and resolves every setting.
    pub fn resolve(self) -> anyhow::Result<AgentConfig> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!(
                        "cannot read config file {}; check the --config path",
                        path.display()
                    )
                })?;
                toml::from_str::<AgentArgs>(&text).map_err(|e| {
                    anyhow::anyhow!(
                        "config file {} is not valid: {e}; keys are the agent's flag names in snake_case",
                        path.display()
                    )
                })?
            }
            None => AgentArgs::default(),
        };
        self.merge(file).into_config()
    }

    /// Fills every unset field of `self` from `file`.
    fn merge(self, file: AgentArgs) -> AgentArgs {
        fn pick_vec(a: Vec<String>, b: Vec<String>) -> Vec<String> {
            if a.is_empty() {
                b
            } else {
                a
            }
        }
        AgentArgs {
            config: self.config,
            node_id: self.node_id.or(file.node_id),
            threads: self.threads,
            bind: self.bind.or(file.bind),
            advertise: self.advertise.or(file.advertise),
            join: pick_vec(self.join, file.join),
            psk: self.psk.or(file.psk),
            psk_file: self.psk_file.or(file.psk_file),
            admin_token: self.admin_token.or(file.admin_token),
            admin_token_file: self.admin_token_file.or(file.admin_token_file),
            tls_ca: self.tls_ca.or(file.tls_ca),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            admin_listen: self.admin_listen.or(file.admin_listen),
            proxy_listen: self.proxy_listen.or(file.proxy_listen),
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            dns_listen: self.dns_listen.or(file.dns_listen),
            dns_ttl: self.dns_ttl.or(file.dns_ttl),
            access_log: self.access_log.or(file.access_log),
            data_dir: self.data_dir.or(file.data_dir),
            services: pick_vec(self.services, file.services),
            profile: self.profile.or(file.profile),
            zone: self.zone.or(file.zone),
            base_ejection_ms: self.base_ejection_ms.or(file.base_ejection_ms),
            max_connections: self.max_connections.or(file.max_connections),
            header_read_timeout_ms: self.header_read_timeout_ms.or(file.header_read_timeout_ms),
            reap_after_s: self.reap_after_s.or(file.reap_after_s),
            allow_estimated_rtt: self.allow_estimated_rtt || file.allow_estimated_rtt,
            dev: self.dev || file.dev,
            debug_link_delay: pick_vec(self.debug_link_delay, file.debug_link_delay),
            debug_link_drop: pick_vec(self.debug_link_drop, file.debug_link_drop),
            exec: self.exec,
            exec_command: self.exec_command,
            exec_port: self.exec_port,
            exec_health: self.exec_health,
            scale: self.scale,
            supervise: if self.supervise.is_empty() {
                file.supervise
            } else {
                self.supervise
            },
            tcp: self.tcp,
            tcp_tables: if self.tcp_tables.is_empty() {
                file.tcp_tables
            } else {
                self.tcp_tables
            },
        }
    }

    fn into_config(self) -> anyhow::Result<AgentConfig> {
        let dev = self.dev;
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let default_addr = |text: &str, dev_port: u16| -> SocketAddr {
            if dev {
                loopback(dev_port)
            } else {
                text.parse().unwrap_or_else(|_| loopback(dev_port))
            }
        };
        let bind = self
            .bind
            .unwrap_or_else(|| default_addr(DEFAULT_BIND, 4300));
        let advertise = self.advertise.unwrap_or(bind);
        if advertise.ip().is_unspecified() && !self.join.is_empty() {
            bail!(
                "cannot advertise the unspecified address {advertise} to peers; \
                 pass --advertise with an address peers can reach (or --bind a concrete one)"
            );
        }
        let trust = self.trust(dev)?;
        let admin_token = admin_token::resolve(&self.admin_token, &self.admin_token_file)?;
        let supervise = supervise::resolve(&self)?;
        let tcp = tcp::resolve(&self.tcp, &self.tcp_tables)?;
        let services = self
            .services
            .iter()
            .map(|s| parse_service_flag(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let link_delays = self
            .debug_link_delay
            .iter()
            .map(|s| parse_link_delay(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let link_drops = self
            .debug_link_drop
            .iter()
            .map(|s| {
                s.parse::<SocketAddr>().map_err(|_| {
                    anyhow::anyhow!("--debug-link-drop {s:?} is not an IP:PORT address")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for target in &self.join {
            validate_join_target(target)?;
        }
        let dns_listen = match self.dns_listen.as_deref() {
            Some(text) => parse_dns_listen(text)?,
            None => Some(default_addr(crate::dns::DEFAULT_LISTEN, 8600)),
        };
        let dns_ttl = match self.dns_ttl {
            Some(secs) if secs > 86_400 => {
                bail!("--dns-ttl {secs} is over a day; use seconds, for example --dns-ttl 5")
            }
            Some(secs) => Duration::from_secs(u64::from(secs)),
            None => Duration::from_secs(u64::from(crate::dns::DEFAULT_TTL_SECS)),
        };
        let (data_dir, ephemeral_data_dir) = match self.data_dir {
            Some(dir) => (dir, false),
            None if dev => (
                std::env::temp_dir().join(format!("gossamer-dev-{}", std::process::id())),
                true,
            ),
            None => (PathBuf::from(DEFAULT_DATA_DIR), false),
        };
        Ok(AgentConfig {
            node_id: self.node_id,
            bind,
            advertise,
            join: self.join,
            trust,
            admin_listen: self
                .admin_listen
                .unwrap_or_else(|| default_addr(DEFAULT_ADMIN, 4200)),
            proxy_listen: self
                .proxy_listen
                .unwrap_or_else(|| default_addr(DEFAULT_PROXY, 4201)),
            metrics_listen: Some(
                self.metrics_listen
                    .unwrap_or_else(|| default_addr(DEFAULT_METRICS, 9102)),
            ),
            dns_listen,
            dns_ttl,
            access_log: self.access_log,
            data_dir,
            ephemeral_data_dir,
            services,
            profile: self
                .profile
                .unwrap_or(if dev { Profile::Local } else { Profile::Lan }),
            zone: self.zone,
            allow_estimated_rtt: self.allow_estimated_rtt,
            base_ejection: Duration::from_millis(
                self.base_ejection_ms
                    .unwrap_or(30_000)
                    .clamp(100, 3_600_000),
            ),
            max_connections: self
                .max_connections
                .unwrap_or(crate::server::Limits::MAX_CONNECTIONS)
                .max(1),
            header_read_timeout: self
                .header_read_timeout_ms
                .map_or(crate::server::Limits::HEADER_READ_TIMEOUT, |ms| {
                    Duration::from_millis(ms.clamp(100, 3_600_000))
                }),
            reap_after: self
                .reap_after_s
                .map_or(crate::reap::DEFAULT_REAP_AFTER, |s| {
                    Duration::from_secs(s.max(1))
                }),
            link_delays,
            link_drops,
            supervise,
            tcp,
            admin_token,
            idle_close: None,
            anti_entropy: None,
        })
    }

    fn trust(&self, dev: bool) -> anyhow::Result<TrustSource> {
        if let (Some(ca), Some(cert), Some(key)) = (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            return Ok(TrustSource::OperatorCa {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        let psk = match (&self.psk, &self.psk_file) {
            (Some(_), Some(_)) => bail!("pass either --psk or --psk-file, not both"),
            (Some(psk), None) => psk.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| {
                    format!(
                        "cannot read --psk-file {}; check the path and its permissions",
                        path.display()
                    )
                })?
                .trim()
                .to_owned(),
            (None, None) if dev => "gossamer-dev-only-passphrase".to_owned(),
            (None, None) => bail!(
                "no cluster passphrase: pass --psk-file FILE (or --psk, or GOSSAMER_PSK), \
                 or --tls-ca/--tls-cert/--tls-key, or --dev for a single local node"
            ),
        };
        if psk.len() < 8 {
            bail!(
                "the cluster passphrase is {} characters; use at least 8",
                psk.len()
            );
        }
        Ok(TrustSource::Passphrase(psk))
    }
}

/// Parses `NAME=PORT` of `--service`.
pub fn parse_service_flag(text: &str) -> anyhow::Result<(String, u16)> {
    let (name, port) = text
        .split_once('=')
        .with_context(|| format!("--service {text:?} must be NAME=PORT, for example echo=8080"))?;
    validate_service_name(name).map_err(|e| anyhow::anyhow!("--service {text:?}: {e}"))?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0).with_context(|| {
        format!("--service {text:?}: port {port:?} is not a number from 1 to 65535")
    })?;
    Ok((name.to_owned(), port))
}

/// Parses `--dns-listen`: an IP:PORT, or `off` (None).
pub fn parse_dns_listen(text: &str) -> anyhow::Result<Option<SocketAddr>> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.trim().parse().map(Some).map_err(|_| {
        anyhow::anyhow!(
            "--dns-listen {text:?} is not IP:PORT or off; for example --dns-listen 127.0.0.1:8600"
        )
    })
}

/// Parses `ADDR=MS` of `--debug-link-delay`.
pub fn parse_link_delay(text: &str) -> anyhow::Result<(SocketAddr, Duration)> {
    let parsed = text
        .split_once('=')
        .and_then(|(addr, ms)| Some((addr.parse::<SocketAddr>().ok()?, ms.parse::<u64>().ok()?)));
    match parsed {
        Some((addr, ms)) if ms <= 10_000 => Ok((addr, Duration::from_millis(ms))),
        _ => bail!("--debug-link-delay {text:?} must be IP:PORT=MS with MS at most 10000, for example 127.0.0.1:4301=40"),
    }
}

fn validate_join_target(target: &str) -> anyhow::Result<()> {
    let ok = match target.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    };
    if !ok {
        bail!("--join {target:?} is not HOST:PORT; for example --join 10.0.0.5:4300 or --join seed.example:4300");
    }
    Ok(())
}

/// True for addresses peers on other machines cannot reach.
pub fn is_local_only(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified()
}

#[cfg(test)]
mod tests;
