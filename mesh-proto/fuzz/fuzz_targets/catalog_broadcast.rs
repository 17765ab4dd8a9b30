//! Fuzzes the decoder of [`mesh_proto::gossip::CatalogBroadcast`].
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::gossip::{CatalogBroadcast, MAX_STREAM_PACKET};

fuzz_target!(|data: &[u8]| {
    mesh_proto_fuzz::round_trip::<CatalogBroadcast>(data, MAX_STREAM_PACKET);
});
