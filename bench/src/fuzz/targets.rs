//! Every decoder a peer can reach, each with the size limit the agent
//! reads it under, a maker of valid encodings, and the check run on each
//! input: decode; when that succeeds, encode the value again and require
//! that the encoding decodes to the same value and re-encodes to the very
//! same bytes.

use std::fmt::Debug;

use foca::{Codec, PostcardCodec};
use mesh_proto::codec::{self, DecodeError, WIRE_VERSION};
use mesh_proto::frame::{ProxyFrame, MAX_FRAME};
use mesh_proto::gossip::{
    CatalogBroadcast, MemberList, MemberSummary, Ping, SyncMessage, MAX_MEMBER_LIST_MESSAGE,
    MAX_MEMBER_SUMMARY_MESSAGE, MAX_STREAM_PACKET, MAX_SWIM_PACKET, MAX_SYNC_MESSAGE,
};
use mesh_proto::{NodeIdentity, Record, RecordBody};
use rand::rngs::SmallRng;
use rand::RngExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::values;
use super::HeapMeter;

/// What one input did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It decoded, and the value survived the round trip.
    Decoded,
    /// The decoder refused it. `deep`: in the body, past the envelope
    /// (version byte, size limit, length prefix), which is where the
    /// decoder's real work is.
    Rejected {
        /// Refused past the envelope.
        deep: bool,
    },
    /// It decoded, but the value did not survive the round trip (or the
    /// decoder accepted more than its limit): a bug.
    RoundTripFailed(String),
}

/// One decoder under test.
pub struct Target {
    /// Short name, for `--only` and the table.
    pub name: &'static str,
    /// The function(s) fuzzed.
    pub decoder: &'static str,
    /// Largest input the agent hands this decoder.
    pub limit: usize,
    /// Whether the input starts with the codec's version byte.
    pub versioned: bool,
    /// A valid encoding of a random value.
    pub valid: fn(&mut SmallRng) -> Vec<u8>,
    /// Decodes one input (under the heap meter) and checks the round trip;
    /// returns the outcome and the heap the decode alone held at its peak.
    pub check: fn(&[u8], &dyn HeapMeter) -> (Outcome, usize),
}

/// Every decoder, in the order the table lists them.
pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "proxy_frame",
            decoder: "ProxyFrame::body_len, then ProxyFrame::decode",
            limit: MAX_FRAME + 2,
            versioned: false,
            valid: valid_frame,
            check: check_frame,
        },
        Target {
            name: "node_identity",
            decoder: "codec::decode::<NodeIdentity> (the hello answer)",
            limit: sidecar::join::MAX_HELLO,
            versioned: true,
            valid: |rng| encode(&values::identity(rng)),
            check: |b, m| check_codec::<NodeIdentity>(b, sidecar::join::MAX_HELLO, m),
        },
        Target {
            name: "record",
            decoder: "codec::decode::<Record>",
            limit: MAX_STREAM_PACKET,
            versioned: true,
            valid: |rng| encode(&values::record(rng)),
            check: |b, m| check_codec::<Record>(b, MAX_STREAM_PACKET, m),
        },
        Target {
            name: "definition_wire",
            decoder: "codec::decode::<RecordBody> (the definition's frozen wire layout)",
            limit: MAX_STREAM_PACKET,
            versioned: true,
            valid: |rng| encode(&RecordBody::Definition(values::definition(rng))),
            check: |b, m| check_codec::<RecordBody>(b, MAX_STREAM_PACKET, m),
        },
        Target {
            name: "sync_message",
            decoder: "codec::decode::<SyncMessage>",
            limit: MAX_SYNC_MESSAGE,
            versioned: true,
            valid: |rng| encode(&values::sync_message(rng)),
            check: |b, m| check_codec::<SyncMessage>(b, MAX_SYNC_MESSAGE, m),
        },
        Target {
            name: "member_list",
            decoder: "codec::decode::<MemberList> (push-pull on join)",
            limit: MAX_MEMBER_LIST_MESSAGE,
            versioned: true,
            valid: |rng| encode(&values::member_list(rng)),
            check: |b, m| check_codec::<MemberList>(b, MAX_MEMBER_LIST_MESSAGE, m),
        },
        Target {
            name: "member_summary",
            decoder: "codec::decode::<MemberSummary> (a periodic member pull's request)",
            limit: MAX_MEMBER_SUMMARY_MESSAGE,
            versioned: true,
            valid: |rng| encode(&values::member_summary(rng)),
            check: |b, m| check_codec::<MemberSummary>(b, MAX_MEMBER_SUMMARY_MESSAGE, m),
        },
        Target {
            name: "ping",
            decoder: "codec::decode::<Ping> (RTT ping and pong)",
            limit: sidecar::rtt::MAX_PING,
            versioned: true,
            valid: |rng| encode(&values::ping(rng)),
            check: |b, m| check_codec::<Ping>(b, sidecar::rtt::MAX_PING, m),
        },
        Target {
            name: "catalog_broadcast",
            decoder: "codec::decode::<CatalogBroadcast> (foca custom broadcast)",
            limit: MAX_SWIM_PACKET,
            versioned: true,
            valid: |rng| encode(&values::broadcast(rng)),
            check: |b, m| check_codec::<CatalogBroadcast>(b, MAX_SWIM_PACKET, m),
        },
        Target {
            name: "swim_header",
            decoder: "foca PostcardCodec::decode_header::<NodeIdentity>",
            limit: MAX_SWIM_PACKET,
            versioned: false,
            valid: valid_header,
            check: check_header,
        },
        Target {
            name: "swim_member",
            decoder: "foca PostcardCodec::decode_member::<NodeIdentity>",
            limit: MAX_SWIM_PACKET,
            versioned: false,
            valid: valid_member,
            check: check_member,
        },
        Target {
            name: "swim_packet",
            decoder: "SwimCore::handle_data: foca's packet, its updates and catalog broadcasts",
            limit: MAX_SWIM_PACKET,
            versioned: false,
            valid: super::swim::valid,
            check: super::swim::check,
        },
    ]
}

