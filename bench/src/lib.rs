//! Gossamer's benchmarks and cluster simulator.
//!
//! Each scenario is a module with an `Args` struct (its command-line
//! options) and a `run` function that prints a table, writes JSON to
//! `bench/results/` and returns what it measured, so the smoke tests can
//! run every scenario briefly and check the output.
#![forbid(unsafe_code)]

pub mod agent_proc;
pub mod balance;
pub mod dns;
pub mod fuzz;
pub mod gossip;
pub mod grpc;
pub mod load;
pub mod proxy;
pub mod report;
pub mod select;
pub mod sim;
