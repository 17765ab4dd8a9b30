//! The RTT table: smoothed RTT to every peer measured on a connection, and
//! this node's Vivaldi coordinate, moved by every sample that carries a
//! peer's coordinate, for estimates to peers never measured. Coordinates are
//! learnt where samples arrive (pongs) and read from the catalog snapshot
//! where the peer published one; nothing here waits for a view to ask.

use std::collections::HashMap;
use std::time::Duration;

use mesh_proto::api::RttSource;
use mesh_proto::coordinate::{Coordinate, CoordinateError, Vivaldi, VivaldiConfig};
use mesh_proto::NodeId;

/// Weight of a new sample in the smoothed RTT.
const EWMA_ALPHA: f64 = 0.3;

/// Republish our coordinate in node metadata when it moved this much.
/// Peers we ping get our live coordinate on every pong; the broadcast only
/// serves peers that never measured us, which an estimate a few ms and a
/// few tens of seconds old serves well. Every republish is a catalog record
/// gossiped to every node: on a loaded machine RTT jitter moved coordinates
/// by 2 ms constantly, which was most of the gossip at rest (bench/).
pub const COORDINATE_REPUBLISH: Duration = Duration::from_millis(5);

/// RTT by peer, measured or estimated.
pub struct RttCore {
    local: NodeId,
    measured: HashMap<NodeId, f64>,
    coordinates: HashMap<NodeId, Coordinate>,
    vivaldi: Vivaldi,
    published: Coordinate,
}

impl RttCore {
    /// An empty table for `local`.
    pub fn new(local: NodeId) -> Self {
        let vivaldi = Vivaldi::new(VivaldiConfig::default());
        let published = vivaldi.coordinate().clone();
        Self {
            local,
            measured: HashMap::new(),
            coordinates: HashMap::new(),
            vivaldi,
            published,
        }
    }

    /// RTT to `node` in ms and where it came from; this node is 0 ms,
    /// measured. `published` is the coordinate the node published in the
    /// catalog, used when no pong carried a fresher one.
    pub fn get(&self, node: &NodeId, published: Option<&Coordinate>) -> (Option<f64>, RttSource) {
        if *node == self.local {
            return (Some(0.0), RttSource::Measured);
        }
        if let Some(ms) = self.measured.get(node) {
            return (Some(*ms), RttSource::Measured);
        }
        let published = published.filter(|c| c.is_valid());
        match self.coordinates.get(node).or(published) {
            Some(theirs) => {
                let estimate = self.vivaldi.coordinate().distance_to(theirs);
                (Some(estimate.as_secs_f64() * 1000.0), RttSource::Estimated)
            }
            None => (None, RttSource::Unknown),
        }
    }

    /// Folds in one RTT sample to `node`; returns the smoothed RTT in ms.
    pub fn observe(&mut self, node: &NodeId, rtt: Duration) -> f64 {
        let ms = rtt.as_secs_f64() * 1000.0;
        let smoothed = self.measured.entry(node.clone()).or_insert(ms);
        *smoothed += EWMA_ALPHA * (ms - *smoothed);
        *smoothed
    }

    /// Moves our coordinate by one sample against a peer's coordinate.
    pub fn observe_coordinate(
        &mut self,
        node: &NodeId,
        coordinate: &Coordinate,
        rtt: Duration,
    ) -> Result<(), CoordinateError> {
        self.coordinates.insert(node.clone(), coordinate.clone());
        self.vivaldi
            .update(node.as_str(), coordinate, rtt)
            .map(|_| ())
    }

    /// Drops what we know of a departed peer.
    pub fn forget(&mut self, node: &NodeId) {
        self.measured.remove(node);
        self.coordinates.remove(node);
        self.vivaldi.forget(node.as_str());
    }

    /// This node's coordinate.
    pub fn coordinate(&self) -> &Coordinate {
        self.vivaldi.coordinate()
    }

