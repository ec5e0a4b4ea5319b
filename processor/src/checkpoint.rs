//! A pipeline checkpoint: what one commit makes durable, in one record of the pipeline's checkpoint log.
//!
//! A checkpoint holds, together: the next offset and largest event time of every input partition of every
//! source, every operator's state by key group (so it can be restored at another parallelism), each task's
//! producer id and next sequence per output partition, and the output batches produced since the previous
//! checkpoint, already built with their task's producer id and sequence numbers. The outputs are appended to
//! their topics only after the checkpoint is durable, so after a crash the last checkpoint says exactly which
//! outputs belong to the state it restores: those found in their partition (by producer id and base
//! sequence) are not written again, the others are. That is why a plain consumer, not only a read_committed
//! one, sees every output once.
//!
//! Invariant: an output batch appears in exactly one checkpoint; a task's `sequences` hold the next base
//! sequence for every output partition, after the batches of this checkpoint.

use bytes::Bytes;

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};

use crate::graph::node::{GroupedState, TASK_GROUP};
use crate::keygroup::KeyGroups;
use crate::operator::TaskState;
use crate::state::{StateReader, StateWriter};

/// Written since keyed state went to a store (format 3 adds its change sets); formats 1 (one source, state
/// per task) and 2 (no change sets) are still read.
const FORMAT: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputPosition {
    /// The source topic (empty in a format-1 checkpoint: the pipeline's only source).
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub max_ts: i64,
}

/// One task's producer: the idempotent producer id it writes its outputs with, and (topic, partition, next
/// base sequence) for every output partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskCheckpoint {
    pub producer_id: i64,
    pub sequences: Vec<(String, i32, i32)>,
}

/// One operator's state for one group: a key group (>= 0), or `-1 - task` for a step that runs once per
/// task (its state belongs to the task that wrote it, and goes to task `task % parallelism` after a
/// rescale).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    pub group: i32,
    pub operator: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputBatch {
    pub topic: String,
    pub partition: i32,
    pub producer_id: i64,
    /// The partition's log end before the batch was appended: a search for it after a crash starts here.
    pub search_from: i64,
    pub base_sequence: i32,
    pub batch: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub pipeline: String,
    pub id: u64,
    /// The key groups state is split into (0 in a format-1 checkpoint).
    pub max_parallelism: u32,
    pub parallelism: u32,
    pub inputs: Vec<InputPosition>,
    pub tasks: Vec<TaskCheckpoint>,
    pub state: Vec<StateEntry>,
    pub outputs: Vec<OutputBatch>,
    /// Keyed state changed since the previous checkpoint, as change sets for the pipeline's state store
    /// (see [`crate::keyed_state`]): applied to the store once this checkpoint is durable, and again at a
    /// restart if the store does not hold them yet.
    pub changes: Vec<Bytes>,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = StateWriter::new();
        w.u8(FORMAT);
        w.str(&self.pipeline);
        w.u64(self.id);
        w.u32(self.max_parallelism);
        w.u32(self.parallelism);
        w.u32(self.inputs.len() as u32);
        for i in &self.inputs {
            w.str(&i.topic);
            w.i32(i.partition);
            w.i64(i.next_offset);
            w.i64(i.max_ts);
        }
        w.u32(self.tasks.len() as u32);
        for t in &self.tasks {
            w.i64(t.producer_id);
            w.u32(t.sequences.len() as u32);
            for (topic, p, seq) in &t.sequences {
                w.str(topic);
                w.i32(*p);
                w.i32(*seq);
            }
        }
        w.u32(self.state.len() as u32);
        for e in &self.state {
            w.i32(e.group);
            w.str(&e.operator);
            w.bytes(&e.bytes);
        }
        encode_outputs(&mut w, &self.outputs);
        w.u32(self.changes.len() as u32);
        for c in &self.changes {
            w.bytes(c);
        }
        w.buf
    }

    pub fn decode(data: &[u8]) -> Result<Checkpoint> {
        let mut r = StateReader::new(data);
        let format = r.u8()?;
        let c = match format {
            1 => decode_v1(&mut r)?,
            2 => decode_v2(&mut r)?,
            FORMAT => {
                let mut c = decode_v2(&mut r)?;
                for _ in 0..r.count(4)? {
                    c.changes.push(Bytes::copy_from_slice(r.bytes()?));
                }
                c
            }
            _ => return Err(Error::CorruptState(format!("checkpoint format {format}"))),
        };
        if !r.is_empty() {
            return Err(Error::CorruptState("trailing bytes".into()));
        }
        Ok(c)
    }

    /// Bytes of operator state held.
    pub fn state_bytes(&self) -> usize {
        self.state.iter().map(|e| e.bytes.len()).sum()
    }
}

