//! Upstream selection (being written).