    /// True (once) when our coordinate moved enough to republish it.
    pub fn coordinate_moved(&mut self) -> bool {
        let current = self.vivaldi.coordinate().clone();
        // The move itself: `distance_to` adds both heights, so even a
        // coordinate that never moved is "far" from itself once its height
        // grows, and would be republished on every check.
        let moved = current
            .vec
            .iter()
            .zip(&self.published.vec)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt()
            + (current.height - self.published.height).abs();
        if Duration::from_secs_f64(moved.max(0.0)) > COORDINATE_REPUBLISH {
            self.published = current;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::new(name).expect("valid node id")
    }

    #[test]
    fn this_node_is_zero_and_a_stranger_is_unknown() {
        let table = RttCore::new(node("a"));
        assert_eq!(
            table.get(&node("a"), None),
            (Some(0.0), RttSource::Measured)
        );
        assert_eq!(table.get(&node("b"), None), (None, RttSource::Unknown));
    }

    #[test]
    fn samples_are_smoothed_towards_the_latest() {
        let mut table = RttCore::new(node("a"));
        assert_eq!(table.observe(&node("b"), Duration::from_millis(10)), 10.0);
        let after = table.observe(&node("b"), Duration::from_millis(20));
        assert!(
            (after - 13.0).abs() < 1e-9,
            "EWMA 0.3 of 10 → 20 is 13, got {after}"
        );
        assert_eq!(table.get(&node("b"), None).1, RttSource::Measured);
    }

    #[test]
    fn a_published_coordinate_gives_an_estimate_until_a_measurement() {
        let mut peer = RttCore::new(node("b"));
        let mut table = RttCore::new(node("a"));
        // Teach both coordinates a 40 ms distance to each other.
        for _ in 0..200 {
            let theirs = peer.coordinate().clone();
            let ours = table.coordinate().clone();
            let _ = table.observe_coordinate(&node("b"), &theirs, Duration::from_millis(40));
            let _ = peer.observe_coordinate(&node("a"), &ours, Duration::from_millis(40));
        }
        table.forget(&node("b"));
        let published = peer.coordinate().clone();
        let (estimate, source) = table.get(&node("b"), Some(&published));
        assert_eq!(source, RttSource::Estimated);
        let estimate = estimate.expect("an estimate");
        assert!(
            (20.0..80.0).contains(&estimate),
            "estimate {estimate} ms for a 40 ms link"
        );
        table.observe(&node("b"), Duration::from_millis(41));
        assert_eq!(
            table.get(&node("b"), Some(&published)),
            (Some(41.0), RttSource::Measured)
        );
    }

    #[test]
    fn a_forgotten_peer_is_unknown_again() {
        let mut table = RttCore::new(node("a"));
        table.observe(&node("b"), Duration::from_millis(5));
        table.forget(&node("b"));
        assert_eq!(table.get(&node("b"), None), (None, RttSource::Unknown));
    }

    #[test]
    fn the_coordinate_is_republished_only_after_a_real_move() {
        let mut table = RttCore::new(node("a"));
        assert!(!table.coordinate_moved(), "nothing moved yet");
        let far = RttCore::new(node("b")).coordinate().clone();
        for _ in 0..50 {
            let _ = table.observe_coordinate(&node("b"), &far, Duration::from_millis(80));
        }
        assert!(
            table.coordinate_moved(),
            "80 ms samples move the coordinate"
        );
        assert!(!table.coordinate_moved(), "once per move");
    }

    #[test]
    fn a_move_is_measured_from_the_last_published_coordinate() {
        let mut table = RttCore::new(node("a"));
        let start = table.coordinate().clone();
        let set = |table: &mut RttCore, x_ms: f64, height_ms: f64| {
            let mut c = start.clone();
            c.vec[0] = x_ms / 1000.0;
            c.height = start.height + height_ms / 1000.0;
            table.vivaldi.set_coordinate(c).expect("valid coordinate");
        };
        // 4 ms sideways and 2 ms up: 6 ms of move, over the 5 ms threshold.
        set(&mut table, 4.0, 2.0);
        assert!(table.coordinate_moved(), "4 ms + 2 ms of height is 6 ms");
        // From there 3 ms further: not far enough, though it is 7 ms from
        // where the coordinate started.
        set(&mut table, 7.0, 2.0);
        assert!(!table.coordinate_moved(), "3 ms from the published one");
    }
}