/// Turns one task's snapshot into checkpoint entries: key groups as they are, per-task state as `-1 - task`.
pub fn state_entries(task: usize, state: GroupedState, into: &mut Vec<StateEntry>) {
    let mut groups: Vec<(i32, TaskState)> = state.into_iter().collect();
    groups.sort_by_key(|(g, _)| *g);
    for (group, ops) in groups {
        let group = if group == TASK_GROUP {
            -1 - task as i32
        } else {
            group
        };
        let mut ops: Vec<(String, Vec<u8>)> = ops.into_iter().collect();
        ops.sort();
        for (operator, bytes) in ops {
            into.push(StateEntry {
                group,
                operator,
                bytes,
            });
        }
    }
}

/// The state each of `groups.parallelism` tasks restores: every key group goes to the task owning it now,
/// per-task state of old task `i` to task `i % parallelism` (so none is lost when a pipeline shrinks; a
/// per-task operator then restores several snapshots in turn).
pub fn distribute(entries: &[StateEntry], groups: &KeyGroups) -> Vec<HashMap<i32, Vec<TaskState>>> {
    let p = groups.parallelism.max(1);
    let mut keyed: Vec<HashMap<i32, TaskState>> = (0..p).map(|_| HashMap::new()).collect();
    let mut per_task: Vec<BTreeMap<i32, TaskState>> = (0..p).map(|_| BTreeMap::new()).collect();
    for e in entries {
        if e.group >= 0 {
            let kg = u16::try_from(e.group).unwrap_or(u16::MAX);
            let task = groups.task_of(kg).min(p - 1);
            keyed[task]
                .entry(e.group)
                .or_default()
                .insert(e.operator.clone(), e.bytes.clone());
        } else {
            let old = (-1 - i64::from(e.group)) as usize;
            per_task[old % p]
                .entry(e.group)
                .or_default()
                .insert(e.operator.clone(), e.bytes.clone());
        }
    }
    keyed
        .into_iter()
        .zip(per_task)
        .map(|(k, t)| {
            let mut m: HashMap<i32, Vec<TaskState>> =
                k.into_iter().map(|(g, s)| (g, vec![s])).collect();
            if !t.is_empty() {
                m.insert(TASK_GROUP, t.into_values().rev().collect());
            }
            m
        })
        .collect()
}

fn encode_outputs(w: &mut StateWriter, outputs: &[OutputBatch]) {
    w.u32(outputs.len() as u32);
    for o in outputs {
        w.str(&o.topic);
        w.i32(o.partition);
        w.i64(o.producer_id);
        w.i64(o.search_from);
        w.i32(o.base_sequence);
        w.bytes(&o.batch);
    }
}

fn decode_outputs(r: &mut StateReader<'_>) -> Result<Vec<OutputBatch>> {
    let mut outputs = Vec::new();
    for _ in 0..r.count(24)? {
        outputs.push(OutputBatch {
            topic: r.str()?.to_string(),
            partition: r.i32()?,
            producer_id: r.i64()?,
            search_from: r.i64()?,
            base_sequence: r.i32()?,
            batch: Bytes::copy_from_slice(r.bytes()?),
        });
    }
    Ok(outputs)
}

fn decode_tasks(r: &mut StateReader<'_>) -> Result<TaskCheckpoint> {
    let producer_id = r.i64()?;
    let mut sequences = Vec::new();
    for _ in 0..r.count(12)? {
        sequences.push((r.str()?.to_string(), r.i32()?, r.i32()?));
    }
    Ok(TaskCheckpoint {
        producer_id,
        sequences,
    })
}

fn decode_v2(r: &mut StateReader<'_>) -> Result<Checkpoint> {
    let pipeline = r.str()?.to_string();
    let id = r.u64()?;
    let max_parallelism = r.u32()?;
    let parallelism = r.u32()?;
    let mut inputs = Vec::new();
    for _ in 0..r.count(24)? {
        inputs.push(InputPosition {
            topic: r.str()?.to_string(),
            partition: r.i32()?,
            next_offset: r.i64()?,
            max_ts: r.i64()?,
        });
    }
    let mut tasks = Vec::new();
    for _ in 0..r.count(12)? {
        tasks.push(decode_tasks(r)?);
    }
    let mut state = Vec::new();
    for _ in 0..r.count(12)? {
        state.push(StateEntry {
            group: r.i32()?,
            operator: r.str()?.to_string(),
            bytes: r.bytes()?.to_vec(),
        });
    }
    let outputs = decode_outputs(r)?;
    Ok(Checkpoint {
        pipeline,
        id,
        max_parallelism,
        parallelism,
        inputs,
        tasks,
        state,
        outputs,
        changes: Vec::new(),
    })
}

