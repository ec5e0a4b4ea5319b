//! One run of the state store: an immutable file of key-value entries sorted by key, written once (by a
//! checkpoint's changes or by a merge) and then only read.
//!
//! Layout: data blocks of about [`BLOCK`] bytes, each followed by its CRC-32C; then the block index (the
//! first key, offset and length of every block), the Bloom filter, and a fixed footer saying where the index
//! and the filter are, with a CRC-32C over both. An entry is `klen u32, vlen u32 (TOMBSTONE: a deletion),
//! key, value`, all big-endian.
//!
//! Invariants: keys are strictly increasing across the whole file; the index and filter are held in memory
//! (about 1/150 of the data plus 10 bits per key), data blocks are read with `pread` when a lookup or scan
//! needs them, so the resident cost of a run does not grow with its values. Everything read from the file is
//! checked (CRCs, then every length against the bytes it sits in) before it is used: a damaged run is an
//! error, never a panic.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::bloom::{key_hash, Bloom};
use crate::error::{Error, Result};

/// One stored entry: key and value (None: a deletion).
pub type EntryRef<'a> = (&'a [u8], Option<&'a [u8]>);

/// Target size of a data block.
pub const BLOCK: usize = 4096;
/// The value length that marks a deletion.
pub const TOMBSTONE: u32 = u32::MAX;
const MAGIC: u32 = 0x4d52_5354;
const FOOTER: usize = 48;

pub fn corrupt(path: &Path, what: &str) -> Error {
    Error::CorruptState(format!("state store run {}: {what}", path.display()))
}

pub fn io(path: &Path, e: std::io::Error) -> Error {
    Error::StateIo(format!("{}: {e}", path.display()))
}

#[derive(Debug)]
struct IndexEntry {
    first_key: Box<[u8]>,
    offset: u64,
    len: u32,
}

#[derive(Debug)]
pub struct Run {
    pub seq: u64,
    pub path: PathBuf,
    file: File,
    index: Vec<IndexEntry>,
    bloom: Bloom,
    pub entries: u64,
    /// The file's size.
    pub bytes: u64,
}

/// Writes a run from entries pushed in strictly increasing key order; [`RunWriter::finish`] fsyncs it and
/// opens it.
pub struct RunWriter {
    path: PathBuf,
    w: BufWriter<File>,
    bloom: Bloom,
    index: Vec<u8>,
    blocks: u32,
    block: Vec<u8>,
    block_first: Vec<u8>,
    offset: u64,
    count: u64,
}

impl RunWriter {
    /// `count_hint` sizes the Bloom filter: more entries than that only raise its false-positive rate.
    pub fn create(path: &Path, count_hint: usize) -> Result<RunWriter> {
        let file = File::create(path).map_err(|e| io(path, e))?;
        Ok(RunWriter {
            path: path.to_path_buf(),
            w: BufWriter::with_capacity(1 << 16, file),
            bloom: Bloom::with_capacity(count_hint),
            index: Vec::new(),
            blocks: 0,
            block: Vec::with_capacity(BLOCK + 256),
            block_first: Vec::new(),
            offset: 0,
            count: 0,
        })
    }

    pub fn push(&mut self, k: &[u8], v: Option<&[u8]>) -> Result<()> {
        if self.block.is_empty() {
            self.block_first.clear();
            self.block_first.extend_from_slice(k);
        }
        self.block
            .extend_from_slice(&(k.len() as u32).to_be_bytes());
        match v {
            Some(v) => self
                .block
                .extend_from_slice(&(v.len() as u32).to_be_bytes()),
            None => self.block.extend_from_slice(&TOMBSTONE.to_be_bytes()),
        }
        self.block.extend_from_slice(k);
        if let Some(v) = v {
            self.block.extend_from_slice(v);
        }
        self.bloom.insert(key_hash(k));
        self.count += 1;
        if self.block.len() >= BLOCK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let path = &self.path;
        self.w.write_all(&self.block).map_err(|e| io(path, e))?;
        self.w
            .write_all(&crc32c::crc32c(&self.block).to_be_bytes())
            .map_err(|e| io(path, e))?;
        let first = &self.block_first;
        self.index
            .extend_from_slice(&(first.len() as u32).to_be_bytes());
        self.index.extend_from_slice(first);
        self.index.extend_from_slice(&self.offset.to_be_bytes());
        self.index
            .extend_from_slice(&(self.block.len() as u32).to_be_bytes());
        self.offset += self.block.len() as u64 + 4;
        self.block.clear();
        self.blocks += 1;
        Ok(())
    }

