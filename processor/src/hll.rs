//! HyperLogLog: a mergeable estimate of the number of distinct values, in at most `2^precision` bytes.
//!
//! Each value is hashed to 64 bits (MurmurHash64A, fixed seed: sketches are checkpointed, so the hash must not
//! change between runs or builds); the top `precision` bits pick a register, which keeps the largest rank
//! (leading zeros + 1) of the remaining bits. The estimate is the bias-corrected harmonic mean of Flajolet et
//! al., with linear counting while registers are still empty; 64-bit hashes need no large-range correction.
//! The relative standard error is about `1.04 / sqrt(2^precision)` (0.81% at precision 14).
//!
//! Representation: *sparse* (sorted `(register << 8) | rank` words, only for registers set) until that would
//! take more bytes than the dense form, then *dense* (one byte per register). So a sketch of few values costs
//! a few bytes, not 16 KiB, which matters with one sketch per (key, window).
//!
//! Invariants: `precision` is in `MIN_PRECISION ..= MAX_PRECISION`; every rank is in `1 ..= 65 - precision`
//! (0 in the dense form means unset); sparse words are strictly increasing by register and at most
//! `2^precision / 4` of them. Sketches of different precisions merge by folding the finer one down.

use crate::error::{Error, Result};
use crate::state::{StateCodec, StateReader, StateWriter};