/// Encodes a value the generators made; they only make encodable values.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode(value).unwrap_or_else(|_| vec![WIRE_VERSION])
}

/// True when `value` equals itself: false only for a value holding a NaN
/// (a coordinate may), which no copy can equal.
fn self_equal<T: PartialEq>(value: &T) -> bool {
    let same = value;
    value.eq(same)
}

/// A refusal, deep when postcard refused the body.
fn rejected(e: &DecodeError) -> Outcome {
    Outcome::Rejected {
        deep: matches!(e, DecodeError::Malformed(_) | DecodeError::Trailing(_)),
    }
}

fn failed(what: impl Into<String>) -> Outcome {
    Outcome::RoundTripFailed(what.into())
}

/// The check of every `codec::decode` target.
fn check_codec<T>(bytes: &[u8], limit: usize, meter: &dyn HeapMeter) -> (Outcome, usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let (decoded, heap) = meter.measure(|| codec::decode::<T>(bytes, limit));
    let value = match decoded {
        Ok(value) => value,
        Err(e) => return (rejected(&e), heap),
    };
    if bytes.len() > limit {
        return (
            failed(format!(
                "accepted {} bytes, over its limit of {limit}",
                bytes.len()
            )),
            heap,
        );
    }
    (codec_round_trip(&value, limit), heap)
}

/// decode(encode(x)) == x, and encode(decode(encode(x))) == encode(x).
fn codec_round_trip<T>(value: &T, limit: usize) -> Outcome
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let encoded = match codec::encode(value) {
        Ok(encoded) => encoded,
        Err(e) => return failed(format!("the decoded value does not encode: {e}")),
    };
    if encoded.len() > limit {
        return failed(format!(
            "re-encodes to {} bytes, over the limit of {limit} it was decoded under",
            encoded.len()
        ));
    }
    let back: T = match codec::decode(&encoded, limit) {
        Ok(back) => back,
        Err(e) => return failed(format!("its own encoding does not decode: {e}")),
    };
    // A value with a NaN equals nothing; its bytes must still be stable.
    if self_equal(value) && back != *value {
        return failed(format!(
            "decode(encode(x)) != x: {value:?} came back as {back:?}"
        ));
    }
    match codec::encode(&back) {
        Ok(again) if again == encoded => Outcome::Decoded,
        _ => failed(format!("re-encoding is not stable for {value:?}")),
    }
}

