//! A pipeline checkpoint: what one commit makes durable, in one record of the pipeline's checkpoint log.
//!
//! A checkpoint holds, together: the next offset and largest event time of every input partition, every task's
//! operator state (by operator id), producer id and next sequence per output partition, and the output batches
//! produced since the previous checkpoint, already built with their task's producer id and sequence numbers. The outputs are appended to their topics
//! only after the checkpoint is durable, so after a crash the last checkpoint says exactly which outputs belong
//! to the state it restores: those found in their partition (by producer id and base sequence) are not written
//! again, the others are. That is why a plain consumer, not only a read_committed one, sees every output once.
//!
//! Invariant: an output batch appears in exactly one checkpoint; a task's `sequences` hold the next base
//! sequence for every output partition, after the batches of this checkpoint.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::operator::TaskState;
use crate::state::{StateReader, StateWriter};

const FORMAT: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputPosition {
    pub partition: i32,
    pub next_offset: i64,
    pub max_ts: i64,
}

/// One task's part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskCheckpoint {
    /// The idempotent producer id the task writes its outputs with.
    pub producer_id: i64,
    /// (topic, partition, next base sequence) for every output partition.
    pub sequences: Vec<(String, i32, i32)>,
    pub state: TaskState,
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
    pub inputs: Vec<InputPosition>,
    pub tasks: Vec<TaskCheckpoint>,
    pub outputs: Vec<OutputBatch>,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = StateWriter::new();
        w.u8(FORMAT);
        w.str(&self.pipeline);
        w.u64(self.id);
        w.u32(self.inputs.len() as u32);
        for i in &self.inputs {
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
            let mut ids: Vec<&String> = t.state.keys().collect();
            ids.sort();
            w.u32(ids.len() as u32);
            for id in ids {
                w.str(id);
                w.bytes(&t.state[id]);
            }
        }
        w.u32(self.outputs.len() as u32);
        for o in &self.outputs {
            w.str(&o.topic);
            w.i32(o.partition);
            w.i64(o.producer_id);
            w.i64(o.search_from);
            w.i32(o.base_sequence);
            w.bytes(&o.batch);
        }
        w.buf
    }

    pub fn decode(data: &[u8]) -> Result<Checkpoint> {
        let mut r = StateReader::new(data);
        let format = r.u8()?;
        if format != FORMAT {
            return Err(Error::CorruptState(format!("checkpoint format {format}")));
        }
        let pipeline = r.str()?.to_string();
        let id = r.u64()?;
        let mut inputs = Vec::new();
        for _ in 0..r.count(20)? {
            inputs.push(InputPosition {
                partition: r.i32()?,
                next_offset: r.i64()?,
                max_ts: r.i64()?,
            });
        }
        let mut tasks = Vec::new();
        for _ in 0..r.count(16)? {
            let producer_id = r.i64()?;
            let mut sequences = Vec::new();
            for _ in 0..r.count(12)? {
                sequences.push((r.str()?.to_string(), r.i32()?, r.i32()?));
            }
            let mut state = TaskState::new();
            for _ in 0..r.count(8)? {
                let id = r.str()?.to_string();
                state.insert(id, r.bytes()?.to_vec());
            }
            tasks.push(TaskCheckpoint {
                producer_id,
                sequences,
                state,
            });
        }
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
        if !r.is_empty() {
            return Err(Error::CorruptState("trailing bytes".into()));
        }
        Ok(Checkpoint {
            pipeline,
            id,
            inputs,
            tasks,
            outputs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(id in any::<u64>(), pid in any::<i64>(), offs in proptest::collection::vec((any::<i32>(), any::<i64>(), any::<i64>()), 0..5),
                      states in proptest::collection::vec(proptest::collection::hash_map("[a-z.0-9]{1,8}", proptest::collection::vec(any::<u8>(), 0..16), 0..3), 0..4),
                      outs in proptest::collection::vec(("[a-z]{1,5}", any::<i32>(), any::<i64>(), any::<i32>(), proptest::collection::vec(any::<u8>(), 0..32)), 0..4)) {
            let c = Checkpoint {
                pipeline: "p".into(),
                id,
                inputs: offs.into_iter().map(|(partition, next_offset, max_ts)| InputPosition { partition, next_offset, max_ts }).collect(),
                tasks: states.into_iter().map(|state| TaskCheckpoint { producer_id: pid, sequences: vec![("t".into(), 1, 2)], state }).collect(),
                outputs: outs.into_iter().map(|(topic, partition, search_from, base_sequence, b)| OutputBatch { topic, partition, producer_id: pid, search_from, base_sequence, batch: b.into() }).collect(),
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
}
