//! Sequences decoded with a count limit and a cautious reservation. A byte
//! limit alone does not bound memory: a 16 MiB sync message of minimal
//! tombstones decoded to about 1.4 GiB of records (a `Record` is 264 bytes
//! in memory, its tombstone 7 bytes on the wire). With the count checked
//! against the length prefix before anything is allocated, a peer's message
//! costs at most the limit; and the claimed count reserves at most
//! [`PREALLOC_BYTES`] (serde's own vector reserves up to 1 MiB for whatever
//! a message claims: `bench fuzz` found a 3.8 KB sync message reserving
//! 1 MiB before its first record failed to parse).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

/// Most heap a sequence reserves on the strength of its length claim; past
/// it, the vector grows only as real elements arrive.
pub const PREALLOC_BYTES: usize = 4096;

/// Decodes a sequence of at most `LIMIT` items; use with
/// `#[serde(deserialize_with = "bounded::seq::<_, _, LIMIT>")]`.
pub fn seq<'de, D, T, const LIMIT: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(AtMost::<T, LIMIT>(PhantomData))
}

struct AtMost<T, const LIMIT: usize>(PhantomData<T>);

impl<'de, T: Deserialize<'de>, const LIMIT: usize> Visitor<'de> for AtMost<T, LIMIT> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a sequence of at most {LIMIT} items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let announced = seq.size_hint();
        if let Some(n) = announced.filter(|n| *n > LIMIT) {
            return Err(A::Error::invalid_length(n, &self));
        }
        // The announced count is the peer's word; the items are not here yet.
        let most = PREALLOC_BYTES / std::mem::size_of::<T>().max(1);
        let mut items = Vec::with_capacity(announced.unwrap_or(0).min(most));
        while let Some(item) = seq.next_element()? {
            if items.len() == LIMIT {
                return Err(A::Error::invalid_length(LIMIT + 1, &self));
            }
            items.push(item);
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use crate::codec;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Three(#[serde(deserialize_with = "super::seq::<_, _, 3>")] Vec<u32>);

    #[test]
    fn accepts_up_to_the_limit_and_refuses_one_more() {
        let ok = codec::encode(&Three(vec![1, 2, 3])).expect("encode");
        assert_eq!(
            codec::decode::<Three>(&ok, 64).expect("three fit"),
            Three(vec![1, 2, 3])
        );
        let over = codec::encode(&Three(vec![1, 2, 3, 4])).expect("encode");
        // postcard keeps no custom message: the refusal is a malformed message.
        assert!(matches!(
            codec::decode::<Three>(&over, 64),
            Err(codec::DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn a_huge_announced_count_is_refused_before_any_item_is_read() {
        // Version byte, then a varint count of 2^32 - 1 and no items.
        let bytes = [codec::WIRE_VERSION, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            codec::decode::<Three>(&bytes, 64),
            Err(codec::DecodeError::Malformed(_))
        ));
    }
}
