//! Where the inputs come from: random byte strings of chosen lengths, and
//! mutations of valid encodings (bit flips, byte inserts and deletes,
//! length-prefix tampering, truncation, splicing of two messages).
//!
//! Each decoder keeps a small pool of seeds: half fresh valid encodings,
//! half mutants that decoded, so mutations pile up on inputs that reach
//! deep into the decoder (the cheapest form of a fuzzer's feedback).

use rand::rngs::SmallRng;
use rand::{Rng, RngExt};

use mesh_proto::codec::WIRE_VERSION;

/// Seeds kept per decoder: the first half valid encodings, the second half
/// mutants that decoded.
const POOL: usize = 128;
/// Beyond this limit, inputs of the limit's own size are made rarely:
/// filling 16 MiB costs milliseconds, and a few hundred such inputs are
/// enough to cover that edge.
const CHEAP_LIMIT: usize = 64 * 1024;

/// Values that length claims and counts are tampered to: the edges of
/// postcard's varints and of every integer width.
const CLAIMS: &[u64] = &[
    0,
    1,
    2,
    127,
    128,
    255,
    256,
    16_383,
    16_384,
    65_535,
    65_536,
    1 << 21,
    (1 << 31) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    1 << 63,
    u64::MAX,
];

/// The source of one decoder's inputs.
pub struct Inputs {
    rng: SmallRng,
    /// Largest input the agent hands this decoder.
    limit: usize,
    /// Whether inputs start with the codec's version byte.
    versioned: bool,
    /// Valid encodings, then decoded mutants.
    pool: Vec<Vec<u8>>,
    /// Next decoded-mutant slot to overwrite.
    next_mutant: usize,
    /// Makes a fresh valid encoding.
    valid: fn(&mut SmallRng) -> Vec<u8>,
}

/// What kind of input [`Inputs::next`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Random bytes.
    Random,
    /// A valid encoding as is.
    Valid,
    /// A mutated seed.
    Mutant,
}

impl Inputs {
    /// A source seeded from `rng`, for a decoder reading up to `limit` bytes.
    pub fn new(
        mut rng: SmallRng,
        limit: usize,
        versioned: bool,
        valid: fn(&mut SmallRng) -> Vec<u8>,
    ) -> Self {
        let pool = (0..POOL).map(|_| valid(&mut rng)).collect();
        Self {
            rng,
            limit,
            versioned,
            pool,
            next_mutant: POOL / 2,
            valid,
        }
    }

    /// Writes the next input into `out`.
    pub fn next(&mut self, out: &mut Vec<u8>) -> Kind {
        out.clear();
        let roll = self.rng.random_range(0..100);
        if roll < 15 {
            self.random(out);
            return Kind::Random;
        }
        if roll < 20 {
            let fresh = (self.valid)(&mut self.rng);
            let slot = self.rng.random_range(0..POOL / 2);
            out.extend_from_slice(&fresh);
            self.pool[slot] = fresh;
            return Kind::Valid;
        }
        let seed = self.rng.random_range(0..POOL);
        out.extend_from_slice(&self.pool[seed]);
        for _ in 0..self.rng.random_range(1..=4) {
            self.mutate(out);
        }
        Kind::Mutant
    }

    /// Keeps a mutant that decoded as a seed for further mutation.
    pub fn keep(&mut self, input: &[u8]) {
        // One in eight: enough to climb, not so many the pool loses variety.
        if self.rng.random_range(0..8) == 0 {
            self.pool[self.next_mutant].clear();
            self.pool[self.next_mutant].extend_from_slice(input);
            self.next_mutant = POOL / 2 + (self.next_mutant + 1 - POOL / 2) % (POOL / 2);
        }
    }

    /// Random bytes, of a length that is often an edge: empty, one byte,
    /// or just under, at or over the limit.
    fn random(&mut self, out: &mut Vec<u8>) {
        let limit = self.limit;
        let edge_odds = if limit > CHEAP_LIMIT { 2_000 } else { 5 };
        let len = match self.rng.random_range(0..10) {
            0 => self.rng.random_range(0..=2),
            1 if self.rng.random_range(0..edge_odds) == 0 => {
                limit - 1 + self.rng.random_range(0..=2)
            }
            1 | 2 => self.rng.random_range(0..16),
            3..=6 => self.rng.random_range(0..256),
            _ => self.rng.random_range(0..=limit.min(4096) + 2),
        };
        // Past limit + 1 the decoder only says "too large": no need to go on.
        out.resize(len.min(limit + 2), 0);
        match self.rng.random_range(0..4) {
            // Zeros parse as "empty" or "0" almost everywhere: long valid runs.
            0 => {}
            // Bytes that are all continuation bits: endless varints.
            1 => out.fill(0x80 | self.rng.random_range(0..0x80)),
            _ => self.rng.fill_bytes(out),
        }
        if self.versioned && self.rng.random_bool(0.7) {
            if let Some(first) = out.first_mut() {
                *first = WIRE_VERSION;
            }
        }
    }

