//! The versioned binary codec: one version byte, then postcard.
//!
//! Every decoder takes a size limit and checks it before parsing, and postcard
//! itself never allocates more than the input could describe, so a hostile
//! peer cannot make a node allocate beyond the stated bounds.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Wire format version written in front of every encoded message.
pub const WIRE_VERSION: u8 = 1;

/// Why bytes could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input is larger than the caller allows.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Bytes offered.
        len: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// Nothing to decode.
    #[error("empty message")]
    Empty,
    /// Written by a different wire version.
    #[error("wire version {found} is not supported (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion {
        /// Version byte found.
        found: u8,
    },
    /// The body is not a valid message of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// Bytes were left over after a complete message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// Why a value could not be encoded.
#[derive(Debug, Error)]
#[error("cannot encode message: {0}")]
pub struct EncodeError(String);

impl EncodeError {
    /// A message that encodes to more bytes than its limit.
    pub fn too_large(len: usize, limit: usize) -> Self {
        Self(format!("{len} bytes exceeds the limit of {limit} bytes"))
    }
}

/// Encodes `value` behind the wire version byte.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![WIRE_VERSION];
    postcard::to_io(value, &mut out).map_err(|e| EncodeError(e.to_string()))?;
    Ok(out)
}

/// Decodes a message of at most `limit` bytes, rejecting trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(value)
}

/// Most heap a sequence reserves on the strength of its length claim; past
/// it, the vector grows only as real elements arrive.
pub const PREALLOC_BYTES: usize = 4096;

/// `deserialize_with` for a vector whose elements are much larger in
/// memory than on the wire (a `Record` is 264 bytes, its tombstone 7 bytes
/// of input). serde's own vector reserves up to 1 MiB for whatever count a
/// message claims, and postcard only checks the claim against the bytes
/// left, so a 4 KB sync message could make a node reserve 1 MiB before its
/// first element failed to parse. Here the reservation stops at
/// [`PREALLOC_BYTES`].
pub fn cautious_vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Cautious<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Cautious<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let most = PREALLOC_BYTES / std::mem::size_of::<T>().max(1);
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(most));
            while let Some(element) = seq.next_element()? {
                out.push(element);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(Cautious(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_envelopes() {
        let bytes = encode(&("echo".to_string(), 7u32)).expect("encodes");
        let back: (String, u32) = decode(&bytes, 64).expect("decodes");
        assert_eq!(back, ("echo".to_string(), 7));
        assert_eq!(
            decode::<(String, u32)>(&bytes, 3),
            Err(DecodeError::TooLarge {
                len: bytes.len(),
                limit: 3
            })
        );
        assert_eq!(decode::<u32>(&[], 8), Err(DecodeError::Empty));
        assert_eq!(
            decode::<u32>(&[9, 1], 8),
            Err(DecodeError::UnsupportedVersion { found: 9 })
        );
        let mut padded = bytes.clone();
        padded.push(0);
        assert_eq!(
            decode::<(String, u32)>(&padded, 64),
            Err(DecodeError::Trailing(1))
        );
    }
}
