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

/// RTT by peer, measured or estimated.
pub struct RttCore {
    local: NodeId,
    measured: HashMap<NodeId, f64>,
    coordinates: HashMap<NodeId, Coordinate>,
    vivaldi: Vivaldi,
}

impl RttCore {
    /// An empty table for `local`.
    pub fn new(local: NodeId) -> Self {
        let vivaldi = Vivaldi::new(VivaldiConfig::default());
        Self {
            local,
            measured: HashMap::new(),
            coordinates: HashMap::new(),
            vivaldi,
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

    /// Remembers a peer's coordinate for estimates, without moving ours.
    pub fn learn_coordinate(&mut self, node: &NodeId, coordinate: &Coordinate) {
        if coordinate.is_valid() {
            self.coordinates.insert(node.clone(), coordinate.clone());
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::node;

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
}
