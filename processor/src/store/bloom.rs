//! A Bloom filter over the keys of one run, so that a lookup skips the runs that cannot hold its key without
//! reading them: with 10 bits per key and 7 probes, about 1% of the runs without the key are read.
//!
//! Invariants: `bits.len()` is a power of two in bytes (so a probe is a mask, not a division) and at least
//! 8; `probes` is in 1..=16. The probes of a key are derived from one 64-bit hash (Kirsch and Mitzenmacher's
//! double hashing).

use crate::error::{Error, Result};

const BITS_PER_KEY: usize = 10;
const PROBES: u32 = 7;

#[derive(Debug, Clone)]
pub struct Bloom {
    bits: Vec<u8>,
    probes: u32,
}

/// A 64-bit hash of a key (FxHash's word loop with a final avalanche, so that keys differing only in their
/// last bytes spread over the whole filter).
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ key.len() as u64;
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    // splitmix64's finalizer.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Bloom {
    /// An empty filter sized for `keys` keys.
    pub fn with_capacity(keys: usize) -> Bloom {
        let bytes = (keys.saturating_mul(BITS_PER_KEY) / 8)
            .max(8)
            .next_power_of_two();
        Bloom {
            bits: vec![0; bytes],
            probes: PROBES,
        }
    }

    /// The bit positions probed for `hash` in a filter of `bytes` bytes.
    fn positions(bytes: usize, probes: u32, hash: u64) -> impl Iterator<Item = usize> {
        let mask = (bytes * 8 - 1) as u64;
        let h2 = hash.rotate_left(32) | 1;
        (0..u64::from(probes)).map(move |i| (hash.wrapping_add(i.wrapping_mul(h2)) & mask) as usize)
    }

    pub fn insert(&mut self, hash: u64) {
        for p in Self::positions(self.bits.len(), self.probes, hash) {
            self.bits[p / 8] |= 1 << (p % 8);
        }
    }

    /// False only if the key was never inserted.
    pub fn may_contain(&self, hash: u64) -> bool {
        Self::positions(self.bits.len(), self.probes, hash)
            .all(|p| self.bits[p / 8] & (1 << (p % 8)) != 0)
    }

    pub fn memory_bytes(&self) -> usize {
        self.bits.len()
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.probes.to_be_bytes());
        out.extend_from_slice(&(self.bits.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.bits);
    }

    /// Reads what `encode` wrote; the whole of `data` must be the filter.
    pub fn decode(data: &[u8]) -> Result<Bloom> {
        let bad = || Error::CorruptState("state store: bad bloom filter".into());
        if data.len() < 8 {
            return Err(bad());
        }
        let probes = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let n = u32::from_be_bytes([data[4], data[5], data[6], data[7]]) as usize;
        if !(1..=16).contains(&probes) || n < 8 || !n.is_power_of_two() || data.len() - 8 != n {
            return Err(bad());
        }
        Ok(Bloom {
            bits: data[8..].to_vec(),
            probes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut b = Bloom::with_capacity(10_000);
        for i in 0u64..10_000 {
            b.insert(key_hash(&i.to_be_bytes()));
        }
        for i in 0u64..10_000 {
            assert!(b.may_contain(key_hash(&i.to_be_bytes())));
        }
        let fp = (10_000u64..110_000)
            .filter(|i| b.may_contain(key_hash(&i.to_be_bytes())))
            .count();
        // 10 bits per key rounded up to a power of two: well under 2%.
        assert!(fp < 2_000, "{fp} false positives in 100000");
        let mut enc = Vec::new();
        b.encode(&mut enc);
        let back = Bloom::decode(&enc).unwrap();
        assert!(back.may_contain(key_hash(&5u64.to_be_bytes())));
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Bloom::decode(&data);
        }
    }
}
