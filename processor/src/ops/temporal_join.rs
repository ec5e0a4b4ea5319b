//! The event-time temporal join (Flink's `FOR SYSTEM_TIME AS OF`): a stream of probes (left) against a
//! versioned table (right, a changelog in which `None` is a tombstone), per key.
//!
//! A probe `(k, l)` with event time `t` joins the table row of `k` *as of* `t`: the version with the largest
//! version timestamp `<= t`, where a tombstone as that version means no row. Equal version timestamps of one
//! key: the later-arriving version replaces the earlier one.
//!
//! Watermark convention (the runtime's: after `on_watermark(w)` elements with event time `>= w` may still
//! come, none earlier): a probe at `t` is complete once every table version `<= t` has arrived, that is once
//! the table input's own watermark passes it (`t < table_wm`, from `on_input_watermark` of port 1), and at
//! the latest once the combined watermark does (`t < w`; it may pass first when the table's source is idle).
//! So:
//! - a probe that is complete when it arrives (the table is ahead of the probes, as it is when it was loaded
//!   first or moves on steadily) is joined at once, while its bytes are still in cache; the others are
//!   buffered until they are complete, then emitted in event-time order (equal times in arrival order). The
//!   output has timestamp `t`: `f(k, l, Some(row))` when there is a row, and for a probe without one
//!   `f(k, l, None)` with [`JoinKind::Left`], nothing with [`JoinKind::Inner`]. Which row a probe gets does
//!   not depend on when it is emitted; only the order of outputs of different probes can;
//! - a probe that arrives already behind the watermark (`t < w`) is joined at once against the versions
//!   still held (so it may miss a version pruned since) and counted in `late_records`;
//! - the final watermark `i64::MAX` means the end of the input: it emits every buffered probe.
//!
//! Invariants:
//! - `watermark` and `table_wm` only grow; every buffered probe has `t >= watermark` and `t >= table_wm`
//!   (or the watermark is `i64::MAX`, after which nothing is buffered);
//! - per key, `versions` holds every version newer than the watermark plus the newest one at or before it,
//!   which is all that a probe at `t >= watermark` can need. Older versions are pruned when the watermark
//!   moves; a key whose only remaining version is a tombstone at or before the watermark is dropped (a
//!   probe would find no row either way). Table rows that arrive late are still inserted;
//! - `prune_at` lists the timestamp and key of every version of a key that may need pruning, that is of
//!   every key with more than one version or with a tombstone (and may hold stale entries for versions
//!   replaced or pruned since): such a key can need pruning only once one of its versions is at or before
//!   the watermark, so keys are visited when the watermark passes their versions, not all keys every time.
//!   A key with one live version (most of a slowly changing table) needs none and is not listed.
//!
//! The versions are [`KeyedState`]: checkpoints write the keys whose versions changed, and on the disk
//! backend the table may be larger than memory. The waiting probes are a [`ChangeLog`] in the same store
//! (one entry per probe, under its arrival number `seq`): a checkpoint writes the probes that arrived since
//! the last one and still wait, and deletes the stored ones joined since; a probe that waits less than a
//! checkpoint interval is never written. (Probes can wait long: while the table's source is idle they wait
//! for the combined watermark, out-of-orderness included.) `prune_at` is derived from the versions (rebuilt
//! at a restore, never written) and is a [`TimeIndex`], which spills on the disk backend over the memory
//! budget. The snapshot holds the watermark and counters, and without a backend the probes too. Invariants
//! of a bound join: every waiting probe with `seq < stored_below` is in the store; the others are listed
//! in `added`.

use std::collections::VecDeque;

use smallvec::SmallVec;
use std::sync::Arc;

use crate::change_log::ChangeLog;
use crate::error::{Error, Result};
use crate::join::{Either, JoinKind};
use crate::keyed_state::KeyedState;
use crate::metrics::OperatorMetrics;
use crate::operator::{Collector, Operator, TaskInfo};
use crate::state::{Key, StateCodec, StateReader, StateWriter};
use crate::time_index::TimeIndex;

/// Builds the output of one probe from its key, its value and the table row as of its time.
pub type TemporalJoinFn<K, L, V, O> = Arc<dyn Fn(&K, L, Option<&V>) -> O + Send + Sync>;

/// Version 4 no longer writes the pruning index (it is derived from the versions); version 3 logs the probes
/// to the store when bound; version 2 kept them in the snapshot, with the versions in keyed state; version 1
/// had everything in the snapshot. All four are read.
const STATE_VERSION: u8 = 4;

/// One key's table versions, (version timestamp, row) sorted by timestamp with no timestamp twice (`None`:
/// deleted). Nearly every key of a slowly changing table holds one version, which is kept inline: a lookup
/// reads it from the state map's own slot, with no pointer to chase and no allocation (a B-tree node per key
/// took 456 bytes and a cache miss per probe).
#[derive(Debug, Clone, PartialEq)]
pub struct Versions<V>(SmallVec<[(i64, Option<V>); 1]>);