/// Format 1: one source (inputs by partition only), state per task (task = source partition). Its state
/// is kept as per-task entries; the runtime refuses to restore keyed state from it, since its keys were
/// placed by partition count, not by key group.
fn decode_v1(r: &mut StateReader<'_>) -> Result<Checkpoint> {
    let pipeline = r.str()?.to_string();
    let id = r.u64()?;
    let mut inputs = Vec::new();
    for _ in 0..r.count(20)? {
        inputs.push(InputPosition {
            topic: String::new(),
            partition: r.i32()?,
            next_offset: r.i64()?,
            max_ts: r.i64()?,
        });
    }
    let mut tasks = Vec::new();
    let mut state = Vec::new();
    for t in 0..r.count(16)? {
        tasks.push(decode_tasks(r)?);
        for _ in 0..r.count(8)? {
            state.push(StateEntry {
                group: -1 - t as i32,
                operator: r.str()?.to_string(),
                bytes: r.bytes()?.to_vec(),
            });
        }
    }
    let outputs = decode_outputs(r)?;
    Ok(Checkpoint {
        pipeline,
        id,
        max_parallelism: 0,
        parallelism: tasks.len() as u32,
        inputs,
        tasks,
        state,
        outputs,
        changes: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(id in any::<u64>(), pid in any::<i64>(), mp in any::<u32>(), offs in proptest::collection::vec(("[a-z]{0,5}", any::<i32>(), any::<i64>(), any::<i64>()), 0..5),
                      states in proptest::collection::vec((any::<i32>(), "[a-z.0-9]{1,8}", proptest::collection::vec(any::<u8>(), 0..16)), 0..6),
                      tasks in 0usize..4,
                      outs in proptest::collection::vec(("[a-z]{1,5}", any::<i32>(), any::<i64>(), any::<i32>(), proptest::collection::vec(any::<u8>(), 0..32)), 0..4),
                      changes in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..24), 0..3)) {
            let c = Checkpoint {
                pipeline: "p".into(),
                id,
                max_parallelism: mp,
                parallelism: tasks as u32,
                inputs: offs.into_iter().map(|(topic, partition, next_offset, max_ts)| InputPosition { topic, partition, next_offset, max_ts }).collect(),
                tasks: (0..tasks).map(|_| TaskCheckpoint { producer_id: pid, sequences: vec![("t".into(), 1, 2)] }).collect(),
                state: states.into_iter().map(|(group, operator, bytes)| StateEntry { group, operator, bytes }).collect(),
                outputs: outs.into_iter().map(|(topic, partition, search_from, base_sequence, b)| OutputBatch { topic, partition, producer_id: pid, search_from, base_sequence, batch: b.into() }).collect(),
                changes: changes.into_iter().map(Bytes::from).collect(),
            };
            let bytes = c.encode();
            prop_assert_eq!(Checkpoint::decode(&bytes).unwrap(), c);
            for cut in 0..bytes.len() {
                prop_assert!(Checkpoint::decode(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Checkpoint::decode(&data);
        }
    }

    #[test]
    fn reads_format_1() {
        let mut w = StateWriter::new();
        w.u8(1);
        w.str("p");
        w.u64(7);
        w.u32(1);
        w.i32(0);
        w.i64(42);
        w.i64(1000);
        w.u32(1);
        w.i64(9);
        w.u32(1);
        w.str("out");
        w.i32(0);
        w.i32(5);
        w.u32(1);
        w.str("2.window");
        w.bytes(b"xyz");
        w.u32(0);
        let c = Checkpoint::decode(&w.buf).unwrap();
        assert_eq!(c.id, 7);
        assert_eq!(c.max_parallelism, 0);
        assert_eq!(c.inputs[0].next_offset, 42);
        assert_eq!(c.tasks[0].producer_id, 9);
        assert_eq!(c.state[0].group, -1);
        assert_eq!(c.state[0].bytes, b"xyz");
    }
}
