//! The Gossamer sidecar: the agent that runs beside each service instance,
//! and the operator CLI of the `gossamer` binary.
//!
//! [`agent::start`] is the map of a running agent: every long-lived task is
//! started there.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dns;
pub mod echo;
pub mod health;
pub mod join;
pub mod link_shim;
pub mod membership;
pub mod metrics;
pub mod persist;
pub mod proxy;
pub mod registry;
pub mod reply;
pub mod rtt;
pub mod server;
pub mod streams;
pub mod supervise;
pub mod sync;
pub mod tls;
pub mod transport;
pub mod upstreams;
pub mod views;