impl<V> Default for Versions<V> {
    fn default() -> Self {
        Versions(SmallVec::new())
    }
}

impl<V> Versions<V> {
    /// Sets the row of version `ts`; true if it is a new version (false: it replaced one).
    pub fn insert(&mut self, ts: i64, row: Option<V>) -> bool {
        let at = self.0.partition_point(|v| v.0 < ts);
        match self.0.get_mut(at) {
            Some(v) if v.0 == ts => {
                v.1 = row;
                false
            }
            _ => {
                self.0.insert(at, (ts, row));
                true
            }
        }
    }

    /// The newest version at or before `t`.
    pub fn as_of(&self, t: i64) -> Option<&(i64, Option<V>)> {
        let at = self.0.partition_point(|v| v.0 <= t);
        at.checked_sub(1).and_then(|i| self.0.get(i))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The version timestamps, oldest first.
    pub fn timestamps(&self) -> impl Iterator<Item = i64> + '_ {
        self.0.iter().map(|v| v.0)
    }

    /// Drops every version before `floor`, and the one at `floor` too if it is a tombstone; returns how many
    /// it dropped.
    fn drop_before(&mut self, floor: i64) -> u64 {
        let mut n = self.0.partition_point(|v| v.0 < floor);
        if self.0.get(n).is_some_and(|v| v.0 == floor && v.1.is_none()) {
            n += 1;
        }
        self.0.drain(..n);
        n as u64
    }
}

impl<V: StateCodec> StateCodec for Versions<V> {
    fn encode(&self, w: &mut StateWriter) {
        w.u32(self.0.len() as u32);
        for (ts, row) in &self.0 {
            w.i64(*ts);
            row.encode(w);
        }
    }
    fn decode(r: &mut StateReader<'_>) -> Result<Self> {
        let mut m = Versions::default();
        // A version takes its timestamp and option tag (9 bytes).
        for _ in 0..r.count(9)? {
            let ts = r.i64()?;
            if !m.insert(ts, Option::<V>::decode(r)?) {
                return Err(Error::CorruptState(
                    "temporal join: a version timestamp twice".into(),
                ));
            }
        }
        Ok(m)
    }
}

pub struct TemporalJoin<K, L, V, O> {
    kind: JoinKind,
    f: TemporalJoinFn<K, L, V, O>,
    watermark: i64,
    /// The table input's own watermark (not saved: the runtime gives it again after a restore).
    table_wm: i64,
    /// Per key, its versions.
    versions: KeyedState<K, Versions<V>>,
    /// Buffered probes in event-time order, ties in arrival order. Probes mostly arrive in time order, so
    /// this is a queue with an in-order fast path (push at the back), not a tree: no allocation per probe.
    probes: VecDeque<(i64, u64, K, L)>,
    /// The arrival number of the next probe: (time, seq) orders `probes` and names a probe in the store.
    seq: u64,
    log: ChangeLog,
    /// Probes to write at the next checkpoint, as (time, seq) (stale once joined).
    added: Vec<(i64, u64)>,
    stored_below: u64,
    /// The largest seq read from the store at start (checked against the snapshot's counter).
    loaded_max: Option<u64>,
    prune_at: TimeIndex<K>,
    /// Versions held (counted since the start or a restore from a snapshot; versions read back from the
    /// store are not counted).
    version_count: u64,
    probe_count: u64,
    late_records: u64,
}

impl<K: Key, L, V: StateCodec, O> TemporalJoin<K, L, V, O> {
    /// `kind` is [`JoinKind::Inner`] or [`JoinKind::Left`]; `Right` and `Full` make no sense against a table
    /// (there is no "unmatched table row" event) and behave as `Inner` and `Left` respectively.
    pub fn new(kind: JoinKind, f: TemporalJoinFn<K, L, V, O>) -> Self {
        TemporalJoin {
            kind,
            f,
            watermark: i64::MIN,
            table_wm: i64::MIN,
            versions: KeyedState::new(),
            probes: VecDeque::new(),
            seq: 0,
            log: ChangeLog::default(),
            added: Vec::new(),
            stored_below: 0,
            loaded_max: None,
            prune_at: TimeIndex::new(),
            version_count: 0,
            probe_count: 0,
            late_records: 0,
        }
    }

    /// Whether a probe at `t` has every table version it can join already (see the module doc).
    fn complete(&self, t: i64) -> bool {
        t < self.watermark || t < self.table_wm || self.watermark == i64::MAX
    }

    fn insert_version(&mut self, ts: i64, key: K, row: Option<V>) {
        let tombstone = row.is_none();
        let per_key = self
            .versions
            .get_or_insert_with(key.clone(), Versions::default);
        if per_key.insert(ts, row) {
            self.version_count += 1;
        }
        // Listed for pruning once the key has two versions (both then), or a tombstone.
        match per_key.len() {
            1 if !tombstone => {}
            2 => {
                let all: SmallVec<[i64; 2]> = per_key.timestamps().collect();
                for t in all {
                    self.prune_at.push(t, key.to_stored());
                }
            }
            _ => self.prune_at.push(ts, key.to_stored()),
        }
    }