    /// One mutation of `out` in place.
    fn mutate(&mut self, out: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let len = out.len();
        let at = |rng: &mut SmallRng| rng.random_range(0..len.max(1));
        match rng.random_range(0..12) {
            0 if len > 0 => {
                let i = at(rng);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = at(rng);
                out[i] = [0, 1, 0x7f, 0x80, 0xff, rng.random()][rng.random_range(0..6)];
            }
            2 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..=8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                out.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = at(rng);
                let n = rng.random_range(1..=8.min(len - i));
                out.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a chunk: repeats a field, or a whole element.
                let i = at(rng);
                let n = rng.random_range(1..=64.min(len - i));
                let chunk = out[i..i + n].to_vec();
                let to = rng.random_range(0..=len);
                out.splice(to..to, chunk);
            }
            5 if len > 0 => out.truncate(at(rng)),
            6 => {
                let n = rng.random_range(1..=32);
                out.extend((0..n).map(|_| rng.random::<u8>()));
            }
            7 => {
                // Splice: the head of this message, the tail of another.
                let other = &self.pool[rng.random_range(0..POOL)];
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..=other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            8 | 9 if len > 0 => {
                // Tamper with the varint at a random place, often the length
                // prefix of a string or sequence: claim an edge value, or
                // about as much as the rest of the input could hold.
                let i = at(rng);
                let old = varint_len(&out[i..]);
                let rest = (len - i - old) as u64;
                let claim = match rng.random_range(0..3) {
                    0 => CLAIMS[rng.random_range(0..CLAIMS.len())],
                    1 => rest.saturating_add_signed(rng.random_range(-2..=2)),
                    _ => rest / rng.random_range(1..=16),
                };
                out.splice(i..i + old, varint(claim));
            }
            10 if len >= 2 => {
                // A big-endian u16 (a frame's length prefix, foca's counts
                // and broadcast lengths).
                let i = rng.random_range(0..len - 1);
                let value: u16 = match rng.random_range(0..3) {
                    0 => u16::try_from(len - i - 2).unwrap_or(u16::MAX),
                    1 => [0, 1, 1024, 1025, u16::MAX][rng.random_range(0..5)],
                    _ => rng.random(),
                };
                out[i..i + 2].copy_from_slice(&value.to_be_bytes());
            }
            11 if len > 0 => {
                // Repeat a chunk several times: many elements behind one count.
                let i = at(rng);
                let n = rng.random_range(1..=32.min(len - i));
                let chunk = out[i..i + n].to_vec();
                for _ in 0..rng.random_range(2..=16) {
                    out.splice(i..i, chunk.iter().copied());
                }
            }
            _ => out.push(rng.random()),
        }
        // Mutants stay near the limit: far past it they only test the
        // size check, which the random inputs already do.
        out.truncate(self.limit + 64);
    }
}

/// Length of the varint at the start of `bytes` (at least 1, at most 10).
fn varint_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take(10)
        .position(|b| b & 0x80 == 0)
        .map_or(bytes.len().clamp(1, 10), |p| p + 1)
        .min(bytes.len().max(1))
}

/// postcard's varint encoding of `n`.
pub fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn varints_are_postcards() {
        assert_eq!(varint(0), [0]);
        assert_eq!(varint(127), [0x7f]);
        assert_eq!(varint(128), [0x80, 0x01]);
        assert_eq!(varint(u64::MAX).len(), 10);
        assert_eq!(varint_len(&[0x80, 0x80, 0x01, 0x55]), 3);
        assert_eq!(varint_len(&[0x80]), 1);
    }

    #[test]
    fn inputs_reach_every_edge_length_and_stay_bounded() {
        let limit = 100;
        let mut inputs = Inputs::new(SmallRng::seed_from_u64(3), limit, true, |rng| {
            let n = rng.random_range(0..40);
            (0..n).map(|i| i as u8).collect()
        });
        let mut seen = [false; 3];
        let mut buf = Vec::new();
        for _ in 0..20_000 {
            inputs.next(&mut buf);
            assert!(buf.len() <= limit + 64, "{} bytes", buf.len());
            if let Some(edge) = buf.len().checked_sub(limit - 1).filter(|e| *e < 3) {
                seen[edge] = true;
            }
        }
        assert_eq!(seen, [true; 3], "lengths limit-1, limit and limit+1");
    }
}
