//! The Gossamer sidecar: the agent that runs beside each service instance,
//! and the operator CLI of the `gossamer` binary.
//!
//! The modules form layers; each imports only the layers below it (no
//! import cycles), and [`agent`] is the only module that imports them all:
//!
//! ```text
//! 6 agent      agent (composition root: builds handles, one task tracker,
//!              ordered stop), demo, up (a folder of services under one
//!              in-process agent), cli (+ cli::{args, table, supervise})
//! 5 fronts     proxy (route → eligible → pick → send → observe; decide:
//!              the decision record; answers: its own 502/503; grpc: gRPC
//!              statuses; trace, access_log, idle_body; inbound; upgrade:
//!              WebSocket splice; tcp: --tcp listeners and tunnels),
//!              admin (+ admin::supervise), ui (+ ui::{html, sse}: /ui and
//!              /v1/events), views, streams (inbound QUIC
//!              streams by kind), echo (the demo's service)
//!   handles    AdminHandles: the narrow set of services the admin API uses
//! 4 services   catalog (owns the catalog core, publishes Arc snapshots),
//!              membership (foca task), registry (this node's writes),
//!              upstreams (candidates + balancers over the snapshot),
//!              health (passive health of local instances), rtt (sampling),
//!              sync (anti-entropy, snapshot persistence), join,
//!              member_sync (periodic member pulls), supervise,
//!              decisions (the proxy's recent routing decisions, a ring)
//! 3 I/O        transport (+ guard), tls, persist, server, link_shim (test
//!              only), metrics, reply, listeners
//! 2 config     config (+ config::{supervise, tcp}): flags, env, file,
//!              profile tables
//! 1 cores      core::catalog (merge, ownership, per-service index),
//!              core::membership (foca, ordered timers, watchdog, resize,
//!              the certified source of each packet),
//!              core::anti_entropy, core::rtt, core::health,
//!              core::candidates; no tokio, no clock reads
//! ```
//!
//! Readers on the request path (proxy, admin reads, views) take no lock a
//! writer holds across I/O: they read the catalog's latest `Arc` snapshot.
#![forbid(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod core;
pub mod decisions;
pub mod demo;
pub mod dns;
pub mod echo;
pub mod handles;
pub mod health;
pub mod join;
pub mod link_shim;
pub mod listeners;
pub mod member_sync;
pub mod membership;
pub mod metrics;
pub mod persist;
pub mod proxy;
pub mod reap;
pub mod registry;
pub mod reply;
pub mod rtt;
pub mod server;
pub mod streams;
pub mod supervise;
pub mod sync;
#[cfg(test)]
mod test_support;
pub mod tls;
pub mod transport;
pub mod ui;
pub mod up;
pub mod upstreams;
pub mod views;