    /// Joins one probe against the versions held and emits the result (if any) at `t`.
    fn join(&mut self, t: i64, key: &K, l: L, out: &mut dyn Collector<O>) {
        let row = self
            .versions
            .get(key)
            .and_then(|v| v.as_of(t))
            .and_then(|(_, row)| row.as_ref());
        if row.is_some() || self.kind.keeps_left() {
            out.emit(t, (self.f)(key, l, row));
        }
    }

    /// Buffers a probe at its place: after every probe at or before its time (so ties keep arrival order).
    fn buffer(&mut self, t: i64, key: K, l: L) {
        let seq = self.seq;
        // Wrapping cannot collide in practice (2^64 probes), and must not panic on a restored counter.
        self.seq = self.seq.wrapping_add(1);
        if self.probes.back().is_none_or(|b| b.0 <= t) {
            self.probes.push_back((t, seq, key, l));
        } else {
            let at = self.probes.partition_point(|p| p.0 <= t);
            self.probes.insert(at, (t, seq, key, l));
        }
        if self.log.is_bound() {
            self.added.push((t, seq));
        }
        self.probe_count += 1;
    }

    fn emit_complete(&mut self, out: &mut dyn Collector<O>) {
        while self.probes.front().is_some_and(|p| self.complete(p.0)) {
            let Some((t, seq, key, l)) = self.probes.pop_front() else {
                break;
            };
            self.probe_count -= 1;
            if seq < self.stored_below {
                self.log.delete(&seq.to_be_bytes());
            }
            self.join(t, &key, l, out);
        }
    }

    /// Drops the versions no probe at or after the watermark can need (see the module doc).
    fn prune(&mut self) {
        let w = self.watermark;
        while let Some(ts) = self.prune_at.first_time() {
            if ts > w {
                break;
            }
            let TemporalJoin {
                prune_at,
                versions,
                version_count,
                ..
            } = self;
            prune_at.drain(ts, |key| {
                let Some(per_key) = versions.get_mut(&key) else {
                    return; // stale: the key was dropped already
                };
                let Some(&(floor, _)) = per_key.as_of(w) else {
                    return; // stale: the version was replaced and every version is newer
                };
                let dropped = per_key.drop_before(floor);
                let empty = per_key.is_empty();
                *version_count = version_count.saturating_sub(dropped);
                if empty {
                    versions.remove(&key);
                }
            });
        }
    }

    /// Lists again, from the versions, every key that may need pruning (after they were loaded or
    /// restored): those with more than one version or with a tombstone.
    fn rebuild_prune_at(&mut self) -> Result<()> {
        let index = &mut self.prune_at;
        index.clear();
        self.versions.for_each(|key, per_key| {
            if per_key.len() > 1 || per_key.0.iter().any(|v| v.1.is_none()) {
                for t in per_key.timestamps() {
                    index.push(t, key.clone());
                }
            }
        })
    }
}

/// Reads a probe the log stored under its seq: (time, seq, key, probe).
fn read_probe<K: Key, L: StateCodec>(k: &[u8], v: &[u8]) -> Result<(i64, u64, K, L)> {
    let seq: [u8; 8] = k.try_into().map_err(|_| {
        Error::CorruptState("temporal join: a probe key of the wrong length".into())
    })?;
    let mut r = StateReader::new(v);
    let t = r.i64()?;
    let key = K::decode(&mut r)?;
    let l = L::decode(&mut r)?;
    if !r.is_empty() {
        return Err(Error::CorruptState(
            "temporal join: trailing bytes in a stored probe".into(),
        ));
    }
    Ok((t, u64::from_be_bytes(seq), key, l))
}

impl<K: Key, L: StateCodec, V: StateCodec, O> TemporalJoin<K, L, V, O> {
    /// At a checkpoint of a bound join: writes the probes that arrived since the last one and still wait,
    /// and hands them with the deletions logged since to the backend.
    fn stage_probes(&mut self) {
        for (t, seq) in self.added.drain(..) {
            let at = self.probes.partition_point(|p| (p.0, p.1) < (t, seq));
            if let Some((_, _, key, l)) = self.probes.get(at).filter(|p| (p.0, p.1) == (t, seq)) {
                self.log.put(&seq.to_be_bytes(), |w| {
                    w.i64(t);
                    key.encode(w);
                    l.encode(w);
                });
            }
        }
        self.stored_below = self.seq;
        self.log.stage();
    }