pub const MIN_PRECISION: u8 = 4;
pub const MAX_PRECISION: u8 = 18;
pub const DEFAULT_PRECISION: u8 = 14;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Registers {
    Sparse(Vec<u32>),
    Dense(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HyperLogLog {
    precision: u8,
    registers: Registers,
}

/// MurmurHash64A (Austin Appleby), little-endian words.
pub fn hash64(data: &[u8]) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = SEED ^ (data.len() as u64).wrapping_mul(M);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(c);
        let mut k = u64::from_le_bytes(word).wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate() {
            h ^= u64::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^ (h >> R)
}

impl Default for HyperLogLog {
    fn default() -> Self {
        HyperLogLog::new(DEFAULT_PRECISION)
    }
}

impl HyperLogLog {
    /// An empty sketch; `precision` is clamped to `MIN_PRECISION ..= MAX_PRECISION`.
    pub fn new(precision: u8) -> HyperLogLog {
        HyperLogLog {
            precision: precision.clamp(MIN_PRECISION, MAX_PRECISION),
            registers: Registers::Sparse(Vec::new()),
        }
    }

    pub fn precision(&self) -> u8 {
        self.precision
    }

    fn m(&self) -> usize {
        1 << self.precision
    }

    fn max_rank(&self) -> u8 {
        65 - self.precision
    }

    pub fn insert(&mut self, value: &[u8]) {
        self.insert_hash(hash64(value));
    }

    pub fn insert_hash(&mut self, hash: u64) {
        let p = u32::from(self.precision);
        let index = (hash >> (64 - p)) as u32;
        let rank = ((hash << p).leading_zeros() + 1).min(u32::from(self.max_rank())) as u8;
        self.set(index, rank);
    }

    /// Raises register `index` to `rank`.
    fn set(&mut self, index: u32, rank: u8) {
        let m = self.m();
        match &mut self.registers {
            Registers::Dense(r) => {
                if let Some(slot) = r.get_mut(index as usize) {
                    *slot = (*slot).max(rank);
                }
            }
            Registers::Sparse(words) => {
                match words.binary_search_by_key(&index, |w| w >> 8) {
                    Ok(i) => {
                        if (words[i] & 0xff) < u32::from(rank) {
                            words[i] = (index << 8) | u32::from(rank);
                        }
                    }
                    Err(i) => words.insert(i, (index << 8) | u32::from(rank)),
                }
                // Four bytes a word: beyond m / 4 words the dense form is smaller.
                if words.len() > m / 4 {
                    let mut dense = vec![0u8; m];
                    for w in words.iter() {
                        if let Some(slot) = dense.get_mut((w >> 8) as usize) {
                            *slot = (w & 0xff) as u8;
                        }
                    }
                    self.registers = Registers::Dense(dense);
                }
            }
        }
    }

    /// Calls `f(index, rank)` for every register set.
    fn for_each(&self, mut f: impl FnMut(u32, u8)) {
        match &self.registers {
            Registers::Dense(r) => {
                for (i, &rank) in r.iter().enumerate() {
                    if rank > 0 {
                        f(i as u32, rank);
                    }
                }
            }
            Registers::Sparse(words) => {
                for w in words {
                    f(w >> 8, (w & 0xff) as u8);
                }
            }
        }
    }

    /// The same sketch at a lower precision (the bits dropped from the register index become the first bits
    /// of the rest of the hash).
    fn folded(&self, precision: u8) -> HyperLogLog {
        let mut out = HyperLogLog::new(precision);
        let d = u32::from(self.precision.saturating_sub(out.precision));
        let max = out.max_rank();
        self.for_each(|index, rank| {
            let dropped = index & ((1u32 << d) - 1);
            let new_rank = if dropped != 0 {
                // Leading zeros of `dropped` as a d-bit number, plus one.
                d - (32 - dropped.leading_zeros()) + 1
            } else {
                d + u32::from(rank)
            };
            out.set(index >> d, new_rank.min(u32::from(max)) as u8);
        });
        out
    }

    /// Folds `other` in (the union of the two sets of values).
    pub fn merge(&mut self, other: &HyperLogLog) {
        if other.precision < self.precision {
            *self = self.folded(other.precision);
        }
        if other.precision > self.precision {
            let o = other.folded(self.precision);
            o.for_each(|i, r| self.set(i, r));
        } else {
            other.for_each(|i, r| self.set(i, r));
        }
    }

    /// The estimated number of distinct values inserted.
    pub fn estimate(&self) -> f64 {
        let m = self.m() as f64;
        let mut set = 0usize;
        let mut sum = 0.0f64;
        self.for_each(|_, rank| {
            set += 1;
            sum += (-f64::from(rank)).exp2();
        });
        let zeros = self.m() - set;
        sum += zeros as f64;
        let alpha = match self.m() {
            16 => 0.673,
            32 => 0.697,
            64 => 0.709,
            _ => 0.7213 / (1.0 + 1.079 / m),
        };
        let raw = alpha * m * m / sum;
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }

    /// The estimate, rounded.
    pub fn count(&self) -> u64 {
        self.estimate().round() as u64
    }
}

impl StateCodec for HyperLogLog {
    fn encode(&self, w: &mut StateWriter) {
        w.u8(self.precision);
        match &self.registers {
            Registers::Sparse(words) => {
                w.u8(0);
                w.u32(words.len() as u32);
                for &word in words {
                    w.u32(word);
                }
            }
            Registers::Dense(r) => {
                w.u8(1);
                w.bytes(r);
            }
        }
    }

    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let precision = r.u8()?;
        if !(MIN_PRECISION..=MAX_PRECISION).contains(&precision) {
            return Err(Error::CorruptState(format!("hll precision {precision}")));
        }
        let mut h = HyperLogLog::new(precision);
        let (m, max) = (h.m(), h.max_rank());
        let bad = || Error::CorruptState("hll registers".into());
        h.registers = match r.u8()? {
            0 => {
                let n = r.count(4)?;
                if n > m / 4 {
                    return Err(bad());
                }
                let mut words = Vec::with_capacity(n);
                for _ in 0..n {
                    let word = r.u32()?;
                    let (index, rank) = (word >> 8, (word & 0xff) as u8);
                    let increasing = words.last().is_none_or(|&prev: &u32| prev >> 8 < index);
                    if index as usize >= m || rank == 0 || rank > max || !increasing {
                        return Err(bad());
                    }
                    words.push(word);
                }
                Registers::Sparse(words)
            }
            1 => {
                let bytes = r.bytes()?;
                if bytes.len() != m || bytes.iter().any(|&rank| rank > max) {
                    return Err(bad());
                }
                Registers::Dense(bytes.to_vec())
            }
            t => return Err(Error::CorruptState(format!("hll form {t}"))),
        };
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sketch(p: u8, values: impl Iterator<Item = u64>) -> HyperLogLog {
        let mut h = HyperLogLog::new(p);
        for v in values {
            h.insert(&v.to_be_bytes());
        }
        h
    }

    #[test]
    fn estimates_within_a_few_standard_errors() {
        for &n in &[0u64, 1, 10, 1_000, 20_000, 100_000] {
            let h = sketch(14, 0..n);
            let e = h.estimate();
            let err = (e - n as f64).abs() / (n.max(1) as f64);
            assert!(err < 0.02, "n {n}: estimate {e}");
        }
        // Duplicates do not count.
        let h = sketch(14, (0..50_000).map(|i| i % 1_000));
        assert!((h.estimate() - 1_000.0).abs() < 20.0);
    }

    #[test]
    fn merge_is_the_union_and_sparse_turns_dense() {
        let a = sketch(14, 0..30_000);
        let b = sketch(14, 20_000..60_000);
        assert!(matches!(a.registers, Registers::Dense(_)));
        assert!(matches!(sketch(14, 0..100).registers, Registers::Sparse(_)));
        let mut u = a.clone();
        u.merge(&b);
        assert_eq!(u, sketch(14, 0..60_000), "merge equals inserting the union");
        // Different precisions merge at the lower one, close to a sketch built at it.
        let mut low = sketch(10, 0..5_000);
        low.merge(&sketch(14, 5_000..10_000));
        assert_eq!(low.precision(), 10);
        let direct = sketch(10, 0..10_000);
        assert_eq!(low, direct, "folding is exact");
        let mut high = sketch(14, 0..5_000);
        high.merge(&sketch(10, 5_000..10_000));
        assert_eq!(high, direct);
    }

    proptest! {
        #[test]
        fn round_trips_and_garbage_never_panics(values in proptest::collection::vec(any::<u64>(), 0..3_000),
                                               p in 4u8..=18,
                                               junk in proptest::collection::vec(any::<u8>(), 0..64)) {
            let h = sketch(p, values.into_iter());
            let mut w = StateWriter::new();
            h.encode(&mut w);
            let mut r = StateReader::new(&w.buf);
            prop_assert_eq!(HyperLogLog::decode(&mut r).expect("decodes"), h);
            prop_assert!(r.is_empty());
            let _ = HyperLogLog::decode(&mut StateReader::new(&junk));
            let mut flipped = w.buf.clone();
            let i = junk.first().map_or(0, |&b| b as usize % flipped.len());
            flipped[i] ^= 0x5a;
            let _ = HyperLogLog::decode(&mut StateReader::new(&flipped));
        }
    }
}
