//! Appending: offsets, idempotent-producer checks, LogAppendTime, roll, and the write itself.
//!
//! An append takes the bytes of one or more whole batches (CRC-32C already validated by the caller) and either
//! writes all of them or none: the shape of every batch is checked before the lock is taken, producer checks for
//! all of them pass before a byte is written, and the segment publishes the batches only once the write has
//! succeeded. Nothing is allocated per record; the only per-append allocation is the producer-state scratch of an
//! idempotent append.

use std::os::unix::fs::FileExt;

use millrace_protocol::records::{attributes, set_base_offset, BatchHeader, BatchIter, CRC_START};

use super::sealer::SealJob;
use super::{now_ms, AppendInfo, Inner, Log};
use crate::checkpoint;
use crate::config::{LogConfig, TimestampType};
use crate::error::{Error, Result};
use crate::producer_state::{Check, PendingAppend};
use crate::segment::{active_capacity, Incoming, Segment};

/// Byte ranges of the header fields a LogAppendTime append rewrites.
const ATTRIBUTES: std::ops::Range<usize> = 21..23;
const MAX_TIMESTAMP: std::ops::Range<usize> = 35..43;
const CRC: std::ops::Range<usize> = 17..21;

/// The caller's bytes: either ours to rewrite in place (one `pwrite` for the whole append), or shared (the
/// receive buffer of a request), in which case the new base offset of each batch is written beside its body.
enum Input<'a> {
    Owned(&'a mut [u8]),
    Shared(&'a [u8]),
}

/// What the bytes of an append hold, checked before taking the lock.
struct Shape {
    len: usize,
    records: i64,
    max_timestamp: i64,
}

fn shape(buf: &[u8], max_message_bytes: u64) -> Result<Shape> {
    if buf.is_empty() {
        return Err(Error::CorruptBatch("no record batch".into()));
    }
    let mut s = Shape {
        len: buf.len(),
        records: 0,
        max_timestamp: -1,
    };
    for item in BatchIter::new(buf) {
        let (h, bytes) = item?;
        if bytes.len() as u64 > max_message_bytes {
            return Err(Error::MessageTooLarge {
                size: bytes.len(),
                max: max_message_bytes,
            });
        }
        s.records += i64::from(h.records_count.max(1));
        s.max_timestamp = s.max_timestamp.max(h.max_timestamp);
    }
    Ok(s)
}

/// The headers of the batches in `buf`, in order (already shape-checked, so nothing is skipped).
fn headers(buf: &[u8]) -> impl Iterator<Item = BatchHeader> + '_ {
    BatchIter::new(buf).map_while(Result::ok).map(|(h, _)| h)
}

impl Log {
    /// Appends one or more whole record batches (CRC-32C already validated by the caller), rewriting each batch's
    /// base offset in `batches` (and for LogAppendTime topics its max timestamp, timestamp-type bit and CRC-32C),
    /// then writing them with one `pwrite`. Idempotent-producer checks apply per batch (see
    /// [`crate::producer_state`]); a duplicate returns the original offsets with `duplicate: true` and writes
    /// nothing. Notifies [`Log::appended`].
    pub fn append(&self, batches: &mut [u8], now_ms: i64) -> Result<AppendInfo> {
        let config = self.config.read().clone();
        self.append_input(Input::Owned(batches), &config, now_ms)
    }

    /// Like [`Log::append`] for bytes the caller cannot let us modify (a request's receive buffer): each batch's
    /// body goes to the file as it is, followed by its new base offset written in front of it, so the request
    /// reaches the page cache with no intermediate copy. LogAppendTime topics (whose timestamp and CRC change)
    /// take one copy.
    pub fn append_slice(&self, batches: &[u8], now_ms: i64) -> Result<AppendInfo> {
        let config = self.config.read().clone();
        if config.message_timestamp_type == TimestampType::LogAppendTime {
            let mut copy = batches.to_vec();
            return self.append_input(Input::Owned(&mut copy), &config, now_ms);
        }
        self.append_input(Input::Shared(batches), &config, now_ms)
    }

    fn append_input(
        &self,
        mut input: Input<'_>,
        config: &LogConfig,
        now: i64,
    ) -> Result<AppendInfo> {
        self.check_live()?;
        let log_append_time = config.message_timestamp_type == TimestampType::LogAppendTime;
        let bytes: &[u8] = match &input {
            Input::Owned(b) => b,
            Input::Shared(b) => b,
        };
        let shape = shape(bytes, config.max_message_bytes)?;

        let mut inner = self.inner.write();
        self.check_live()?;
        let base = inner.next_offset;
        let mut pending = PendingAppend::default();
        let mut next = base;
        for h in headers(bytes) {
            let last = next + i64::from(h.last_offset_delta);
            let verdict = pending.check_and_stage(&inner.producers, &h, next, last)?;
            if let Check::Duplicate {
                first_offset,
                last_offset,
            } = verdict
            {
                return Ok(AppendInfo {
                    base_offset: first_offset,
                    last_offset,
                    log_append_time: -1,
                    log_start_offset: inner.log_start_offset,
                    duplicate: true,
                });
            }
            next = last + 1;
        }
        let incoming = Incoming {
            len: shape.len,
            max_timestamp: if log_append_time {
                now
            } else {
                shape.max_timestamp
            },
            last_offset: next - 1,
        };
        if inner.closed {
            // A write after close: the log is no longer cleanly closed, and must not look it after a crash.
            checkpoint::clear_clean(&self.dir)?;
            inner.closed = false;
        }
        self.maybe_roll(&mut inner, config, &incoming, now)?;
        let interval = config.index_interval_bytes;
        let active = inner.active_mut()?;
        match &mut input {
            Input::Owned(buf) => {
                rewrite_headers(buf, base, log_append_time.then_some(now));
                let buf: &[u8] = buf;
                active.append(buf.len(), headers(buf), interval, |f, at| {
                    f.write_all_at(buf, at)
                })?;
            }
            Input::Shared(buf) => {
                let mut assigned = base;
                let with_offsets = headers(buf).map(|mut h| {
                    h.base_offset = assigned;
                    assigned = h.last_offset() + 1;
                    h
                });
                active.append(buf.len(), with_offsets, interval, |f, at| {
                    write_beside(f, at, buf, base)
                })?;
            }
        }
        inner.next_offset = next;
        inner.producers.commit(pending);
        inner.unflushed_messages += shape.records;
        inner.first_unflushed_ms = inner.first_unflushed_ms.min(now);
        let flush_due = inner.unflushed_messages >= config.flush_messages
            || now.saturating_sub(inner.first_unflushed_ms) >= config.flush_ms;
        let info = AppendInfo {
            base_offset: base,
            last_offset: next - 1,
            log_append_time: if log_append_time { now } else { -1 },
            log_start_offset: inner.log_start_offset,
            duplicate: false,
        };
        drop(inner);
        self.appended.notify_waiters();
        if flush_due {
            // flush.messages / flush.ms: the fsync runs outside the lock, like every other one.
            self.flush()?;
        }
        Ok(info)
    }