    /// The waiting probes grouped by timestamp (the format of the tree this queue replaced).
    fn write_probes(&self, w: &mut StateWriter) {
        let groups = self
            .probes
            .iter()
            .zip(
                self.probes
                    .iter()
                    .skip(1)
                    .map(Some)
                    .chain(std::iter::once(None)),
            )
            .filter(|(p, next)| next.is_none_or(|n| n.0 != p.0))
            .count();
        w.u32(groups as u32);
        let mut i = 0;
        while i < self.probes.len() {
            let ts = self.probes[i].0;
            let n = self.probes.range(i..).take_while(|p| p.0 == ts).count();
            w.i64(ts);
            w.u32(n as u32);
            for (_, _, key, l) in self.probes.range(i..i + n) {
                key.encode(w);
                l.encode(w);
            }
            i += n;
        }
    }

    /// Reads what [`TemporalJoin::write_probes`] wrote, numbering the probes from `seq` on; returns how
    /// many it read.
    fn read_probes(&mut self, r: &mut StateReader<'_>) -> Result<u64> {
        let mut n = 0;
        // A timestamp takes its own 8 bytes and its probe count (4); timestamps come in increasing order.
        for _ in 0..r.count(12)? {
            let ts = r.i64()?;
            if self.probes.back().is_some_and(|b| b.0 >= ts) {
                return Err(Error::CorruptState(
                    "temporal join: probe timestamps out of order or twice".into(),
                ));
            }
            for _ in 0..r.count(1)? {
                let key = K::decode(r)?;
                let l = L::decode(r)?;
                self.probes.push_back((ts, self.seq, key, l));
                self.seq = self.seq.wrapping_add(1);
                self.probe_count += 1;
                n += 1;
            }
        }
        Ok(n)
    }
}

