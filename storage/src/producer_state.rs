//! Idempotent-producer state of one partition: per producer id, its epoch and its last five batches, so that a
//! retried batch is recognised and answered with its original offsets.
//!
//! Rules, as Kafka 3.x/4.x's `ProducerStateManager` applies them to client appends:
//! - an epoch older than the known one is fenced (InvalidProducerEpoch);
//! - a batch equal (same epoch, first and last sequence) to one of the last five is a duplicate: nothing is
//!   written and the original offsets are returned;
//! - a newer epoch must start at sequence 0 (OutOfOrderSequence otherwise);
//! - within an epoch a batch must continue the sequence exactly; sequences wrap from i32::MAX to 0;
//! - a producer id we hold no state for is accepted at any sequence. Kafka has done this since 2.x (KIP-360):
//!   a producer's state legitimately disappears when retention or DeleteRecords removes its last batches, and
//!   the client then simply continues; UNKNOWN_PRODUCER_ID is no longer returned for it.
//!
//! State is rebuilt on open from the newest snapshot at or below the log end plus the batch headers after it
//! (see `Log::open`), and producers idle for longer than [`PRODUCER_ID_EXPIRATION_MS`] are forgotten, as Kafka
//! does with `producer.id.expiration.ms`. Batches of non-idempotent producers (producer id -1) are not tracked.

use std::collections::HashMap;

use millrace_protocol::records::BatchHeader;

use crate::error::{Error, Result};

/// How many recent batches per producer are remembered for duplicate detection (Kafka's value, and the most
/// in-flight requests an idempotent client may have).
pub const REMEMBERED_BATCHES: usize = 5;

/// Kafka's default `producer.id.expiration.ms` (one day): a producer with no batch newer than this is forgotten.
pub const PRODUCER_ID_EXPIRATION_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct BatchMeta {
    first_seq: i32,
    last_seq: i32,
    first_offset: i64,
    last_offset: i64,
}

/// One producer's state. `Copy` (a fixed ring of five), so checking a multi-batch append on a scratch copy costs
/// no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Producer {
    epoch: i16,
    /// The max timestamp of its newest batch (what expiry compares against, as in Kafka).
    last_timestamp: i64,
    /// Oldest first; only `batches[..len]` are meaningful.
    batches: [BatchMeta; REMEMBERED_BATCHES],
    len: u8,
}

impl Producer {
    fn new(epoch: i16) -> Self {
        Producer {
            epoch,
            last_timestamp: -1,
            batches: [BatchMeta::default(); REMEMBERED_BATCHES],
            len: 0,
        }
    }

    fn batches(&self) -> &[BatchMeta] {
        &self.batches[..self.len as usize]
    }

    fn push(&mut self, b: BatchMeta) {
        if self.len as usize == REMEMBERED_BATCHES {
            self.batches.copy_within(1.., 0);
            self.batches[REMEMBERED_BATCHES - 1] = b;
        } else {
            self.batches[self.len as usize] = b;
            self.len += 1;
        }
    }

    /// Applies a batch known to be acceptable (or read back from the log, where no check applies).
    fn apply(&mut self, h: &BatchHeader, first_offset: i64, last_offset: i64) {
        if h.producer_epoch != self.epoch {
            self.epoch = h.producer_epoch;
            self.len = 0;
        }
        self.last_timestamp = self.last_timestamp.max(h.max_timestamp);
        // Control batches (transaction markers) carry no sequence: they move the epoch only.
        if h.base_sequence >= 0 {
            self.push(BatchMeta {
                first_seq: h.base_sequence,
                last_seq: h.last_sequence(),
                first_offset,
                last_offset,
            });
        }
    }
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Append,
    /// Already in the log at these offsets.
    Duplicate {
        first_offset: i64,
        last_offset: i64,
    },
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// Checks one batch against a producer's state (`None`: unknown producer).
fn check(p: Option<&Producer>, h: &BatchHeader) -> Result<Check> {
    if !h.has_producer_id() || h.base_sequence < 0 {
        return Ok(Check::Append);
    }
    let Some(p) = p else {
        return Ok(Check::Append);
    };
    if h.producer_epoch < p.epoch {
        return Err(Error::InvalidProducerEpoch {
            producer_id: h.producer_id,
            epoch: h.producer_epoch,
            current: p.epoch,
        });
    }
    if h.producer_epoch > p.epoch {
        if h.base_sequence != 0 {
            return Err(Error::OutOfOrderSequence {
                producer_id: h.producer_id,
                expected: 0,
                got: h.base_sequence,
            });
        }
        return Ok(Check::Append);
    }
    let last_seq = h.last_sequence();
    if let Some(b) = p
        .batches()
        .iter()
        .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq)
    {
        return Ok(Check::Duplicate {
            first_offset: b.first_offset,
            last_offset: b.last_offset,
        });
    }
    // An epoch with no batch yet (it only saw a transaction marker) starts at 0, as in Kafka.
    let expected = p.batches().last().map_or(0, |b| next_seq(b.last_seq));
    if h.base_sequence != expected {
        return Err(Error::OutOfOrderSequence {
            producer_id: h.producer_id,
            expected,
            got: h.base_sequence,
        });
    }
    Ok(Check::Append)
}

