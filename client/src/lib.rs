//! Gossamer's SDK.
//!
//! - [`Client`]: a typed client of the local agent's admin API (services,
//!   definitions, instances with their RTT, registration).
//! - [`select`]: the pure upstream selection shared with the sidecar's proxy
//!   (RTT requirements, power of two choices over peak-EWMA, ejection, retry budget).
#![forbid(unsafe_code)]

pub mod admin;
pub mod select;

pub use admin::{Client, Error, Indexed};
