//! Vivaldi network coordinates, as Serf computes them.
//!
//! Each node keeps a point in an 8-dimensional Euclidean space plus a height
//! (its access link) and an adjustment (a correction learned from recent
//! samples). The estimated RTT between two nodes is the distance between their
//! coordinates, so a node can rank peers it has never measured. The update
//! rule, constants and safeguards follow hashicorp/serf's `coordinate`
//! package (Vivaldi with Ledlie's latency filter and gravity, and Lee's
//! adjustment term); the one departure is that coincident coordinates are
//! pushed apart along a direction derived from a hash and a counter instead
//! of a random number generator, so runs are reproducible.
//!
//! Pure: no clocks, no I/O. The caller passes the RTT sample in.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Number of Euclidean dimensions, as in Serf.
pub const DIMENSIONS: usize = 8;

/// Largest RTT sample accepted, as in Serf: anything longer is a stalled peer
/// or a clock glitch, not a path latency.
pub const MAX_RTT: Duration = Duration::from_secs(10);

/// Below this (seconds) two points count as the same place, as in Serf.
const ZERO_THRESHOLD: f64 = 1.0e-6;

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

// === impl Coordinate ===

impl Coordinate {
    /// A coordinate at the origin with Serf's default starting error and
    /// minimum height: where every node starts before its first sample.
    pub fn origin() -> Self {
        VivaldiConfig::default().origin()
    }

    /// True when every component is finite. Coordinates arrive from the
    /// network, so a NaN or an infinity must be refused before it poisons
    /// our own coordinate through an update.
    pub fn is_valid(&self) -> bool {
        self.vec.iter().all(|c| c.is_finite())
            && self.error.is_finite()
            && self.adjustment.is_finite()
            && self.height.is_finite()
    }

    /// Estimated RTT to `other`: `|Va − Vb| + Ha + Hb`, plus both adjustments
    /// when their sum keeps the estimate positive (Serf's rule).
    ///
    /// Never panics: an estimate that is not a number (an invalid coordinate)
    /// or too large for a `Duration` comes out as `Duration::MAX`, one below
    /// zero (negative heights, which only a hand-made coordinate can have) as
    /// zero. Check [`Coordinate::is_valid`] before trusting the result.
    pub fn distance_to(&self, other: &Coordinate) -> Duration {
        secs_to_duration(self.distance_secs(other))
    }

    /// Distance in seconds, adjustments included when they keep it positive.
    fn distance_secs(&self, other: &Coordinate) -> f64 {
        let raw = self.raw_distance_secs(other);
        let adjusted = raw + self.adjustment + other.adjustment;
        if adjusted > 0.0 {
            adjusted
        } else {
            raw
        }
    }

    /// Distance in seconds without adjustments: the Vivaldi part alone.
    fn raw_distance_secs(&self, other: &Coordinate) -> f64 {
        magnitude(&diff(&self.vec, &other.vec)) + self.height + other.height
    }

    /// Moves this coordinate by `force` seconds away from `other` (towards
    /// it when negative), and grows or shrinks the height in proportion.
    fn apply_force(
        &mut self,
        height_min: f64,
        force: f64,
        other: &Coordinate,
        fallback: &mut Directions,
    ) {
        let (unit, mag) = unit_vector_at(&self.vec, &other.vec, fallback);
        for (v, u) in self.vec.iter_mut().zip(unit) {
            *v += u * force;
        }
        // Only a real separation says how much of the error lies in the
        // heights; for coincident points Serf leaves the height alone.
        if mag > ZERO_THRESHOLD {
            self.height =
                ((self.height + other.height) * force / mag + self.height).max(height_min);
        }
    }
}

/// Converts seconds to a `Duration` without the panics of `from_secs_f64`.
fn secs_to_duration(secs: f64) -> Duration {
    if secs.is_nan() {
        return Duration::MAX;
    }
    Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
}