/// The state of every producer of one partition. Not thread-safe by itself: the log's lock guards it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
}

/// The producer-state changes of one append, checked batch by batch and applied only once the batches are written,
/// so that a failed append (an error in its third batch, or an I/O error) leaves the state untouched.
#[derive(Debug, Default)]
pub struct PendingAppend {
    changes: Vec<(i64, Producer)>,
}

impl PendingAppend {
    /// Checks `h` as if every batch already in this append had been written, and records it if it is to be
    /// appended at `[first_offset, last_offset]`.
    pub fn check_and_stage(
        &mut self,
        states: &ProducerStates,
        h: &BatchHeader,
        first_offset: i64,
        last_offset: i64,
    ) -> Result<Check> {
        if !h.has_producer_id() {
            return Ok(Check::Append);
        }
        let staged = self.changes.iter().position(|(id, _)| *id == h.producer_id);
        let current = match staged {
            Some(i) => Some(self.changes[i].1),
            None => states.producers.get(&h.producer_id).copied(),
        };
        let verdict = check(current.as_ref(), h)?;
        if verdict == Check::Append {
            let mut p = current.unwrap_or_else(|| Producer::new(h.producer_epoch));
            p.apply(h, first_offset, last_offset);
            match staged {
                Some(i) => self.changes[i].1 = p,
                None => self.changes.push((h.producer_id, p)),
            }
        }
        Ok(verdict)
    }
}

impl ProducerStates {
    /// Checks one batch without changing anything.
    pub fn check(&self, h: &BatchHeader) -> Result<Check> {
        check(self.producers.get(&h.producer_id), h)
    }

    /// Applies the changes of an append that was written.
    pub fn commit(&mut self, pending: PendingAppend) {
        self.producers.extend(pending.changes);
    }

    /// Records a batch read back from the log (rebuilding the state on open): no checks, the log is the truth.
    pub fn update(&mut self, h: &BatchHeader, first_offset: i64, last_offset: i64) {
        if !h.has_producer_id() {
            return;
        }
        self.producers
            .entry(h.producer_id)
            .or_insert_with(|| Producer::new(h.producer_epoch))
            .apply(h, first_offset, last_offset);
    }

