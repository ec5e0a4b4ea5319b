//! A fast, non-cryptographic hasher for operator state maps (the multiply-rotate hash of Firefox and rustc,
//! "FxHash"). State maps are keyed by record keys, which come from the network: SipHash's resistance to
//! chosen collisions matters where an attacker picks keys to slow a map; pipeline keys are chosen by the
//! producers the pipeline's owner runs, and SipHash cost 5-8% of a join's time (see BENCHMARKS.md).

use std::hash::{BuildHasherDefault, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
/// The finaliser's multiplier (an odd constant with no structure: the fractional bits of pi).
const FOLD: u64 = 0x24_3f_6a_88_85_a3_08_d3;

#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    /// The multiply-rotate steps leave the low bits of the hash depending only on the low bits of the last
    /// word: keys that differ only in their last bytes' upper half (`auction-000042`, `auction-000043`:
    /// the digits sit in bytes 3-5 of the final word) would share their low bits, which hashbrown uses as
    /// the bucket index, and every lookup would walk one long probe chain. A folded 128-bit multiply spreads
    /// every bit of the state over both halves (as rustc-hash 2 and foldhash finish).
    fn finish(&self) -> u64 {
        let m = u128::from(self.hash) * u128::from(FOLD);
        (m as u64) ^ ((m >> 64) as u64)
    }
}

/// A `HashMap` with [`FxHasher`].
pub type FxHashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;

    fn hash<T: Hash>(t: &T) -> u64 {
        let mut h = FxHasher::default();
        t.hash(&mut h);
        h.finish()
    }

    #[test]
    fn spreads_and_distinguishes() {
        assert_ne!(hash(&"a"), hash(&"b"));
        assert_ne!(hash(&"abcdefgh1"), hash(&"abcdefgh2"));
        assert_ne!(hash(&b"\0".to_vec()), hash(&b"\0\0".to_vec()));
        let mut m: FxHashMap<String, u32> = FxHashMap::default();
        for i in 0..1000 {
            m.insert(format!("k{i}"), i);
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m.get("k500"), Some(&500));
    }

    /// Keys that differ only in the upper bytes of their last word must still differ in the low bits (the
    /// bucket index) and in the top 7 bits (hashbrown's tag): 100,000 such keys over 1,024 buckets leave no
    /// bucket with more than a few times its share.
    #[test]
    fn low_and_high_bits_depend_on_the_last_bytes() {
        let mut low = vec![0u32; 1024];
        let mut top = std::collections::HashSet::new();
        for a in 0..100_000u32 {
            let h = hash(&format!("auction-{a:06}").into_bytes());
            low[(h & 1023) as usize] += 1;
            top.insert(h >> 57);
        }
        let worst = low.iter().copied().max().unwrap_or(0);
        assert!(
            worst < 300,
            "a bucket got {worst} of 100,000 keys (share: 98)"
        );
        assert_eq!(top.len(), 128, "every tag value is used");
    }
}
