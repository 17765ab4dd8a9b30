//! Where the agent's listeners ended up (written to `listeners.json` in the
//! data dir once ready, for tools and tests that asked for port 0).

use std::net::SocketAddr;

/// The bound address of every listener.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Listeners {
    /// QUIC endpoint.
    pub quic: SocketAddr,
    /// Admin API.
    pub admin: SocketAddr,
    /// Proxy.
    pub proxy: SocketAddr,
    /// Metrics, when enabled.
    pub metrics: Option<SocketAddr>,
    /// DNS (UDP and TCP), when enabled.
    #[serde(default)]
    pub dns: Option<SocketAddr>,
}
