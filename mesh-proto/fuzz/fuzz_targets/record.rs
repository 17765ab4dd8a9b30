//! Fuzzes the decoder of [`mesh_proto::Record`], the catalog entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::gossip::MAX_STREAM_PACKET;
use mesh_proto::Record;

fuzz_target!(|data: &[u8]| {
    mesh_proto_fuzz::round_trip::<Record>(data, MAX_STREAM_PACKET);
});
