//! Idempotent-producer state of one partition: per producer id, its epoch and its last five batches, so that a
//! retried batch is recognised and answered with its original offsets.
//!
//! Rules, as Kafka's ProducerStateManager applies them: an epoch older than the known one is fenced
//! (InvalidProducerEpoch); a newer epoch must start at sequence 0; within an epoch a batch must continue the
//! sequence exactly (sequences wrap from i32::MAX to 0). A producer id we have no state for is accepted at any
//! sequence, as Kafka does since KIP-360, because its state may have expired with old segments.

use std::collections::{HashMap, VecDeque};

use millrace_protocol::records::BatchHeader;

use crate::error::{Error, Result};

/// How many recent batches per producer are remembered for duplicate detection (Kafka's value).
pub const REMEMBERED_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchMeta {
    first_seq: i32,
    last_seq: i32,
    first_offset: i64,
    last_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Producer {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
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

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerStates {
    producers: HashMap<i64, Producer>,
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl ProducerStates {
    pub fn check(&self, h: &BatchHeader) -> Result<Check> {
        if !h.has_producer_id() || h.base_sequence < 0 {
            return Ok(Check::Append);
        }
        let Some(p) = self.producers.get(&h.producer_id) else {
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
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq)
        {
            return Ok(Check::Duplicate {
                first_offset: b.first_offset,
                last_offset: b.last_offset,
            });
        }
        let expected = p
            .batches
            .back()
            .map_or(h.base_sequence, |b| next_seq(b.last_seq));
        if h.base_sequence != expected {
            return Err(Error::OutOfOrderSequence {
                producer_id: h.producer_id,
                expected,
                got: h.base_sequence,
            });
        }
        Ok(Check::Append)
    }

    /// Records an appended batch (also used to rebuild the state from the log on open).
    pub fn update(&mut self, h: &BatchHeader, first_offset: i64, last_offset: i64) {
        if !h.has_producer_id() {
            return;
        }
        let p = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| Producer {
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
            });
        if h.producer_epoch != p.epoch {
            p.epoch = h.producer_epoch;
            p.batches.clear();
        }
        if h.base_sequence < 0 {
            return;
        }
        if p.batches.len() == REMEMBERED_BATCHES {
            p.batches.pop_front();
        }
        p.batches.push_back(BatchMeta {
            first_seq: h.base_sequence,
            last_seq: h.last_sequence(),
            first_offset,
            last_offset,
        });
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// The snapshot file format: the producer count (u32), then for each producer, id (i64), epoch (i16), batch count (u8), then per batch
    /// first/last sequence (i32) and first/last offset (i64); all big-endian; then a CRC-32 (IEEE) of the rest.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.producers.len() * 64);
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
        for id in ids {
            let p = &self.producers[id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&p.epoch.to_be_bytes());
            out.push(p.batches.len() as u8);
            for b in &p.batches {
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

    /// Reads a snapshot; `None` if it is truncated, corrupt or malformed (the caller then rebuilds from the log).
    pub fn from_bytes(data: &[u8]) -> Option<ProducerStates> {
        let (body, crc) = data.split_at_checked(data.len().checked_sub(4)?)?;
        if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut states = ProducerStates::default();
        let mut r = body;
        fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, tail) = r.split_at_checked(n)?;
            *r = tail;
            Some(head)
        }
        let i64_of = |b: &[u8]| b.try_into().ok().map(i64::from_be_bytes);
        let i32_of = |b: &[u8]| b.try_into().ok().map(i32::from_be_bytes);
        let count = u32::from_be_bytes(take(&mut r, 4)?.try_into().ok()?);
        for _ in 0..count {
            let id = i64_of(take(&mut r, 8)?)?;
            let epoch = i16::from_be_bytes(take(&mut r, 2)?.try_into().ok()?);
            let n = take(&mut r, 1)?[0] as usize;
            if n > REMEMBERED_BATCHES {
                return None;
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                batches.push_back(BatchMeta {
                    first_seq: i32_of(take(&mut r, 4)?)?,
                    last_seq: i32_of(take(&mut r, 4)?)?,
                    first_offset: i64_of(take(&mut r, 8)?)?,
                    last_offset: i64_of(take(&mut r, 8)?)?,
                });
            }
            states.producers.insert(id, Producer { epoch, batches });
        }
        r.is_empty().then_some(states)
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
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
        bad[3] ^= 1;
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
}
