//! Fuzzes the decoder of [`mesh_proto::gossip::SyncMessage`].
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::gossip::{SyncMessage, MAX_SYNC_MESSAGE};

fuzz_target!(|data: &[u8]| {
    mesh_proto_fuzz::round_trip::<SyncMessage>(data, MAX_SYNC_MESSAGE);
});
