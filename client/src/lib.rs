//! Gossamer's SDK, for services that look instances up themselves instead of
//! calling through the sidecar's proxy.
//!
//! - [`Client`]: a typed client of the local agent's admin API: services,
//!   definitions, instances with their address, node, health and RTT (with
//!   the RTT's source), registration, and [`Client::watch`], a [`Watch`]
//!   stream of a service's instances built on blocking queries that keeps
//!   going across agent restarts.
//! - [`Balancer`]: client-side balancing over one service: it picks an
//!   address with the same selection code as the sidecar's proxy and learns
//!   from the outcomes the caller reports.
//! - [`select`]: that pure selection code (RTT requirements, power of two
//!   choices over peak-EWMA, ejection, retry budget), which reads no clock
//!   and touches no socket.
//!
//! Every fallible call returns [`Error`], whose message says what failed and
//! what to do. The types of the admin API's answers are re-exported here, so
//! a caller needs no other Gossamer crate.
//!
//! ```no_run
//! # async fn run() -> Result<(), client::Error> {
//! use client::{Client, Requirements};
//!
//! let agent = Client::new("http://127.0.0.1:4200")?;
//! let near = Requirements { hard_rtt_ms: Some(30), soft_rtt_ms: Some(10) };
//! for i in agent.instances("billing", &near).await?.eligible {
//!     println!("{} on {} at {:?} ms", i.instance.address, i.instance.node, i.rtt_ms);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Runnable examples, each against a live agent: `cargo run -p client
//! --example lookup`, `--example watch`, `--example call_with_balancer`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod balance;
mod error;
pub mod select;
pub mod watch;

pub use admin::{Client, Indexed};
pub use balance::{Balancer, BalancerOptions, Picked};
pub use error::Error;
pub use mesh_proto::api::{
    HealthView, Ineligible, InstanceView, InstancesView, NodeView, RegisterInstance, RttSource,
    ServiceSummary,
};
pub use mesh_proto::catalog::{Definition, Health, Instance};
pub use select::{Outcome, Requirements};
pub use watch::{Watch, WatchOptions};
