//! The one check every fuzz target runs: decode the input; if it decodes,
//! encode the value again and require the new bytes to decode to a value
//! that encodes to the very same bytes.
//!
//! Bytes, not `==`, because a coordinate may carry a NaN, which is not equal
//! to itself; equal encodings are the stronger statement anyway.
#![forbid(unsafe_code)]

use mesh_proto::codec;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `data` as `T` under `limit`, and checks a decoded value survives
/// another trip through the codec unchanged. Panics (what libFuzzer reports)
/// only when the codec contradicts itself.
pub fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8], limit: usize) {
    let Ok(value) = codec::decode::<T>(data, limit) else {
        return;
    };
    let encoded = codec::encode(&value).expect("a decoded value must encode");
    let again: T = codec::decode(&encoded, encoded.len()).expect("a re-encoded value must decode");
    let encoded_again = codec::encode(&again).expect("a decoded value must encode");
    assert_eq!(encoded, encoded_again, "re-encoding is not stable");
}
