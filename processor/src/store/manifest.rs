//! The state store's manifest: which runs make up the store, oldest first, and the checkpoint whose changes it
//! holds. It is the store's only mutable file and is replaced atomically (written beside, fsynced, renamed,
//! directory fsynced), so after a crash the store is exactly as one manifest describes it; run files it does
//! not name are leftovers of an interrupted write or merge and are deleted on open.
//!
//! Layout (big-endian): magic, format, checkpoint u64, next run number u64, run count u32, run numbers u64
//! each, CRC-32C of everything before it.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::run::{corrupt, io};
use crate::error::Result;

const MAGIC: u32 = 0x4d52_534d;
const FORMAT: u8 = 1;
pub const NAME: &str = "MANIFEST";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The checkpoint whose changes are the newest the runs hold (0: none).
    pub checkpoint: u64,
    /// The number the next run file gets.
    pub next_seq: u64,
    /// Run numbers, oldest first.
    pub runs: Vec<u64>,
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(33 + 8 * self.runs.len());
        b.extend_from_slice(&MAGIC.to_be_bytes());
        b.push(FORMAT);
        b.extend_from_slice(&self.checkpoint.to_be_bytes());
        b.extend_from_slice(&self.next_seq.to_be_bytes());
        b.extend_from_slice(&(self.runs.len() as u32).to_be_bytes());
        for r in &self.runs {
            b.extend_from_slice(&r.to_be_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    pub fn decode(path: &Path, b: &[u8]) -> Result<Manifest> {
        let bad = |what: &str| corrupt(path, what);
        if b.len() < 29 {
            return Err(bad("manifest too short"));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return Err(bad("manifest checksum mismatch"));
        }
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&body[at..at + 8]);
            u64::from_be_bytes(a)
        };
        if body[0..4] != MAGIC.to_be_bytes() || body[4] != FORMAT {
            return Err(bad("not a manifest of this format"));
        }
        let count = u32::from_be_bytes([body[21], body[22], body[23], body[24]]) as usize;
        if body.len() != 25 + 8 * count {
            return Err(bad("manifest run count does not match its length"));
        }
        Ok(Manifest {
            checkpoint: u64_at(5),
            next_seq: u64_at(13),
            runs: (0..count).map(|i| u64_at(25 + 8 * i)).collect(),
        })
    }

    /// Reads the manifest in `dir`; a missing one is an empty store.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(NAME);
        match std::fs::read(&path) {
            Ok(b) => Manifest::decode(&path, &b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Manifest::default()),
            Err(e) => Err(io(&path, e)),
        }
    }

    /// Replaces the manifest in `dir` atomically and durably.
    pub fn store(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join("MANIFEST.tmp");
        let mut f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(&self.encode()).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
        drop(f);
        let path = dir.join(NAME);
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        sync_dir(dir)
    }
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), Manifest::default());
        let m = Manifest {
            checkpoint: 7,
            next_seq: 12,
            runs: vec![3, 9, 11],
        };
        m.store(dir.path()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), m);
        let b = m.encode();
        for cut in 0..b.len() {
            assert!(Manifest::decode(dir.path(), &b[..cut]).is_err());
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Manifest::decode(Path::new("m"), &b);
        }
    }
}
