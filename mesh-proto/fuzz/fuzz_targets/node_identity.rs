//! Fuzzes the decoder of [`mesh_proto::NodeIdentity`], the SWIM identity.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::gossip::MAX_SWIM_PACKET;
use mesh_proto::NodeIdentity;

fuzz_target!(|data: &[u8]| {
    mesh_proto_fuzz::round_trip::<NodeIdentity>(data, MAX_SWIM_PACKET);
});
