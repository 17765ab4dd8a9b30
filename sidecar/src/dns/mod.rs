//! The DNS front: `NAME.service.gossamer`, `TAG.NAME.service.gossamer`,
//! `NODE.node.gossamer` and `INSTANCE.NODE.node.gossamer`, answered over UDP
//! and TCP, for clients that can use neither the proxy nor the SDK.
//!
//! - [`answer`](mod@answer) is the pure core: a question and a [`DnsSource`] in, records
//!   and a response code out. No sockets, no clock.
//! - [`server`] is the I/O loop (hickory-server) and the query metric.
//! - [`tcp`] serves DNS over TCP with a cap on open connections.
//! - [`source`] adapts today's agent to [`DnsSource`]; it is the only file of
//!   this module that knows the agent, so the catalog can change under it.

use std::net::SocketAddr;

pub mod answer;
pub mod server;
pub mod source;
pub mod tcp;

#[cfg(test)]
mod tests;

pub use answer::{answer, Answer, Question};
pub use server::{serve, DnsSockets};

/// The zone this front is authoritative for.
pub const ZONE: &str = "gossamer";

/// Default `--dns-listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8600";

/// Default `--dns-ttl`, in seconds.
pub const DEFAULT_TTL_SECS: u32 = 5;

/// One address DNS may hand out for a name.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsTarget {
    /// Instance id (the first label of its SRV target).
    pub instance: String,
    /// Node the instance runs on.
    pub node: String,
    /// Where the instance listens.
    pub addr: SocketAddr,
    /// RTT from this node to the instance's node, in ms, when known; nearest first.
    pub rtt_ms: Option<f64>,
}

/// What the DNS front needs to know, and nothing more.
///
/// `None` means the name is unknown (NXDOMAIN); `Some(empty)` means it is
/// known but nothing is eligible now (an empty NOERROR answer), so resolvers
/// cache the difference correctly.
pub trait DnsSource: Send + Sync + 'static {
    /// Passing instances of `service` (with `tag`, when given) that meet the
    /// service's requirements, in any order.
    fn service_answers(&self, service: &str, tag: Option<&str>) -> Option<Vec<DnsTarget>>;
    /// The address of a live node.
    fn node_addr(&self, node: &str) -> Option<std::net::IpAddr>;
    /// One live instance by id on `node`, whatever its eligibility: the
    /// caller named it, typically from an SRV target.
    fn instance(&self, instance: &str, node: &str) -> Option<DnsTarget>;
}