    /// Forgets producers whose newest batch is older than `expiration_ms`; returns how many.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, p| now_ms.saturating_sub(p.last_timestamp) < expiration_ms);
        before - self.producers.len()
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The snapshot file format, all big-endian: magic `MPS1`; the producer count (u32); per producer, in id
    /// order: id (i64), epoch (i16), last timestamp (i64), batch count (u8), then per batch (oldest first) first and
    /// last sequence (i32) and first and last offset (i64); finally a CRC-32 (IEEE) of everything before it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(12 + self.producers.len() * (19 + 24 * REMEMBERED_BATCHES));
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        for id in ids {
            let p = &self.producers[id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&p.epoch.to_be_bytes());
            out.extend_from_slice(&p.last_timestamp.to_be_bytes());
            out.push(p.len);
            for b in p.batches() {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.first_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Reads a snapshot; `None` if it is truncated, corrupt, of another version or malformed (the caller then
    /// rebuilds from an older snapshot or the log).
    pub fn from_bytes(data: &[u8]) -> Option<ProducerStates> {
        let (body, crc) = data.split_at_checked(data.len().checked_sub(4)?)?;
        if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut r = Reader(body);
        if r.take(4)? != SNAPSHOT_MAGIC {
            return None;
        }
        let count = r.u32()?;
        let mut states = ProducerStates::default();
        for _ in 0..count {
            let id = r.i64()?;
            let mut p = Producer::new(r.i16()?);
            p.last_timestamp = r.i64()?;
            let n = r.take(1)?[0] as usize;
            if n > REMEMBERED_BATCHES {
                return None;
            }
            for _ in 0..n {
                p.push(BatchMeta {
                    first_seq: r.i32()?,
                    last_seq: r.i32()?,
                    first_offset: r.i64()?,
                    last_offset: r.i64()?,
                });
            }
            states.producers.insert(id, p);
        }
        r.0.is_empty().then_some(states)
    }
}

const SNAPSHOT_MAGIC: &[u8; 4] = b"MPS1";

/// A cursor over snapshot bytes; every read is checked (a snapshot comes from disk).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(pid: i64, epoch: i16, seq: i32, n: i32) -> BatchHeader {
        BatchHeader {
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            last_offset_delta: n - 1,
            records_count: n,
            magic: 2,
            max_timestamp: 1_000,
            ..Default::default()
        }
    }

    #[test]
    fn sequences_duplicates_and_fencing() {
        let mut s = ProducerStates::default();
        let b0 = batch(7, 0, 0, 3);
        assert_eq!(s.check(&b0).unwrap(), Check::Append);
        s.update(&b0, 10, 12);
        assert_eq!(
            s.check(&b0).unwrap(),
            Check::Duplicate {
                first_offset: 10,
                last_offset: 12
            }
        );
        assert!(matches!(
            s.check(&batch(7, 0, 5, 1)),
            Err(Error::OutOfOrderSequence { expected: 3, .. })
        ));
        let b1 = batch(7, 0, 3, 1);
        assert_eq!(s.check(&b1).unwrap(), Check::Append);
        s.update(&b1, 13, 13);
        // A newer epoch must restart at 0; an older one is fenced.
        assert!(s.check(&batch(7, 1, 4, 1)).is_err());
        let e1 = batch(7, 1, 0, 1);
        assert_eq!(s.check(&e1).unwrap(), Check::Append);
        s.update(&e1, 14, 14);
        assert!(matches!(
            s.check(&batch(7, 0, 4, 1)),
            Err(Error::InvalidProducerEpoch { .. })
        ));
        // Unknown producers are accepted at any sequence.
        assert_eq!(s.check(&batch(8, 0, 42, 1)).unwrap(), Check::Append);
        // Non-idempotent batches are never checked.
        assert_eq!(s.check(&batch(-1, -1, -1, 1)).unwrap(), Check::Append);
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut s = ProducerStates::default();
        let last = batch(3, 0, i32::MAX - 1, 2);
        s.update(&last, 0, 1);
        assert_eq!(s.check(&batch(3, 0, 0, 1)).unwrap(), Check::Append);
        assert!(s.check(&batch(3, 0, 1, 1)).is_err());
    }

    #[test]
    fn a_multi_batch_append_is_checked_in_order_and_staged_until_commit() {
        let mut s = ProducerStates::default();
        s.update(&batch(1, 0, 0, 2), 0, 1);
        let mut pending = PendingAppend::default();
        assert_eq!(
            pending
                .check_and_stage(&s, &batch(1, 0, 2, 2), 2, 3)
                .unwrap(),
            Check::Append
        );
        // The second batch must follow the first one of the same append, not the stored state.
        assert!(pending
            .check_and_stage(&s, &batch(1, 0, 2, 2), 4, 5)
            .is_ok());
        assert!(pending
            .check_and_stage(&s, &batch(1, 0, 9, 1), 4, 4)
            .is_err());
        assert_eq!(
            pending
                .check_and_stage(&s, &batch(1, 0, 4, 1), 4, 4)
                .unwrap(),
            Check::Append
        );
        // Nothing changes until the append is committed.
        assert_eq!(s.check(&batch(1, 0, 2, 2)).unwrap(), Check::Append);
        s.commit(pending);
        assert_eq!(
            s.check(&batch(1, 0, 4, 1)).unwrap(),
            Check::Duplicate {
                first_offset: 4,
                last_offset: 4
            }
        );
    }

    #[test]
    fn snapshots_round_trip_and_reject_corruption() {
        let mut s = ProducerStates::default();
        for (pid, n) in [(1, 7), (9, 2)] {
            for i in 0..n {
                s.update(&batch(pid, 3, i, 1), i64::from(i), i64::from(i));
            }
        }
        let bytes = s.to_bytes();
        assert_eq!(ProducerStates::from_bytes(&bytes), Some(s.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(ProducerStates::from_bytes(&bytes[..cut]), None);
        }
        let mut bad = bytes.clone();
        bad[6] ^= 1;
        assert_eq!(ProducerStates::from_bytes(&bad), None);
        assert_eq!(
            ProducerStates::from_bytes(&ProducerStates::default().to_bytes()),
            Some(ProducerStates::default())
        );
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            let b = batch(1, 0, i, 1);
            s.update(&b, i64::from(i), i64::from(i));
        }
        assert!(matches!(
            s.check(&batch(1, 0, 6, 1)).unwrap(),
            Check::Duplicate { .. }
        ));
        assert!(matches!(
            s.check(&batch(1, 0, 2, 1)).unwrap(),
            Check::Duplicate { .. }
        ));
        assert!(
            s.check(&batch(1, 0, 1, 1)).is_err(),
            "forgotten: looks out of order"
        );
    }

    #[test]
    fn idle_producers_expire() {
        let mut s = ProducerStates::default();
        s.update(&batch(1, 0, 0, 1), 0, 0);
        let mut fresh = batch(2, 0, 0, 1);
        fresh.max_timestamp = 50_000;
        s.update(&fresh, 1, 1);
        assert_eq!(s.expire(60_000, 30_000), 1);
        assert_eq!(s.len(), 1);
        // Forgotten: its next batch is accepted at any sequence.
        assert_eq!(s.check(&batch(1, 0, 9, 1)).unwrap(), Check::Append);
    }
}