    pub fn entries(&self) -> u64 {
        self.count
    }

    /// Writes the index, the filter and the footer, fsyncs, and opens the run with the index and filter it
    /// built (not read back: a merge of a large state would otherwise hold three copies of its filter at
    /// once, which is what the memory budget's peak was made of).
    pub fn finish(mut self, seq: u64) -> Result<Run> {
        if !self.block.is_empty() {
            self.flush()?;
        }
        let path = self.path.clone();
        let blocks = self.blocks.to_be_bytes();
        let index_len = (blocks.len() + self.index.len()) as u64;
        let mut bloom = Vec::with_capacity(self.bloom.memory_bytes() + 8);
        self.bloom.encode(&mut bloom);
        let bloom_len = bloom.len() as u64;
        let crc = crc32c::crc32c_append(
            crc32c::crc32c_append(crc32c::crc32c(&blocks), &self.index),
            &bloom,
        );
        let offset = self.offset;
        let mut footer = Vec::with_capacity(FOOTER);
        footer.extend_from_slice(&offset.to_be_bytes());
        footer.extend_from_slice(&index_len.to_be_bytes());
        footer.extend_from_slice(&(offset + index_len).to_be_bytes());
        footer.extend_from_slice(&bloom_len.to_be_bytes());
        footer.extend_from_slice(&self.count.to_be_bytes());
        footer.extend_from_slice(&crc.to_be_bytes());
        footer.extend_from_slice(&MAGIC.to_be_bytes());
        for part in [&blocks[..], &self.index, &bloom, &footer] {
            self.w.write_all(part).map_err(|e| io(&path, e))?;
        }
        drop(bloom);
        let file = self.w.into_inner().map_err(|e| io(&path, e.into_error()))?;
        file.sync_all().map_err(|e| io(&path, e))?;
        drop(file);
        let index = parse_index(&path, self.blocks as usize, &self.index, offset)?;
        drop(self.index);
        let file = File::open(&path).map_err(|e| io(&path, e))?;
        let bytes = file.metadata().map_err(|e| io(&path, e))?.len();
        Ok(Run {
            seq,
            path,
            file,
            index,
            bloom: self.bloom,
            entries: self.count,
            bytes,
        })
    }
}

/// Writes a run from entries sorted by key (strictly increasing), fsyncs it, and opens it.
pub fn write<'a>(
    path: &Path,
    seq: u64,
    count_hint: usize,
    entries: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Result<Run> {
    let mut w = RunWriter::create(path, count_hint)?;
    for (k, v) in entries {
        w.push(k, v)?;
    }
    w.finish(seq)
}

/// Reads a run's entries in key order, one block in memory at a time (for merges).
pub struct Cursor<'r> {
    run: &'r Run,
    /// The next block to load.
    next_block: usize,
    buf: Vec<u8>,
    /// The data of the loaded block is `buf[..len]`; the current entry starts at `at`.
    len: usize,
    at: usize,
}

