//! Vivaldi network coordinates, as Serf computes them.
//!
//! (Placeholder for the type only; the update rule lands with the RTT work.)

use serde::{Deserialize, Serialize};

/// Number of Euclidean dimensions, as in Serf.
pub const DIMENSIONS: usize = 8;

/// A node's position in the latency space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coordinate {
    /// Euclidean part, in seconds.
    pub vec: [f64; DIMENSIONS],
    /// Confidence: lower is better.
    pub error: f64,
    /// Adjustment term, in seconds.
    pub adjustment: f64,
    /// Height (access-link latency), in seconds.
    pub height: f64,
}