impl<K, L, V, O> Operator<Either<(K, L), (K, Option<V>)>> for TemporalJoin<K, L, V, O>
where
    K: Key,
    L: StateCodec + Clone + Send,
    V: StateCodec + Clone + Send,
{
    type Out = O;

    fn on_start(&mut self, task: &TaskInfo) {
        self.versions.bind(task);
        self.prune_at.bind(task);
        // A failed read of the store is recorded by the backend, which fails the pipeline.
        let _ = self.rebuild_prune_at();
        // A bound join's waiting probes are in the store: read back here, before the snapshot's counters.
        let (mut loaded, mut bad) = (Vec::new(), None);
        self.log
            .bind(task, "probes", |k, v| match read_probe::<K, L>(k, v) {
                Ok(p) => loaded.push(p),
                Err(e) => {
                    bad.get_or_insert(e);
                }
            });
        if let (Some(e), Some(h)) = (bad, &task.state) {
            h.fail(e);
        }
        if let Some(max) = loaded.iter().map(|p| p.1).max() {
            self.seq = self.seq.max(max.wrapping_add(1));
            self.loaded_max = Some(max);
        }
        // The store gives them in seq order; a stable sort by time makes it (time, seq).
        loaded.sort_by_key(|p| p.0);
        self.probe_count += loaded.len() as u64;
        self.probes.extend(loaded);
        self.stored_below = self.seq;
    }

    fn process(
        &mut self,
        timestamp: i64,
        item: Either<(K, L), (K, Option<V>)>,
        out: &mut dyn Collector<O>,
    ) {
        match item {
            Either::Left((key, l)) => {
                if self.complete(timestamp) {
                    if timestamp < self.watermark {
                        self.late_records += 1;
                    }
                    self.join(timestamp, &key, l, out);
                } else {
                    self.buffer(timestamp, key, l);
                }
            }
            Either::Right((key, row)) => {
                if timestamp < self.watermark {
                    self.late_records += 1;
                }
                self.insert_version(timestamp, key, row);
            }
        }
    }

    fn on_input_watermark(&mut self, port: usize, watermark: i64, out: &mut dyn Collector<O>) {
        // Port 1 is the table (see `two_input_node`): every version at or before it has arrived.
        if port == 1 && watermark > self.table_wm {
            self.table_wm = watermark;
            self.emit_complete(out);
        }
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector<O>) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        // Probes first: a probe behind the new watermark may need a version that pruning at it drops.
        self.emit_complete(out);
        self.prune();
    }

    fn on_checkpoint(&mut self, state: &mut Vec<u8>) {
        let mut w = StateWriter {
            buf: std::mem::take(state),
        };
        w.u8(STATE_VERSION);
        w.i64(self.watermark);
        w.u64(self.late_records);
        // The versions: bound keyed state stages its changes and writes nothing here.
        self.versions.write_to(&mut w);
        w.u64(self.seq);
        let mut probes = StateWriter::new();
        if self.log.is_bound() {
            self.stage_probes();
        } else {
            self.write_probes(&mut probes);
        }
        w.bytes(&probes.buf);
        *state = w.buf;
    }

    fn on_restore(&mut self, state: &[u8]) -> Result<()> {
        let mut r = StateReader::new(state);
        let version = r.u8()?;
        if !(1..=STATE_VERSION).contains(&version) {
            return Err(Error::CorruptState(format!(
                "temporal join state version {version}"
            )));
        }
        self.watermark = r.i64()?;
        self.late_records = r.u64()?;
        self.version_count = 0;
        if !self.log.is_bound() {
            self.probes.clear();
            self.probe_count = 0;
        }
        if version == 1 {
            // Every version in the snapshot: inserted again (into the store at the next checkpoint).
            // A key takes at least its version count (4).
            let mut seen = std::collections::HashSet::new();
            for _ in 0..r.count(4)? {
                let key = K::decode(&mut r)?;
                if !seen.insert(key.clone()) {
                    return Err(Error::CorruptState(
                        "temporal join: a key twice in the versions".into(),
                    ));
                }
                for (ts, row) in Versions::<V>::decode(&mut r)?.0.into_iter() {
                    self.insert_version(ts, key.clone(), row);
                }
            }
        } else {
            let versions = r.bytes()?;
            let inline = !versions.is_empty();
            if inline {
                self.versions.restore(versions)?;
            }
            if version < 4 {
                // The pruning index, snapshotted before it was derived: read past (rebuilt below).
                // A timestamp takes its own 8 bytes and its key count (4).
                for _ in 0..r.count(12)? {
                    r.i64()?;
                    for _ in 0..r.count(1)? {
                        K::decode(&mut r)?;
                    }
                }
            }
            // A bound join's versions came from the store, and the index with them at start.
            if inline {
                self.rebuild_prune_at()?;
            }
        }
        if version < 3 {
            // The probes inline, numbered in their order.
            self.seq = self
                .seq
                .max(self.loaded_max.map_or(0, |m| m.wrapping_add(1)));
            let n = self.read_probes(&mut r)?;
            if n > 0 && self.log.is_bound() {
                self.added.extend(self.probes.iter().map(|p| (p.0, p.1)));
            }
        } else {
            let seq = r.u64()?;
            if self.loaded_max.is_some_and(|m| m >= seq) {
                return Err(Error::CorruptState(
                    "temporal join: a stored probe from the future".into(),
                ));
            }
            self.seq = seq;
            let probes = r.bytes()?;
            if !probes.is_empty() {
                let mut pr = StateReader::new(probes);
                let n = self.read_probes(&mut pr)?;
                if !pr.is_empty() {
                    return Err(Error::CorruptState(
                        "trailing bytes in temporal join probes".into(),
                    ));
                }
                if n > 0 && self.log.is_bound() {
                    self.added.extend(self.probes.iter().map(|p| (p.0, p.1)));
                }
            }
        }
        self.stored_below = self.seq;
        if !r.is_empty() {
            return Err(Error::CorruptState(
                "trailing bytes in temporal join state".into(),
            ));
        }
        Ok(())
    }

    fn report(&self, m: &mut OperatorMetrics) {
        m.late_records = self.late_records;
        m.state_entries = self.version_count + self.probe_count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::OutRecord;

    #[derive(Default)]
    struct Out(Vec<(i64, String)>);
    impl Collector<String> for Out {
        fn emit(&mut self, timestamp: i64, item: String) {
            self.0.push((timestamp, item));
        }
        fn late(&mut self, _record: OutRecord) {}
    }

    type Op = TemporalJoin<String, String, String, String>;
    type In = Either<(String, String), (String, Option<String>)>;

    fn op(kind: JoinKind) -> Op {
        TemporalJoin::new(
            kind,
            Arc::new(|k: &String, l: String, v: Option<&String>| {
                format!("{k}:{l}={}", v.map_or("-", String::as_str))
            }),
        )
    }
    fn probe(k: &str, l: &str) -> In {
        Either::Left((k.into(), l.into()))
    }
    fn row(k: &str, v: Option<&str>) -> In {
        Either::Right((k.into(), v.map(str::to_string)))
    }

    #[test]
    fn probes_join_the_version_as_of_their_time() {
        let mut j = op(JoinKind::Left);
        let mut out = Out::default();
        j.process(10, row("a", Some("v10")), &mut out);
        j.process(20, row("a", Some("v20")), &mut out);
        j.process(30, row("a", None), &mut out);
        j.process(25, probe("a", "p25"), &mut out);
        j.process(15, probe("a", "p15"), &mut out);
        j.process(5, probe("a", "p5"), &mut out);
        j.process(20, probe("a", "p20"), &mut out);
        j.process(35, probe("a", "p35"), &mut out);
        j.process(12, probe("b", "q12"), &mut out);
        assert!(out.0.is_empty(), "nothing is complete before the watermark");
        j.on_watermark(i64::MAX, &mut out);
        assert_eq!(
            out.0,
            vec![
                (5, "a:p5=-".to_string()),
                (12, "b:q12=-".to_string()),
                (15, "a:p15=v10".to_string()),
                (20, "a:p20=v20".to_string()),
                (25, "a:p25=v20".to_string()),
                (35, "a:p35=-".to_string()),
            ]
        );
    }

    #[test]
    fn inner_drops_probes_without_a_row() {
        let mut j = op(JoinKind::Inner);
        let mut out = Out::default();
        j.process(10, row("a", Some("v")), &mut out);
        j.process(5, probe("a", "early"), &mut out);
        j.process(11, probe("a", "hit"), &mut out);
        j.process(11, probe("b", "miss"), &mut out);
        j.on_watermark(100, &mut out);
        assert_eq!(out.0, vec![(11, "a:hit=v".to_string())]);
    }

    #[test]
    fn a_probe_waits_until_the_watermark_passes_it() {
        let mut j = op(JoinKind::Left);
        let mut out = Out::default();
        j.process(10, probe("a", "p"), &mut out);
        j.on_watermark(10, &mut out);
        assert!(out.0.is_empty(), "a version at 10 may still come");
        j.process(10, row("a", Some("v")), &mut out);
        j.on_watermark(11, &mut out);
        assert_eq!(out.0, vec![(10, "a:p=v".to_string())]);
    }

    proptest::proptest! {
        /// The inline version list behaves as the ordered map it replaced.
        #[test]
        fn versions_behave_as_an_ordered_map(
            ops in proptest::collection::vec((0i64..20, proptest::option::of(0u8..4), 0u8..3), 0..60),
        ) {
            let mut v = Versions::<u8>::default();
            let mut m = std::collections::BTreeMap::<i64, Option<u8>>::new();
            for (ts, row, what) in ops {
                match what {
                    0 | 1 => {
                        proptest::prop_assert_eq!(v.insert(ts, row), m.insert(ts, row).is_none());
                    }
                    _ => {
                        // Pruning at a floor: versions before it go, and a tombstone at it.
                        let mut expect = m.split_off(&ts);
                        let mut n = m.len() as u64;
                        if matches!(expect.get(&ts), Some(None)) {
                            expect.remove(&ts);
                            n += 1;
                        }
                        m = expect;
                        proptest::prop_assert_eq!(v.drop_before(ts), n);
                    }
                }
                for t in -1..21 {
                    let got = v.as_of(t).map(|(ts, row)| (*ts, *row));
                    let want = m.range(..=t).next_back().map(|(ts, row)| (*ts, *row));
                    proptest::prop_assert_eq!(got, want);
                }
                proptest::prop_assert_eq!(v.len(), m.len());
            }
        }
    }

    #[test]
    fn the_table_watermark_completes_probes_before_the_combined_one() {
        let mut j = op(JoinKind::Left);
        let mut out = Out::default();
        j.process(10, row("a", Some("v10")), &mut out);
        j.process(15, probe("a", "p15"), &mut out);
        j.process(25, probe("a", "p25"), &mut out);
        assert!(out.0.is_empty());
        // The table has nothing more before 20: p15 is final (v10), p25 may still see a version at 20..=25.
        j.on_input_watermark(1, 20, &mut out);
        assert_eq!(out.0, vec![(15, "a:p15=v10".to_string())]);
        // The probes' own input's watermark means nothing for completeness.
        j.on_input_watermark(0, 100, &mut out);
        assert_eq!(out.0.len(), 1);
        j.process(22, row("a", Some("v22")), &mut out);
        // A probe that arrives behind the table's watermark is joined at once, and is not late.
        j.process(18, probe("a", "p18"), &mut out);
        assert_eq!(out.0[1], (18, "a:p18=v10".to_string()));
        j.on_input_watermark(1, 30, &mut out);
        assert_eq!(out.0[2], (25, "a:p25=v22".to_string()));
        let mut m = OperatorMetrics::default();
        j.report(&mut m);
        assert_eq!(m.late_records, 0);
        // The combined watermark still completes what the table's did not (an idle table source).
        j.process(40, probe("a", "p40"), &mut out);
        j.on_watermark(41, &mut out);
        assert_eq!(out.0[3], (40, "a:p40=v22".to_string()));
    }

    #[test]
    fn equal_times_keep_arrival_order_and_late_versions_replace() {
        let mut j = op(JoinKind::Left);
        let mut out = Out::default();
        j.process(10, row("a", Some("first")), &mut out);
        j.process(10, row("a", Some("second")), &mut out);
        j.process(10, probe("b", "1"), &mut out);
        j.process(10, probe("a", "2"), &mut out);
        j.on_watermark(11, &mut out);
        assert_eq!(
            out.0,
            vec![(10, "b:1=-".to_string()), (10, "a:2=second".to_string())]
        );
    }

    #[test]
    fn late_probes_join_at_once_against_what_is_held() {
        let mut j = op(JoinKind::Left);
        let mut out = Out::default();
        j.process(10, row("a", Some("v10")), &mut out);
        j.process(20, row("a", Some("v20")), &mut out);
        j.on_watermark(50, &mut out);
        // v10 is pruned: v20 is the newest at or before the watermark.
        let mut m = OperatorMetrics::default();
        j.report(&mut m);
        assert_eq!(m.state_entries, 1);
        j.process(30, probe("a", "late"), &mut out);
        j.process(15, probe("a", "older"), &mut out);
        assert_eq!(
            out.0,
            vec![
                (30, "a:late=v20".to_string()),
                (15, "a:older=-".to_string())
            ]
        );
        j.report(&mut m);
        assert_eq!(m.late_records, 2);
    }

    #[test]
    fn pruning_keeps_what_future_probes_need() {
        let mut j = op(JoinKind::Left);
        let mut out = Out::default();
        for (ts, v) in [
            (10, Some("a")),
            (20, Some("b")),
            (30, None),
            (40, Some("d")),
        ] {
            j.process(ts, row("k", v), &mut out);
        }
        j.process(10, row("gone", Some("x")), &mut out);
        j.process(20, row("gone", None), &mut out);
        let entries = |j: &Op| {
            let mut m = OperatorMetrics::default();
            j.report(&mut m);
            m.state_entries
        };
        assert_eq!(entries(&j), 6);
        j.on_watermark(25, &mut out);
        // k: 20 (newest at or before 25), 30, 40; "gone" ends in a tombstone and is dropped.
        assert_eq!(entries(&j), 3);
        j.on_watermark(35, &mut out);
        // k: the tombstone at 30 is the newest at or before 35: dropped with everything older.
        assert_eq!(entries(&j), 1);
        j.process(35, probe("k", "p35"), &mut out);
        j.process(45, probe("k", "p45"), &mut out);
        j.process(35, probe("gone", "g"), &mut out);
        j.on_watermark(i64::MAX, &mut out);
        assert_eq!(
            out.0,
            vec![
                (35, "k:p35=-".to_string()),
                (35, "gone:g=-".to_string()),
                (45, "k:p45=d".to_string()),
            ]
        );
        assert_eq!(entries(&j), 1);
    }

    #[test]
    fn a_table_of_single_versions_lists_nothing_for_pruning() {
        let mut j = op(JoinKind::Left);
        let mut out = Out::default();
        for i in 0..1000 {
            j.process(i, row(&format!("k{i}"), Some("v")), &mut out);
        }
        assert!(j.prune_at.is_empty());
        // A second version, or a tombstone, lists the key.
        j.process(2000, row("k1", Some("w")), &mut out);
        j.process(2000, row("k2", None), &mut out);
        assert_eq!(j.prune_at.len(), 4);
        j.on_watermark(3000, &mut out);
        assert!(j.prune_at.is_empty());
        j.process(3500, probe("k1", "p"), &mut out);
        j.process(3500, probe("k2", "q"), &mut out);
        j.process(3500, probe("k3", "r"), &mut out);
        j.on_watermark(i64::MAX, &mut out);
        assert_eq!(
            out.0,
            vec![
                (3500, "k1:p=w".to_string()),
                (3500, "k2:q=-".to_string()),
                (3500, "k3:r=v".to_string())
            ]
        );
    }

    #[test]
    fn snapshot_restores_probes_and_versions() {
        let mut j = op(JoinKind::Left);
        let mut out = Out::default();
        j.process(10, row("a", Some("v10")), &mut out);
        j.process(20, row("a", None), &mut out);
        j.process(15, probe("a", "p15"), &mut out);
        j.process(25, probe("a", "p25"), &mut out);
        j.on_watermark(5, &mut out);
        let mut state = Vec::new();
        j.on_checkpoint(&mut state);
        let mut k = op(JoinKind::Left);
        k.on_restore(&state).unwrap();
        let (mut a, mut b) = (Out::default(), Out::default());
        j.on_watermark(i64::MAX, &mut a);
        k.on_watermark(i64::MAX, &mut b);
        assert_eq!(a.0, b.0);
        assert_eq!(a.0.len(), 2);
        for cut in 0..state.len() {
            assert!(op(JoinKind::Left).on_restore(&state[..cut]).is_err());
        }
    }

    #[test]
    fn a_version_2_snapshot_with_inline_probes_still_restores() {
        let mut w = StateWriter::new();
        w.u8(2);
        w.i64(i64::MIN);
        w.u64(0);
        w.bytes(&[]); // versions: none
        w.u32(0); // prune_at: none
        w.u32(1); // one probe time
        w.i64(10);
        w.u32(2);
        for p in ["p1", "p2"] {
            "a".to_string().encode(&mut w);
            p.to_string().encode(&mut w);
        }
        let mut j = op(JoinKind::Left);
        j.on_restore(&w.buf).unwrap();
        let mut out = Out::default();
        j.process(20, probe("a", "p3"), &mut out);
        j.on_watermark(i64::MAX, &mut out);
        let got: Vec<&str> = out.0.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(got, ["a:p1=-", "a:p2=-", "a:p3=-"]);
    }

    /// A store-backed join, checkpointed as the runtime does (seal, apply, mark applied).
    mod bound {
        use super::*;
        use crate::keyed_state::{BackendKind, StateHandle};
        use crate::test_support::{backend, commit, task};

        fn started(h: &StateHandle) -> Op {
            let mut j = op(JoinKind::Left);
            j.on_start(&task(h, 2, "tj"));
            j
        }

        fn checkpoint(h: &StateHandle, j: &mut Op, id: u64) -> (Vec<u8>, usize) {
            let mut state = Vec::new();
            j.on_checkpoint(&mut state);
            (state, commit(h, id))
        }

        fn restored(h: &StateHandle, state: &[u8]) -> Op {
            let mut j = started(h);
            j.on_restore(state).unwrap();
            assert!(h.take_error().is_none());
            j
        }

        fn finish(j: &mut Op) -> Vec<(i64, String)> {
            let mut c = Out::default();
            j.on_watermark(i64::MAX, &mut c);
            c.0
        }

        /// A version at 5 and 1,000 probes waiting for the table's watermark.
        fn loaded(h: &StateHandle) -> Op {
            let mut j = started(h);
            let mut out = Out::default();
            j.process(5, row("a", Some("r5")), &mut out);
            for i in 0..1000 {
                j.process(10 + i, probe("a", &format!("probe number {i}")), &mut out);
            }
            assert!(out.0.is_empty());
            j
        }

        #[test]
        fn waiting_probes_checkpoint_incrementally_and_restore_from_the_store() {
            let dir = tempfile::tempdir().unwrap();
            let h = backend(dir.path(), BackendKind::Memory, 1 << 30);
            let mut j = loaded(&h);
            let (_, load) = checkpoint(&h, &mut j, 1);
            j.process(2_000, probe("a", "one more"), &mut Out::default());
            let (state, small) = checkpoint(&h, &mut j, 2);
            assert!(
                small * 50 < load,
                "{small} bytes for one probe, {load} for 1,000"
            );
            assert!(
                state.len() < 64,
                "no probes in the snapshot: {}",
                state.len()
            );
            let mut k = restored(&h, &state);
            let (a, b) = (finish(&mut j), finish(&mut k));
            assert_eq!(a, b);
            assert_eq!(a.len(), 1001);
            assert_eq!(a[0], (10, "a:probe number 0=r5".to_string()));
        }

        #[test]
        fn joined_probes_are_deleted_from_the_store() {
            let dir = tempfile::tempdir().unwrap();
            let h = backend(dir.path(), BackendKind::Memory, 1 << 30);
            let mut j = loaded(&h);
            checkpoint(&h, &mut j, 1);
            let mut out = Out::default();
            j.on_input_watermark(1, 500, &mut out);
            assert_eq!(out.0.len(), 490);
            checkpoint(&h, &mut j, 2);
            let (state, _) = checkpoint(&h, &mut j, 3);
            let mut k = restored(&h, &state);
            assert_eq!(finish(&mut k).len(), 510);
        }

        #[test]
        fn probes_of_a_whole_snapshot_move_into_the_store() {
            let mut j = op(JoinKind::Left);
            let mut out = Out::default();
            j.process(5, row("a", Some("r5")), &mut out);
            j.process(10, probe("a", "p10"), &mut out);
            j.process(10, probe("b", "p10b"), &mut out);
            let mut whole = Vec::new();
            j.on_checkpoint(&mut whole);
            let dir = tempfile::tempdir().unwrap();
            let h = backend(dir.path(), BackendKind::Memory, 1 << 30);
            let mut k = restored(&h, &whole);
            let (state, bytes) = checkpoint(&h, &mut k, 1);
            assert!(bytes > 0);
            let mut again = restored(&h, &state);
            assert_eq!(
                finish(&mut again),
                vec![(10, "a:p10=r5".to_string()), (10, "b:p10b=-".to_string())]
            );
        }

        #[test]
        fn the_pruning_index_is_rebuilt_from_the_stored_versions() {
            let dir = tempfile::tempdir().unwrap();
            let h = backend(dir.path(), BackendKind::Memory, 1 << 30);
            let mut j = started(&h);
            let mut out = Out::default();
            j.process(5, row("a", Some("old")), &mut out);
            j.process(50, row("a", Some("new")), &mut out);
            j.process(7, row("b", Some("only")), &mut out);
            let (state, _) = checkpoint(&h, &mut j, 1);
            let mut k = restored(&h, &state);
            assert_eq!(k.prune_at.len(), 2, "a's two versions; b has one");
            k.on_watermark(60, &mut out);
            assert!(k.prune_at.is_empty());
            k.process(70, probe("a", "p"), &mut out);
            k.on_watermark(i64::MAX, &mut out);
            assert_eq!(out.0, vec![(70, "a:p=new".to_string())]);
        }

        #[test]
        fn a_stored_probe_newer_than_the_snapshot_is_corrupt() {
            let dir = tempfile::tempdir().unwrap();
            let h = backend(dir.path(), BackendKind::Memory, 1 << 30);
            let mut j = started(&h);
            let (old, _) = checkpoint(&h, &mut j, 1);
            j.process(10, probe("a", "p"), &mut Out::default());
            checkpoint(&h, &mut j, 2);
            assert!(started(&h).on_restore(&old).is_err());
        }
    }
}