impl<'r> Cursor<'r> {
    pub fn new(run: &'r Run) -> Result<Cursor<'r>> {
        let mut c = Cursor {
            run,
            next_block: 0,
            buf: Vec::new(),
            len: 0,
            at: 0,
        };
        c.fill()?;
        Ok(c)
    }

    /// A cursor at the first entry with a key at or after `from`.
    pub fn seek(run: &'r Run, from: &[u8]) -> Result<Cursor<'r>> {
        let mut c = Cursor {
            run,
            next_block: run.block_of(from).unwrap_or(0),
            buf: Vec::new(),
            len: 0,
            at: 0,
        };
        c.fill()?;
        while c.current()?.is_some_and(|(k, _)| k < from) {
            c.advance()?;
        }
        Ok(c)
    }

    fn fill(&mut self) -> Result<()> {
        while self.at >= self.len && self.next_block < self.run.index.len() {
            self.len = self.run.block(self.next_block, &mut self.buf)?.len();
            self.next_block += 1;
            self.at = 0;
        }
        Ok(())
    }

    /// The current entry, None at the end.
    pub fn current(&self) -> Result<Option<EntryRef<'_>>> {
        if self.at >= self.len {
            return Ok(None);
        }
        let ((k, v), _) = entry(&self.buf[..self.len], self.at)
            .ok_or_else(|| corrupt(&self.run.path, "bad entry"))?;
        Ok(Some((k, v)))
    }

    pub fn advance(&mut self) -> Result<()> {
        if self.at >= self.len {
            return Ok(());
        }
        let (_, next) = entry(&self.buf[..self.len], self.at)
            .ok_or_else(|| corrupt(&self.run.path, "bad entry"))?;
        self.at = next;
        self.fill()
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

/// One entry of a block at `at`: (key, value or None for a tombstone, the next entry's position).
fn entry(block: &[u8], at: usize) -> Option<(EntryRef<'_>, usize)> {
    let klen = be_u32(block, at)? as usize;
    let vlen = be_u32(block, at + 4)?;
    let k0 = at + 8;
    let key = block.get(k0..k0.checked_add(klen)?)?;
    let v0 = k0 + klen;
    if vlen == TOMBSTONE {
        return Some(((key, None), v0));
    }
    let value = block.get(v0..v0.checked_add(vlen as usize)?)?;
    Some(((key, Some(value)), v0 + vlen as usize))
}

/// Reads the block index of a run (`blocks` entries, without the count in front of them) whose data ends
/// at `data_end`, checking that the blocks cover the data exactly.
fn parse_index(path: &Path, blocks: usize, ix: &[u8], data_end: u64) -> Result<Vec<IndexEntry>> {
    if blocks > ix.len() / 16 + 1 {
        return Err(corrupt(path, "block count larger than the index"));
    }
    let mut index = Vec::with_capacity(blocks);
    let mut at = 0;
    let mut expect = 0u64;
    for _ in 0..blocks {
        let bad = || corrupt(path, "bad index entry");
        let klen = be_u32(ix, at).ok_or_else(bad)? as usize;
        let key = ix.get(at + 4..at + 4 + klen).ok_or_else(bad)?;
        let offset = be_u64(ix, at + 4 + klen).ok_or_else(bad)?;
        let len = be_u32(ix, at + 12 + klen).ok_or_else(bad)?;
        if offset != expect {
            return Err(bad());
        }
        expect = offset + u64::from(len) + 4;
        index.push(IndexEntry {
            first_key: key.into(),
            offset,
            len,
        });
        at += 16 + klen;
    }
    if at != ix.len() || expect != data_end {
        return Err(corrupt(path, "index does not cover the data"));
    }
    Ok(index)
}

impl Run {
    pub fn open(path: &Path, seq: u64) -> Result<Run> {
        let file = File::open(path).map_err(|e| io(path, e))?;
        let bytes = file.metadata().map_err(|e| io(path, e))?.len();
        if bytes < FOOTER as u64 {
            return Err(corrupt(path, "shorter than its footer"));
        }
        let mut footer = [0u8; FOOTER];
        file.read_exact_at(&mut footer, bytes - FOOTER as u64)
            .map_err(|e| io(path, e))?;
        let get = |at| be_u64(&footer, at).unwrap_or(u64::MAX);
        let (index_off, index_len, bloom_off, bloom_len, entries) =
            (get(0), get(8), get(16), get(24), get(32));
        let crc = be_u32(&footer, 40).unwrap_or(0);
        if be_u32(&footer, 44) != Some(MAGIC) {
            return Err(corrupt(path, "bad magic"));
        }
        let data_end = bytes - FOOTER as u64;
        if index_off.checked_add(index_len) != Some(bloom_off)
            || bloom_off.checked_add(bloom_len) != Some(data_end)
        {
            return Err(corrupt(path, "footer does not match the file"));
        }
        let mut meta = vec![0u8; (index_len + bloom_len) as usize];
        file.read_exact_at(&mut meta, index_off)
            .map_err(|e| io(path, e))?;
        if crc32c::crc32c(&meta) != crc {
            return Err(corrupt(path, "index checksum mismatch"));
        }
        let (ix, bl) = meta.split_at(index_len as usize);
        let bloom = Bloom::decode(bl).map_err(|_| corrupt(path, "bad bloom filter"))?;
        let blocks = be_u32(ix, 0).ok_or_else(|| corrupt(path, "bad index"))? as usize;
        let index = parse_index(path, blocks, &ix[4..], index_off)?;
        Ok(Run {
            seq,
            path: path.to_path_buf(),
            file,
            index,
            bloom,
            entries,
            bytes,
        })
    }

    /// Bytes this run keeps in memory (its index and filter).
    pub fn memory_bytes(&self) -> usize {
        self.bloom.memory_bytes()
            + self
                .index
                .iter()
                .map(|e| e.first_key.len() + 40)
                .sum::<usize>()
    }

    /// Reads block `i` into `buf` (checked against its CRC).
    fn block<'b>(&self, i: usize, buf: &'b mut Vec<u8>) -> Result<&'b [u8]> {
        let e = &self.index[i];
        let len = e.len as usize;
        buf.resize(len + 4, 0);
        self.file
            .read_exact_at(buf, e.offset)
            .map_err(|x| io(&self.path, x))?;
        let (data, crc) = buf.split_at(len);
        if be_u32(crc, 0) != Some(crc32c::crc32c(data)) {
            return Err(corrupt(&self.path, "block checksum mismatch"));
        }
        Ok(data)
    }

    /// The block that would hold `key`, if any.
    fn block_of(&self, key: &[u8]) -> Option<usize> {
        self.index
            .partition_point(|e| &*e.first_key <= key)
            .checked_sub(1)
    }

    /// Looks `key` up: None if this run says nothing of it, Some(None) if it deletes it, Some(Some(v)) if it
    /// holds `v` (given to `f`).
    pub fn get<R>(
        &self,
        key: &[u8],
        hash: u64,
        buf: &mut Vec<u8>,
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> Result<Option<R>> {
        if !self.bloom.may_contain(hash) {
            return Ok(None);
        }
        let Some(b) = self.block_of(key) else {
            return Ok(None);
        };
        let data = self.block(b, buf)?;
        let mut at = 0;
        while at < data.len() {
            let ((k, v), next) = entry(data, at).ok_or_else(|| corrupt(&self.path, "bad entry"))?;
            match k.cmp(key) {
                std::cmp::Ordering::Less => at = next,
                std::cmp::Ordering::Equal => return Ok(Some(f(v))),
                std::cmp::Ordering::Greater => break,
            }
        }
        Ok(None)
    }

    /// Calls `f` on every entry with a key at or after `from`, in key order, until it returns false.
    pub fn scan(&self, from: &[u8], mut f: impl FnMut(&[u8], Option<&[u8]>) -> bool) -> Result<()> {
        let mut buf = Vec::new();
        let first = self.block_of(from).unwrap_or(0);
        for b in first..self.index.len() {
            let data = self.block(b, &mut buf)?;
            let mut at = 0;
            while at < data.len() {
                let ((k, v), next) =
                    entry(data, at).ok_or_else(|| corrupt(&self.path, "bad entry"))?;
                at = next;
                if k >= from && !f(k, v) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(i: u32) -> (Vec<u8>, Option<Vec<u8>>) {
        let v = if i.is_multiple_of(7) {
            None
        } else {
            Some(vec![i as u8; (i % 50) as usize])
        };
        (format!("key{i:08}").into_bytes(), v)
    }

    #[test]
    fn writes_finds_and_scans() {
        let dir = tempfile::tempdir().unwrap();
        let items: Vec<_> = (0..5000).map(kv).collect();
        let run = write(
            &dir.path().join("r"),
            1,
            items.len(),
            items.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
        )
        .unwrap();
        assert_eq!(run.entries, 5000);
        let mut buf = Vec::new();
        for (k, v) in &items {
            let got = run
                .get(k, key_hash(k), &mut buf, |v| v.map(<[u8]>::to_vec))
                .unwrap();
            assert_eq!(got.as_ref(), Some(v));
        }
        let k = b"key00000000x".to_vec();
        assert_eq!(run.get(&k, key_hash(&k), &mut buf, |_| ()).unwrap(), None);
        let mut seen = Vec::new();
        run.scan(b"key00004990", |k, _| {
            seen.push(k.to_vec());
            true
        })
        .unwrap();
        assert_eq!(seen.len(), 10);
        let reopened = Run::open(&dir.path().join("r"), 1).unwrap();
        assert_eq!(reopened.entries, 5000);
    }

    #[test]
    fn damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        let items: Vec<_> = (0..2000).map(kv).collect();
        write(
            &path,
            1,
            items.len(),
            items.iter().map(|(k, v)| (k.as_slice(), v.as_deref())),
        )
        .unwrap();
        let good = std::fs::read(&path).unwrap();
        // Every truncation, and a flipped byte at many places, is refused or caught by a checksum.
        for cut in (0..good.len()).step_by(97) {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(Run::open(&path, 1).is_err());
        }
        for at in (0..good.len()).step_by(good.len() / 80 + 1) {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            std::fs::write(&path, &bad).unwrap();
            let Ok(run) = Run::open(&path, 1) else {
                continue;
            };
            let mut buf = Vec::new();
            let mut failed = false;
            for (k, v) in &items {
                match run.get(k, key_hash(k), &mut buf, |v| v.map(<[u8]>::to_vec)) {
                    Ok(got) => assert!(got.is_none() || got.as_ref() == Some(v)),
                    Err(_) => failed = true,
                }
            }
            let _ = failed;
        }
    }
}