    /// Rolls if the active segment should not take `incoming` (see [`Segment::should_roll`]).
    fn maybe_roll(
        &self,
        inner: &mut Inner,
        config: &LogConfig,
        incoming: &Incoming,
        now: i64,
    ) -> Result<()> {
        if !inner.active()?.should_roll(config, incoming, now) {
            return Ok(());
        }
        self.roll_locked(inner, config, active_capacity(config, incoming.len), now)
    }

    /// Seals the active segment and starts a new one at the log end, able to grow to `capacity`. An empty active
    /// segment (too small for what comes) is replaced rather than sealed. The fsync of the sealed segment, then
    /// the producer snapshot and the recovery checkpoint at the new base, are left to the background sealer, so
    /// a roll never stalls appends for the seconds a full segment takes to write back.
    pub(super) fn roll_locked(
        &self,
        inner: &mut Inner,
        config: &LogConfig,
        capacity: usize,
        now: i64,
    ) -> Result<()> {
        let next = inner.next_offset;
        let active = inner.active_mut()?;
        let sealed = if active.is_empty() {
            let base = active.base_offset();
            if let Some(old) = inner.segments.remove(&base) {
                old.delete();
            }
            None
        } else {
            Some(active.finish()?)
        };
        let seg = Segment::create(&self.dir, next, capacity, config, now)?;
        inner.segments.insert(next, seg);
        if let Some(files) = sealed {
            self.sealer.submit(SealJob {
                files,
                snapshot: inner.producers.to_bytes(),
                next,
                generation: self.sealer.generation(),
            });
        }
        tracing::debug!(topic = %self.topic, partition = self.partition, base = next, "rolled");
        Ok(())
    }

    /// Starts a new active segment now (if the current one holds anything).
    pub fn roll(&self) -> Result<()> {
        self.check_live()?;
        let config = self.config.read().clone();
        let mut inner = self.inner.write();
        if inner.active()?.is_empty() {
            return Ok(());
        }
        if inner.closed {
            checkpoint::clear_clean(&self.dir)?;
            inner.closed = false;
        }
        self.roll_locked(&mut inner, &config, active_capacity(&config, 0), now_ms())
    }
}

/// Assigns consecutive offsets from `base` to the batches in `buf`, and for LogAppendTime stamps each with the
/// broker's time (which changes bytes the CRC covers, so the CRC is recomputed: only in that case).
fn rewrite_headers(buf: &mut [u8], base: i64, log_append_time: Option<i64>) {
    let mut pos = 0;
    let mut next = base;
    while pos < buf.len() {
        let Ok(h) = BatchHeader::parse(&buf[pos..]) else {
            return; // unreachable: the shape was checked
        };
        let batch = &mut buf[pos..pos + h.total_len()];
        set_base_offset(batch, next);
        if let Some(now) = log_append_time {
            let attrs = h.attributes | attributes::TIMESTAMP_LOG_APPEND;
            batch[ATTRIBUTES].copy_from_slice(&attrs.to_be_bytes());
            batch[MAX_TIMESTAMP].copy_from_slice(&now.to_be_bytes());
            let crc = crc32c::crc32c(&batch[CRC_START..]);
            batch[CRC].copy_from_slice(&crc.to_be_bytes());
        }
        next += i64::from(h.last_offset_delta) + 1;
        pos += h.total_len();
    }
}

/// Writes the batches of `buf` at `at` without modifying `buf`: each batch's bytes after its base offset, then
/// its new base offset in front. A crash in between leaves a batch whose base offset is not its own (zeros from
/// preallocation), which recovery rejects because offsets must increase.
fn write_beside(f: &std::fs::File, at: u64, buf: &[u8], base: i64) -> std::io::Result<()> {
    let mut pos = 0;
    let mut next = base;
    for h in headers(buf) {
        let len = h.total_len();
        let p = at + pos as u64;
        f.write_all_at(&buf[pos + 8..pos + len], p + 8)?;
        f.write_all_at(&next.to_be_bytes(), p)?;
        next += i64::from(h.last_offset_delta) + 1;
        pos += len;
    }
    Ok(())
}
