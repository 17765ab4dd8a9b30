//! The `gossamer` command line: every command and flag (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::AgentArgs;

/// Gossamer: a service mesh sidecar.
#[derive(Debug, Parser)]
#[command(name = "gossamer", version, about, propagate_version = true)]
pub struct Cli {
    /// Admin API of the agent to talk to.
    #[arg(
        long,
        global = true,
        env = "GOSSAMER_AGENT",
        default_value = "http://127.0.0.1:4200"
    )]
    pub agent: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log lines on stderr: `text` (colour only when stderr is a terminal)
    /// or `json` (one object per line, for journald or a log shipper).
    #[arg(
        long,
        global = true,
        env = "GOSSAMER_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a sidecar agent.
    Agent(Box<AgentArgs>),
    /// List cluster members with state and RTT.
    Members,
    /// Service definitions.
    Services {
        /// list, get, put or delete.
        #[command(subcommand)]
        action: ServicesAction,
    },
    /// Instances of a service, eligible first, under optional requirements.
    Instances {
        /// Service name.
        name: String,
        /// Hard RTT requirement in ms.
        #[arg(long)]
        hard_rtt: Option<u32>,
        /// Soft RTT requirement in ms.
        #[arg(long)]
        soft_rtt: Option<u32>,
    },
    /// Register an instance of NAME on the agent's node.
    Register {
        /// Service name.
        name: String,
        /// Port on 127.0.0.1 the instance listens on.
        #[arg(long)]
        port: u16,
        /// Instance id (generated when absent).
        #[arg(long)]
        id: Option<String>,
        /// Deployment id.
        #[arg(long)]
        deployment: Option<String>,
        /// Tag, repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Deregister an instance of the agent's node.
    Deregister {
        /// Instance id.
        id: String,
    },
    /// Call a service through the local proxy and print the answer.
    Call {
        /// Service name.
        name: String,
        /// Path, for example /health.
        #[arg(default_value = "/")]
        path: String,
        /// The proxy to send through; by default the one of the agent named
        /// by `--agent` (its admin API says where its proxy listens).
        #[arg(long, env = "GOSSAMER_PROXY")]
        proxy: Option<std::net::SocketAddr>,
        /// Hard RTT requirement in ms.
        #[arg(long)]
        hard_rtt: Option<u32>,
        /// Soft RTT requirement in ms.
        #[arg(long)]
        soft_rtt: Option<u32>,
        /// Speak HTTP/2 to the proxy (h2c, prior knowledge) instead of HTTP/1.1.
        #[arg(long)]
        http2: bool,
    },
    /// Run a small HTTP echo service (demos and tests).
    Echo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Name reported in answers.
        #[arg(long, default_value = "echo")]
        name: String,
        /// Port to listen on instead of --listen's (a supervising agent sets SERVICE_PORT).
        #[arg(long, env = "SERVICE_PORT")]
        port: Option<u16>,
    },
    /// Start a three-node mesh in this process and show routing by RTT.
    Demo {
        /// Stay up until Ctrl-C.
        #[arg(long)]
        keep: bool,
        /// Calls to send through the proxy.
        #[arg(long, default_value_t = 200)]
        calls: u32,
    },
    /// Processes this agent supervises: pid, port, restarts, uptime, health.
    Ps,
    /// Logs of a supervised service, merged across copies, each line prefixed with its instance.
    Logs {
        /// Service name.
        name: String,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long, value_name = "N")]
        tail: Option<usize>,
    },
    /// Restart a supervised service one copy at a time, each out of rotation before it stops.
    Restart {
        /// Service name.
        name: String,
    },
    /// Start a stopped supervised service again (as many copies as before `stop`).
    Start {
        /// Service name.
        name: String,
    },
    /// Stop a supervised service: each copy out of rotation and drained before its process stops.
    Stop {
        /// Service name.
        name: String,
    },
    /// Run N copies of a supervised service; scaling down stops the newest copies first, each drained.
    Scale {
        /// Service name.
        name: String,
        /// Copies wanted (0 stops the service).
        copies: u32,
    },
    /// Run every service of a folder (DIR/*/service.toml) under one agent, until Ctrl-C.
    Up(Box<crate::up::UpArgs>),
    /// Stop the `gossamer up` running in a folder.
    Down {
        /// The folder `gossamer up` runs in.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Nodes with their CPU and memory, free and reserved.
    Nodes {
        /// Only the nodes with room for one copy of NAME (its definition's cpu_millis and memory_mb).
        #[arg(long, value_name = "NAME")]
        fits: Option<String>,
    },
}

/// `gossamer services` actions.
#[derive(Debug, Subcommand)]
pub enum ServicesAction {
    /// List services.
    List,
    /// Show one definition.
    Get {
        /// Service name.
        name: String,
    },
    /// Write a definition from a JSON file ("-" for stdin).
    Put {
        /// JSON file with the definition.
        file: PathBuf,
    },
    /// Delete a definition.
    Delete {
        /// Service name.
        name: String,
    },
}
