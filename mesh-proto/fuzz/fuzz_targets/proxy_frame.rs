//! Fuzzes the proxy frame as a sidecar reads it off a QUIC stream: the
//! 2-byte length prefix, then that many bytes of frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::frame::{ProxyFrame, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let [a, b, rest @ ..] = data else {
        return;
    };
    let Ok(len) = ProxyFrame::body_len([*a, *b]) else {
        return;
    };
    assert!(len <= MAX_FRAME, "body_len let {len} bytes through");
    let Some(body) = rest.get(..len) else {
        return;
    };
    if let Ok(frame) = ProxyFrame::decode(body) {
        // ProxyFrame holds no floats, so plain equality applies.
        let encoded = frame.encode().expect("a decoded frame must encode");
        let len = ProxyFrame::body_len([encoded[0], encoded[1]]).expect("own prefix is valid");
        assert_eq!(len, encoded.len() - 2);
        assert_eq!(ProxyFrame::decode(&encoded[2..]), Ok(frame));
    }
});