fn diff(a: &[f64; DIMENSIONS], b: &[f64; DIMENSIONS]) -> [f64; DIMENSIONS] {
    std::array::from_fn(|i| a[i] - b[i])
}

fn magnitude(v: &[f64; DIMENSIONS]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The unit vector pointing from `to` at `from` (the way `from` moves when
/// repelled by `to`), and the distance between them. Coincident points get
/// a direction from `fallback`, and distance zero.
fn unit_vector_at(
    from: &[f64; DIMENSIONS],
    to: &[f64; DIMENSIONS],
    fallback: &mut Directions,
) -> ([f64; DIMENSIONS], f64) {
    let d = diff(from, to);
    let mag = magnitude(&d);
    if mag > ZERO_THRESHOLD {
        return (d.map(|x| x / mag), mag);
    }
    let r: [f64; DIMENSIONS] = std::array::from_fn(|_| fallback.next_component());
    let mag_r = magnitude(&r);
    if mag_r > ZERO_THRESHOLD {
        return (r.map(|x| x / mag_r), 0.0);
    }
    // Eight draws all within 1e-6 of the centre do not happen with a sound
    // mixer, but Serf keeps this last resort and so do we.
    let mut first_axis = [0.0; DIMENSIONS];
    first_axis[0] = 1.0;
    (first_axis, 0.0)
}

/// A deterministic stream of vector components in [-0.5, 0.5): splitmix64
/// seeded from the peer's name and the client's draw counter, standing in for
/// Serf's `rand.Float64()` so that two nodes starting at the origin still
/// separate, and a simulation replays identically.
struct Directions {
    state: u64,
}

impl Directions {
    fn new(peer: &str, draw: u64) -> Self {
        // FNV-1a: different peers give unrelated seeds, and the counter makes
        // repeated draws for the same peer differ.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in peer.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self {
            state: h ^ draw.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        }
    }

    fn next_component(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // The top 53 bits make a uniform f64 in [0, 1); both casts are exact.
        ((z >> 11) as f64) / ((1u64 << 53) as f64) - 0.5
    }
}

/// Tuning of the Vivaldi update. The defaults are Serf's; the number of
/// dimensions is fixed at [`DIMENSIONS`] by the wire type.
#[derive(Debug, Clone, PartialEq)]
pub struct VivaldiConfig {
    /// Starting error of a new coordinate, and the ceiling of the error.
    pub error_max: f64,
    /// CE: the most one sample can move the error estimate.
    pub ce: f64,
    /// CC: the most one sample can move the coordinate.
    pub cc: f64,
    /// Samples averaged into the adjustment term; 0 disables it.
    pub adjustment_window: usize,
    /// Smallest height, in seconds; heights must stay positive.
    pub height_min: f64,
    /// RTT samples kept per peer; the median of them feeds the update.
    pub latency_filter_size: usize,
    /// Gravity rho: how weakly coordinates are pulled back to the origin to
    /// stop the whole system drifting. Serf's 150, in the same unit as the
    /// coordinates (seconds): the pull is `(distance from origin / rho)²`.
    pub gravity_rho: f64,
}

impl Default for VivaldiConfig {
    fn default() -> Self {
        Self {
            error_max: 1.5,
            ce: 0.25,
            cc: 0.25,
            adjustment_window: 20,
            height_min: 10.0e-6,
            latency_filter_size: 3,
            gravity_rho: 150.0,
        }
    }
}

impl VivaldiConfig {
    /// The starting coordinate under this configuration.
    pub fn origin(&self) -> Coordinate {
        Coordinate {
            vec: [0.0; DIMENSIONS],
            error: self.error_max,
            adjustment: 0.0,
            height: self.height_min,
        }
    }
}

/// Why a sample was refused. The client's coordinate is unchanged.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CoordinateError {
    /// The RTT sample is zero or longer than [`MAX_RTT`].
    #[error(
        "RTT sample of {rtt:?} from peer {peer:?} is outside (0, 10 s]; \
         drop it: it comes from a coarse clock or a stalled peer"
    )]
    InvalidRtt {
        /// The peer the sample was for.
        peer: String,
        /// The refused sample.
        rtt: Duration,
    },
    /// The peer's coordinate cannot be used.
    #[error(
        "coordinate from peer {peer:?} is unusable ({reason}); \
         ignore it until the peer sends a sound one"
    )]
    InvalidCoordinate {
        /// The peer that sent it.
        peer: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// One node's Vivaldi client: its coordinate and the state that feeds it.
#[derive(Debug, Clone)]
pub struct Vivaldi {
    /// Tuning parameters.
    config: VivaldiConfig,
    /// Our current coordinate.
    coord: Coordinate,
    /// The origin under `config`, the anchor of gravity.
    origin: Coordinate,
    /// Ring buffer of `rtt − raw distance` for the adjustment term.
    adjustment_samples: Vec<f64>,
    /// Next slot of `adjustment_samples` to overwrite.
    adjustment_index: usize,
    /// Last RTT samples (seconds) per peer, oldest first.
    latency_samples: HashMap<String, VecDeque<f64>>,
    /// Draws made for coincident points; varies the fallback direction.
    draws: u64,
    /// How many times the coordinate went non-finite and was reset.
    resets: u64,
}

// === impl Vivaldi ===

impl Vivaldi {
    /// A client at the origin.
    pub fn new(config: VivaldiConfig) -> Self {
        let origin = config.origin();
        Self {
            coord: origin.clone(),
            origin,
            adjustment_samples: vec![0.0; config.adjustment_window],
            adjustment_index: 0,
            latency_samples: HashMap::new(),
            draws: 0,
            resets: 0,
            config,
        }
    }

    /// Our current coordinate.
    pub fn coordinate(&self) -> &Coordinate {
        &self.coord
    }

    /// The configuration in use.
    pub fn config(&self) -> &VivaldiConfig {
        &self.config
    }

    /// How many times an update produced a non-finite coordinate and the
    /// client started again from the origin (Serf's `Resets` statistic).
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Estimated RTT from us to a node at `other`.
    pub fn distance_to(&self, other: &Coordinate) -> Duration {
        self.coord.distance_to(other)
    }

    /// Replaces our coordinate, for example with one persisted before a restart.
    pub fn set_coordinate(&mut self, coord: Coordinate) -> Result<(), CoordinateError> {
        if !coord.is_valid() {
            return Err(CoordinateError::InvalidCoordinate {
                peer: String::from("(self)"),
                reason: "a component is NaN or infinite",
            });
        }
        self.coord = coord;
        Ok(())
    }

    /// Folds in one RTT sample to `peer`, whose coordinate is `peer_coord`,
    /// and returns our updated coordinate.
    ///
    /// The sample first passes the peer's latency filter (median of the last
    /// few), then moves our coordinate by the Vivaldi spring rule, updates
    /// the adjustment term and applies gravity. Invalid input leaves every
    /// piece of state untouched.
    pub fn update(
        &mut self,
        peer: &str,
        peer_coord: &Coordinate,
        rtt: Duration,
    ) -> Result<&Coordinate, CoordinateError> {
        check_peer_coordinate(peer, peer_coord)?;
        if rtt.is_zero() || rtt > MAX_RTT {
            return Err(CoordinateError::InvalidRtt {
                peer: peer.to_owned(),
                rtt,
            });
        }
        let rtt_secs = self.latency_filter(peer, rtt.as_secs_f64());
        self.update_vivaldi(peer, peer_coord, rtt_secs);
        self.update_adjustment(peer_coord, rtt_secs);
        self.update_gravity(peer);
        if !self.coord.is_valid() {
            // A huge (but finite) peer coordinate can overflow the arithmetic;
            // starting over beats carrying a NaN forever.
            self.resets += 1;
            self.coord = self.origin.clone();
        }
        Ok(&self.coord)
    }

    /// Drops the latency samples of a peer that left, so they neither leak
    /// nor colour the first samples if it comes back.
    pub fn forget(&mut self, peer: &str) {
        self.latency_samples.remove(peer);
    }

    /// Adds a sample to the peer's window and returns the window's median.
    fn latency_filter(&mut self, peer: &str, rtt_secs: f64) -> f64 {
        // A zero-sized filter would have no median; treat it as "no filtering".
        let size = self.config.latency_filter_size.max(1);
        let samples = self.latency_samples.entry(peer.to_owned()).or_default();
        samples.push_back(rtt_secs);
        while samples.len() > size {
            samples.pop_front();
        }
        let mut sorted: Vec<f64> = samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(rtt_secs)
    }

    /// The spring step: move towards or away from the peer in proportion to
    /// how wrong our estimate was, weighted by our error against theirs.
    fn update_vivaldi(&mut self, peer: &str, other: &Coordinate, rtt_secs: f64) {
        let rtt_secs = rtt_secs.max(ZERO_THRESHOLD);
        let dist = self.coord.distance_secs(other);
        let wrongness = (dist - rtt_secs).abs() / rtt_secs;

        let total_error = (self.coord.error + other.error).max(ZERO_THRESHOLD);
        let weight = self.coord.error / total_error;

        let ce = self.config.ce;
        self.coord.error = (ce * weight * wrongness + self.coord.error * (1.0 - ce * weight))
            .min(self.config.error_max);

        let force = self.config.cc * weight * (rtt_secs - dist);
        let mut directions = self.directions(peer);
        self.coord
            .apply_force(self.config.height_min, force, other, &mut directions);
    }

    /// Lee's adjustment: half the mean of recent `rtt − raw distance`, which
    /// absorbs what the Euclidean embedding cannot represent.
    fn update_adjustment(&mut self, other: &Coordinate, rtt_secs: f64) {
        let window = self.adjustment_samples.len();
        if window == 0 {
            return;
        }
        // The existing adjustments must not feed back into themselves.
        let dist = self.coord.raw_distance_secs(other);
        self.adjustment_samples[self.adjustment_index] = rtt_secs - dist;
        self.adjustment_index = (self.adjustment_index + 1) % window;
        let sum: f64 = self.adjustment_samples.iter().sum();
        self.coord.adjustment = sum / (2.0 * window as f64);
    }

    /// Ledlie's gravity: a pull towards the origin, growing with the square
    /// of the distance, so the whole system does not drift away.
    fn update_gravity(&mut self, peer: &str) {
        let dist = self.origin.distance_secs(&self.coord);
        let force = -(dist / self.config.gravity_rho).powi(2);
        let origin = self.origin.clone();
        let mut directions = self.directions(peer);
        self.coord
            .apply_force(self.config.height_min, force, &origin, &mut directions);
    }

    /// A fresh fallback-direction stream; each call gets a new counter value.
    fn directions(&mut self, peer: &str) -> Directions {
        self.draws = self.draws.wrapping_add(1);
        Directions::new(peer, self.draws)
    }
}

/// Refuses peer coordinates that no Vivaldi client can produce.
fn check_peer_coordinate(peer: &str, coord: &Coordinate) -> Result<(), CoordinateError> {
    let reason = if !coord.is_valid() {
        "a component is NaN or infinite"
    } else if coord.error < 0.0 {
        // A negative error would make the weight exceed 1 and the step explode.
        "negative error"
    } else if coord.height < 0.0 {
        "negative height"
    } else {
        return Ok(());
    };
    Err(CoordinateError::InvalidCoordinate {
        peer: peer.to_owned(),
        reason,
    })
}

#[cfg(test)]
#[path = "coordinate_tests.rs"]
mod tests;
