//! Fuzzes the decoder of [`mesh_proto::gossip::Ping`].
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::gossip::{Ping, MAX_SWIM_PACKET};

fuzz_target!(|data: &[u8]| {
    mesh_proto_fuzz::round_trip::<Ping>(data, MAX_SWIM_PACKET);
});