fn valid_frame(rng: &mut SmallRng) -> Vec<u8> {
    let frame = values::proxy_frame(rng);
    let mut bytes = frame.encode().unwrap_or_default();
    // On the stream the HTTP request follows the frame.
    if rng.random_bool(0.3) {
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    }
    bytes
}

/// Reads a frame as the inbound proxy does: the 2-byte length, then
/// exactly that many bytes (whatever follows is the proxied request).
/// An error is `None` when the stream ended or the prefix was refused.
fn read_frame(stream: &[u8]) -> Result<(usize, ProxyFrame), Option<DecodeError>> {
    let [a, b, rest @ ..] = stream else {
        return Err(None);
    };
    let len = ProxyFrame::body_len([*a, *b]).map_err(|_| None)?;
    let body = rest.get(..len).ok_or(None)?;
    Ok((len, ProxyFrame::decode(body).map_err(Some)?))
}

fn check_frame(stream: &[u8], meter: &dyn HeapMeter) -> (Outcome, usize) {
    let (read, heap) = meter.measure(|| read_frame(stream));
    let (len, frame) = match read {
        Ok(read) => read,
        Err(None) => return (Outcome::Rejected { deep: false }, heap),
        Err(Some(e)) => return (rejected(&e), heap),
    };
    if len > MAX_FRAME {
        return (failed(format!("body_len let {len} bytes through")), heap);
    }
    let outcome = match frame.encode() {
        Err(e) => failed(format!("the decoded frame does not encode: {e}")),
        Ok(encoded) => match read_frame(&encoded) {
            Ok((len, back)) if len == encoded.len() - 2 && back == frame => {
                if back.encode().is_ok_and(|again| again == encoded) {
                    Outcome::Decoded
                } else {
                    failed(format!("re-encoding is not stable for {frame:?}"))
                }
            }
            other => failed(format!("{frame:?} read back as {other:?}")),
        },
    };
    (outcome, heap)
}

fn valid_header(rng: &mut SmallRng) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = PostcardCodec.encode_header(&values::header(rng), &mut bytes);
    // A header is followed by member updates or broadcasts in a packet.
    if rng.random_bool(0.3) {
        bytes.extend_from_slice(&[0, 1]);
        let _ = PostcardCodec.encode_member(&values::member(rng), &mut bytes);
    }
    bytes
}

fn valid_member(rng: &mut SmallRng) -> Vec<u8> {
    let mut bytes = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        let _ = PostcardCodec.encode_member(&values::member(rng), &mut bytes);
    }
    bytes
}

/// The check of foca's decoders, which read one item off the front of the
/// packet and leave the rest to the next decoder.
macro_rules! foca_check {
    ($name:ident, $decode:ident, $encode:ident) => {
        fn $name(bytes: &[u8], meter: &dyn HeapMeter) -> (Outcome, usize) {
            let (decoded, heap) = meter.measure(|| {
                let mut buf = bytes;
                let item =
                    <PostcardCodec as Codec<NodeIdentity>>::$decode(&mut PostcardCodec, &mut buf)
                        .ok();
                (item, buf.len())
            });
            let (Some(item), left) = decoded else {
                // foca's decoders read postcard straight away: no envelope.
                return (Outcome::Rejected { deep: true }, heap);
            };
            let used = bytes.len() - left;
            let mut encoded = Vec::new();
            if let Err(e) = PostcardCodec.$encode(&item, &mut encoded) {
                return (
                    failed(format!("the decoded item does not encode: {e}")),
                    heap,
                );
            }
            if encoded.len() > used {
                return (
                    failed(format!("{used} bytes re-encode to {}", encoded.len())),
                    heap,
                );
            }
            let mut buf = &encoded[..];
            let outcome =
                match <PostcardCodec as Codec<NodeIdentity>>::$decode(&mut PostcardCodec, &mut buf)
                {
                    Ok(back) if back == item && buf.is_empty() => Outcome::Decoded,
                    Ok(back) => failed(format!(
                        "{item:?} came back as {back:?} with {} bytes left",
                        buf.len()
                    )),
                    Err(e) => failed(format!("its own encoding does not decode: {e}")),
                };
            (outcome, heap)
        }
    };
}

foca_check!(check_header, decode_header, encode_header);
foca_check!(check_member, decode_member, encode_member);
