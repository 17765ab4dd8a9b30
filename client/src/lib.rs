//! Gossamer's SDK.
//!
//! - [`select`]: the pure upstream selection shared with the sidecar's proxy
//!   (RTT requirements, power of two choices over peak-EWMA, ejection, retry budget).
#![forbid(unsafe_code)]

pub mod select;
